#include <gtest/gtest.h>

#include "notifications/errors.hpp"
#include "notifications/pattern.hpp"

using notifications::InvalidPattern;
using notifications::Pattern;

namespace {

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const InvalidPattern& e) {
    return e.what();
  }
  return "no error";
}

TEST(Pattern, ExactMatchesOnlyTheName) {
  const Pattern p("order.placed");
  EXPECT_EQ(p.kind(), Pattern::Kind::exact);
  EXPECT_TRUE(p.matches("order.placed"));
  EXPECT_FALSE(p.matches("order.placed.twice"));
  EXPECT_FALSE(p.matches("order"));
}

TEST(Pattern, StarMatchesExactlyOneToken) {
  const Pattern p("sql.*");
  EXPECT_EQ(p.kind(), Pattern::Kind::wildcard);
  EXPECT_TRUE(p.matches("sql.query"));
  EXPECT_FALSE(p.matches("sql"));
  EXPECT_FALSE(p.matches("sql.query.slow"));
  EXPECT_FALSE(p.matches("sql."));
  EXPECT_FALSE(p.matches("mysql.query"));
  EXPECT_TRUE(Pattern("*.query").matches("sql.query"));
  EXPECT_TRUE(Pattern("a.*.c").matches("a.b.c"));
  EXPECT_FALSE(Pattern("a.*.c").matches("a.b.d"));
}

TEST(Pattern, GreaterThanMatchesOneOrMoreTrailingTokens) {
  const Pattern p("order.>");
  EXPECT_TRUE(p.matches("order.placed"));
  EXPECT_TRUE(p.matches("order.placed.eu"));
  EXPECT_FALSE(p.matches("order"));
  EXPECT_FALSE(p.matches("orders.placed"));
  EXPECT_TRUE(Pattern(">").matches("anything.at.all"));
}

TEST(Pattern, RegexSearchesAnywhereInTheName) {
  const Pattern p = Pattern::regex("query$");
  EXPECT_TRUE(p.matches("sql.query"));
  EXPECT_FALSE(p.matches("sql.query.slow"));
  EXPECT_TRUE(Pattern::regex("active_record").matches("sql.active_record"));
}

TEST(Pattern, AllMatchesEverything) {
  EXPECT_TRUE(Pattern::all().matches("x"));
  EXPECT_EQ(Pattern::all().kind(), Pattern::Kind::all);
}

TEST(Pattern, ExactFactoryKeepsWildcardCharactersLiteral) {
  const Pattern p = Pattern::exact("weird.*");
  EXPECT_TRUE(p.matches("weird.*"));
  EXPECT_FALSE(p.matches("weird.x"));
}

TEST(Pattern, ErrorsNameThePatternAndTheProblem) {
  EXPECT_NE(error_of([] { Pattern(""); }).find("empty"), std::string::npos);
  const std::string partial = error_of([] { Pattern("sql.*x"); });
  EXPECT_NE(partial.find("\"sql.*x\""), std::string::npos) << partial;
  EXPECT_NE(partial.find("whole token"), std::string::npos) << partial;
  const std::string middle = error_of([] { Pattern("a.>.b"); });
  EXPECT_NE(middle.find("last token"), std::string::npos) << middle;
  const std::string empty_token = error_of([] { Pattern("a..*"); });
  EXPECT_NE(empty_token.find("token 2 is empty"), std::string::npos) << empty_token;
  const std::string regex = error_of([] { Pattern::regex("(unclosed"); });
  EXPECT_NE(regex.find("\"(unclosed\""), std::string::npos) << regex;
  EXPECT_NE(regex.find("[notifications.invalid_pattern]"), std::string::npos) << regex;
}

}  // namespace
