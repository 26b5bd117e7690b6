#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "notifications/subject.hpp"

using notifications::InvalidSubject;
using notifications::name_from_subject;
using notifications::subject_for;
using notifications::subject_pattern_problem;
using notifications::subject_problem;
using notifications::validate_subject;
using notifications::validate_subject_pattern;

namespace {

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const InvalidSubject& e) {
    EXPECT_EQ(e.id(), "invalid_subject");
    return e.what();
  }
  return "no error";
}

TEST(Subject, ValidSubjects) {
  for (const char* subject :
       {"a", "orders", "orders.new", "notifications.sql.active_record", "A-b_c.0-9", "x.y.z.w.v"}) {
    EXPECT_EQ(subject_problem(subject), "") << subject;
    EXPECT_NO_THROW(validate_subject(subject)) << subject;
  }
}

TEST(Subject, LengthLimits) {
  EXPECT_EQ(subject_problem(""), "empty (a subject is 1 to 255 bytes)");
  EXPECT_EQ(subject_problem(std::string(255, 'a')), "");
  EXPECT_EQ(subject_problem(std::string(256, 'a')), "256 bytes long (at most 255)");
}

TEST(Subject, EmptyTokens) {
  EXPECT_EQ(subject_problem(".a"),
            "token 1 is empty (tokens are separated by single dots, with none at either end)");
  EXPECT_EQ(subject_problem("a..b"),
            "token 2 is empty (tokens are separated by single dots, with none at either end)");
  EXPECT_EQ(subject_problem("a."),
            "token 2 is empty (tokens are separated by single dots, with none at either end)");
  EXPECT_EQ(subject_problem("."),
            "token 1 is empty (tokens are separated by single dots, with none at either end)");
}

TEST(Subject, BadCharactersNameTokenAndCharacter) {
  EXPECT_EQ(subject_problem("orders.new order"),
            "token 2 \"new order\" has ' ' (allowed: letters, digits, '_', '-')");
  EXPECT_EQ(subject_problem("a/b"), "token 1 \"a/b\" has '/' (allowed: letters, digits, '_', '-')");
  EXPECT_EQ(subject_problem("a.b\tc"),
            "token 2 \"b\\x09c\" has byte 0x09 (allowed: letters, digits, '_', '-')");
  EXPECT_EQ(subject_problem("caf\xc3\xa9"),
            "token 1 \"caf\\xc3\\xa9\" has byte 0xc3 (allowed: letters, digits, '_', '-')");
}

TEST(Subject, PublishedSubjectHasNoWildcards) {
  EXPECT_EQ(subject_problem("orders.*"),
            "token 2 is the wildcard \"*\" (a published subject has none)");
  EXPECT_EQ(subject_problem(">"), "token 1 is the wildcard \">\" (a published subject has none)");
  EXPECT_EQ(subject_problem("orders.new*"),
            "token 2 \"new*\" has '*' (a published subject has no wildcards)");
}

TEST(Subject, ValidateThrowsNamingWhatAndText) {
  EXPECT_EQ(error_of([] { validate_subject("orders.new order"); }),
            "[notifications.invalid_subject] subject \"orders.new order\": token 2 \"new order\" "
            "has ' ' (allowed: letters, digits, '_', '-')");
  EXPECT_EQ(error_of([] { validate_subject("a..b", "prefix"); }),
            "[notifications.invalid_subject] prefix \"a..b\": token 2 is empty (tokens are "
            "separated by single dots, with none at either end)");
}

TEST(Subject, LongTextIsQuotedTruncated) {
  const std::string subject = std::string(300, 'a');
  const std::string error = error_of([&] { validate_subject(subject); });
  EXPECT_EQ(error, "[notifications.invalid_subject] subject \"" + std::string(64, 'a') +
                       "...\" (300 bytes): 300 bytes long (at most 255)");
  const std::string long_token = std::string(100, 'b') + " ";
  EXPECT_EQ(subject_problem(long_token),
            "token 1 \"" + std::string(64, 'b') +
                "...\" (101 bytes) has ' ' (allowed: letters, digits, '_', '-')");
}

TEST(Subject, QuotesAndBackslashesAreEscapedInMessages) {
  EXPECT_EQ(error_of([] { validate_subject("a\"b"); }),
            "[notifications.invalid_subject] subject \"a\\\"b\": token 1 \"a\\\"b\" has '\"' "
            "(allowed: letters, digits, '_', '-')");
}

TEST(SubjectPattern, ValidPatterns) {
  for (const char* pattern :
       {"a", "a.b", "*", ">", "a.*", "*.b", "a.*.c", "a.>", "*.*.>", "notifications.orders.>"}) {
    EXPECT_EQ(subject_pattern_problem(pattern), "") << pattern;
    EXPECT_NO_THROW(validate_subject_pattern(pattern)) << pattern;
  }
}

