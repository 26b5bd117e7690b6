#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "notifications/testing.hpp"

namespace n = notifications;
namespace t = notifications::testing;
using nlohmann::json;

namespace {

TEST(TestingHelpers, CaptureReturnsCopiesOfMatchingEvents) {
  n::Notifier notifier;
  const auto events = t::capture(notifier, "order.*", [&] {
    notifier.instrument("order.placed", {{"id", 1}});
    notifier.instrument("user.created");
    notifier.instrument("order.shipped", {{"id", 1}});
  });
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].name(), "order.placed");
  EXPECT_EQ(events[1].payload()["id"], 1);
  EXPECT_FALSE(notifier.listening("order.placed"));
}

TEST(TestingHelpers, NotifiedMatchesNameAndPayloadSubset) {
  n::Notifier notifier;
  auto place = [&] { notifier.instrument("order.placed", {{"id", 42}, {"total", 10}, {"meta", {{"a", 1}, {"b", 2}}}}); };
  EXPECT_TRUE(t::notified(notifier, "order.placed", place));
  EXPECT_TRUE(t::notified(notifier, "order.placed", {{"id", 42}}, place));
  EXPECT_TRUE(t::notified(notifier, "order.*", {{"meta", {{"b", 2}}}}, place));
  const auto wrong = t::notified(notifier, "order.placed", {{"id", 43}}, place);
  EXPECT_FALSE(wrong);
  EXPECT_NE(std::string(wrong.message()).find("\"order.placed\" {"), std::string::npos) << wrong.message();
  EXPECT_FALSE(t::notified(notifier, "order.shipped", place));
}

TEST(TestingHelpers, CountsAndAbsence) {
  n::Notifier notifier;
  auto twice = [&] {
    notifier.instrument("a.b");
    notifier.instrument("a.c");
  };
  EXPECT_TRUE(t::notified_times(notifier, "a.*", 2, twice));
  EXPECT_FALSE(t::notified_times(notifier, "a.*", 3, twice));
  EXPECT_TRUE(t::not_notified(notifier, "z.*", twice));
  const auto present = t::not_notified(notifier, "a.b", twice);
  EXPECT_FALSE(present);
  EXPECT_NE(std::string(present.message()).find("\"a.b\""), std::string::npos);
}

TEST(TestingHelpers, UnsubscribeByNameDoesNotBlindCaptureOfEveryEvent) {
  n::Notifier notifier;
  const auto events = t::capture(notifier, n::Pattern::all(), [&] {
    notifier.unsubscribe("order.placed");
    notifier.instrument("order.placed");
  });
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name(), "order.placed");
  // notified() captures every event and filters afterwards: it must not be blinded either.
  EXPECT_TRUE(t::notified(notifier, "order.placed", [&] {
    notifier.unsubscribe("order.placed");
    notifier.instrument("order.placed");
  }));
}

TEST(TestingHelpers, EveryHelperHasADefaultNotifierForm) {
  auto place = [] { n::instrument("helpers.default.placed", {{"id", 42}}); };
  EXPECT_TRUE(t::notified("helpers.default.placed", place));
  EXPECT_TRUE(t::notified("helpers.default.placed", {{"id", 42}}, place));
  EXPECT_FALSE(t::notified("helpers.default.placed", {{"id", 43}}, place));
  EXPECT_TRUE(t::notified_times("helpers.default.*", 1, place));
  EXPECT_FALSE(t::notified_times("helpers.default.*", 2, place));
  EXPECT_TRUE(t::not_notified("helpers.default.failed", place));
  EXPECT_FALSE(t::not_notified("helpers.default.placed", place));
  // They watch the default notifier only.
  n::Notifier other;
  EXPECT_TRUE(t::not_notified("helpers.default.placed",
                              [&] { other.instrument("helpers.default.placed"); }));
  EXPECT_FALSE(n::listening("helpers.default.placed"));
}

TEST(TestingHelpers, JsonContains) {
  EXPECT_TRUE(t::json_contains({{"a", 1}, {"b", 2}}, {{"a", 1}}));
  EXPECT_FALSE(t::json_contains({{"a", 1}}, {{"a", 2}}));
  EXPECT_FALSE(t::json_contains({{"a", 1}}, {{"c", 1}}));
  EXPECT_TRUE(t::json_contains({{"a", {{"x", 1}, {"y", 2}}}}, {{"a", {{"y", 2}}}}));
  EXPECT_FALSE(t::json_contains(json::array({1}), {{"a", 1}}));
  EXPECT_TRUE(t::json_contains(json(5), nullptr));
}

TEST(TestingHelpers, FailureIsReportedThroughGoogleTest) {
  EXPECT_NONFATAL_FAILURE(
      {
        n::Notifier local;
        EXPECT_TRUE(t::notified(local, "never", [] {}));
      },
      "no event matching \"never\"");
}

}  // namespace