TEST(SubjectPattern, InvalidPatterns) {
  EXPECT_EQ(subject_pattern_problem(""), "empty (a subject is 1 to 255 bytes)");
  EXPECT_EQ(subject_pattern_problem("a.>.b"), "token 2 is \">\", which may only be the last token");
  EXPECT_EQ(subject_pattern_problem("a.b*"),
            "token 2 \"b*\" has '*' ('*' and '>' must be a whole token)");
  EXPECT_EQ(subject_pattern_problem("a.>>"),
            "token 2 \">>\" has '>' ('*' and '>' must be a whole token)");
  EXPECT_EQ(subject_pattern_problem("a..>"),
            "token 2 is empty (tokens are separated by single dots, with none at either end)");
  EXPECT_EQ(subject_pattern_problem("a.b c"),
            "token 2 \"b c\" has ' ' (allowed: letters, digits, '_', '-')");
  EXPECT_EQ(subject_pattern_problem(std::string(254, 'a') + ".>"), "256 bytes long (at most 255)");
}

TEST(SubjectPattern, ValidateNamesWhat) {
  EXPECT_EQ(error_of([] { validate_subject_pattern("a.>.b", "subscribe pattern"); }),
            "[notifications.invalid_subject] subscribe pattern \"a.>.b\": token 2 is \">\", "
            "which may only be the last token");
  EXPECT_EQ(error_of([] { validate_subject_pattern("*x"); }),
            "[notifications.invalid_subject] subject pattern \"*x\": token 1 \"*x\" has '*' ('*' "
            "and '>' must be a whole token)");
}

TEST(SubjectFor, JoinsPrefixAndName) {
  EXPECT_EQ(subject_for("notifications", "order.placed"), "notifications.order.placed");
  EXPECT_EQ(subject_for("acme.prod", "sql"), "acme.prod.sql");
}

TEST(SubjectFor, BadPrefixIsNamedPrefix) {
  EXPECT_EQ(error_of([] { subject_for("acme.", "sql"); }),
            "[notifications.invalid_subject] prefix \"acme.\": token 2 is empty (tokens are "
            "separated by single dots, with none at either end)");
  EXPECT_EQ(error_of([] { subject_for("acme.*", "sql"); }),
            "[notifications.invalid_subject] prefix \"acme.*\": token 2 is the wildcard \"*\" (a "
            "published subject has none)");
  EXPECT_EQ(error_of([] { subject_for("", "sql"); }),
            "[notifications.invalid_subject] prefix \"\": empty (a subject is 1 to 255 bytes)");
}

TEST(SubjectFor, BadNameNamesSubjectAndEvent) {
  EXPECT_EQ(error_of([] { subject_for("orders", "new order"); }),
            "[notifications.invalid_subject] subject \"orders.new order\" for event \"new "
            "order\": token 2 \"new order\" has ' ' (allowed: letters, digits, '_', '-')");
  EXPECT_EQ(error_of([] { subject_for("orders", ""); }),
            "[notifications.invalid_subject] subject \"orders.\" for event \"\": token 2 is empty "
            "(tokens are separated by single dots, with none at either end)");
  EXPECT_EQ(error_of([] { subject_for("a.b", "x.*"); }),
            "[notifications.invalid_subject] subject \"a.b.x.*\" for event \"x.*\": token 4 is the "
            "wildcard \"*\" (a published subject has none)");
  const std::string long_name(250, 'n');
  EXPECT_NE(
      error_of([&] { subject_for("orders", long_name); }).find(": 257 bytes long (at most 255)"),
      std::string::npos);
}

TEST(NameFromSubject, StripsThePrefix) {
  EXPECT_EQ(name_from_subject("notifications", "notifications.order.placed"), "order.placed");
  EXPECT_EQ(name_from_subject("acme.prod", "acme.prod.sql"), "sql");
  EXPECT_EQ(name_from_subject("a", "a.b"), "b");
}

TEST(NameFromSubject, NotUnderThePrefix) {
  EXPECT_EQ(name_from_subject("notifications", "notifications"), std::nullopt);
  EXPECT_EQ(name_from_subject("notifications", "notifications."), std::nullopt);
  EXPECT_EQ(name_from_subject("notifications", "notificationsx.a"), std::nullopt);
  EXPECT_EQ(name_from_subject("notifications", "other.a"), std::nullopt);
  EXPECT_EQ(name_from_subject("acme.prod", "acme.dev.sql"), std::nullopt);
  EXPECT_EQ(name_from_subject("a.b", "a"), std::nullopt);
}

TEST(NameFromSubject, InvertsSubjectFor) {
  for (const char* name : {"a", "order.placed", "sql.active_record", "x-y.z_1"}) {
    EXPECT_EQ(name_from_subject("pre.fix", subject_for("pre.fix", name)), name);
  }
}

}  // namespace
