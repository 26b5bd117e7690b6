// Subscriber failures: every subscriber still runs, errors are routed and counted, strict mode
// rethrows without masking the block's exception or skipping the block.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "notifications/notifications.hpp"

namespace n = notifications;
using nlohmann::json;

namespace {

struct Failures {
  std::vector<std::string> lines;
  n::ErrorHandler handler() {
    return [this](const n::SubscriberFailure& f) {
      lines.push_back(std::string(f.phase) + " " + std::string(f.event_name) + " " +
                      std::string(f.pattern) + " " + f.message);
    };
  }
};

TEST(NotifierErrors, EverySubscriberRunsAndErrorsGoToTheHandler) {
  Failures failures;
  n::Notifier notifier({.error_handler = failures.handler()});
  int after = 0;
  auto a = notifier.subscribe("e", [](const n::Event&) { throw std::runtime_error("first"); });
  auto b = notifier.subscribe("e", [&](const n::Event&) { ++after; });
  auto c = notifier.subscribe("e", [](const n::Event&) { throw 5; });
  EXPECT_EQ(notifier.instrument("e", [] { return 1; }), 1);
  EXPECT_EQ(after, 1);
  ASSERT_EQ(failures.lines.size(), 2u);
  EXPECT_EQ(failures.lines[0], "finish e e std::runtime_error: first");
  EXPECT_EQ(failures.lines[1], "finish e e int");
  EXPECT_EQ(notifier.stats().subscriber_errors, 2u);
}

TEST(NotifierErrors, AFailingStartListenerDoesNotSkipTheBlockOrItsFinish) {
  Failures failures;
  n::Notifier notifier({.error_handler = failures.handler()});
  std::vector<std::string> log;
  auto sub = notifier.subscribe(
      "s", n::StartFinishListener{[](const n::Event&) { throw std::runtime_error("start broke"); },
                                  [&](const n::Event&) { log.push_back("finish"); }});
  notifier.instrument("s", [&] { log.push_back("block"); });
  EXPECT_EQ(log, std::vector<std::string>({"block", "finish"}));
  ASSERT_EQ(failures.lines.size(), 1u);
  EXPECT_EQ(failures.lines[0], "start s s std::runtime_error: start broke");
}

TEST(NotifierErrors, StrictModeRethrowsOneErrorAsIs) {
  Failures failures;
  n::Notifier notifier({.error_handler = failures.handler(), .strict = true});
  bool block_ran = false;
  auto a = notifier.subscribe("e", [](const n::Event&) { throw std::out_of_range("only"); });
  EXPECT_THROW(notifier.instrument("e", [&] { block_ran = true; }), std::out_of_range);
  EXPECT_TRUE(block_ran);
  EXPECT_TRUE(failures.lines.empty());
  EXPECT_EQ(notifier.stats().subscriber_errors, 1u);
}

TEST(NotifierErrors, StrictModeAggregatesSeveralErrors) {
  n::Notifier notifier({.strict = true});
  int ran = 0;
  auto a = notifier.subscribe("e", [](const n::Event&) { throw std::runtime_error("one"); });
  auto b = notifier.subscribe("e", [&](const n::Event&) { ++ran; });
  auto c = notifier.subscribe("e", [](const n::Event&) { throw std::logic_error("two"); });
  try {
    notifier.instrument("e");
    FAIL() << "expected SubscriberErrors";
  } catch (const n::SubscriberErrors& e) {
    ASSERT_EQ(e.errors().size(), 2u);
    EXPECT_THROW(std::rethrow_exception(e.errors()[0]), std::runtime_error);
    EXPECT_THROW(std::rethrow_exception(e.errors()[1]), std::logic_error);
    const std::string what = e.what();
    EXPECT_NE(what.find("event \"e\": 2 subscribers failed"), std::string::npos) << what;
    EXPECT_NE(what.find("one"), std::string::npos);
    EXPECT_NE(what.find("two"), std::string::npos);
  }
  EXPECT_EQ(ran, 1);
}

// As Rails: a listener's SubscriberErrors (from an event it instrumented) joins the others
// as its members, never as one nested aggregate.
TEST(NotifierErrors, StrictModeFlattensNestedSubscriberErrors) {
  n::Notifier notifier({.strict = true});
  auto inner_a = notifier.subscribe("inner", [](const n::Event&) { throw std::runtime_error("inner one"); });
  auto inner_b = notifier.subscribe("inner", [](const n::Event&) { throw std::logic_error("inner two"); });
  auto relay = notifier.subscribe("outer", [&](const n::Event&) { notifier.instrument("inner"); });
  auto outer = notifier.subscribe("outer", [](const n::Event&) { throw std::out_of_range("outer"); });
  try {
    notifier.instrument("outer", [] {});
    FAIL() << "expected SubscriberErrors";
  } catch (const n::SubscriberErrors& e) {
    ASSERT_EQ(e.errors().size(), 3u) << e.what();
    EXPECT_THROW(std::rethrow_exception(e.errors()[0]), std::runtime_error);
    EXPECT_THROW(std::rethrow_exception(e.errors()[1]), std::logic_error);
    EXPECT_THROW(std::rethrow_exception(e.errors()[2]), std::out_of_range);
    const std::string what = e.what();
    EXPECT_NE(what.find("event \"outer\": 3 subscribers failed"), std::string::npos) << what;
  }
}

// A nested aggregate that is the only error: the event's aggregate holds its members.
TEST(NotifierErrors, StrictModeKeepsTheMembersOfALoneNestedAggregate) {
  n::Notifier notifier({.strict = true});
  auto inner_a = notifier.subscribe("inner", [](const n::Event&) { throw std::runtime_error("one"); });
  auto inner_b = notifier.subscribe("inner", [](const n::Event&) { throw std::logic_error("two"); });
  auto relay = notifier.subscribe(
      "outer", n::StartFinishListener{[&](const n::Event&) { notifier.instrument("inner"); }, {}});
  try {
    notifier.instrument("outer", [] {});
    FAIL() << "expected SubscriberErrors";
  } catch (const n::SubscriberErrors& e) {
    ASSERT_EQ(e.errors().size(), 2u) << e.what();
    EXPECT_THROW(std::rethrow_exception(e.errors()[0]), std::runtime_error);
    EXPECT_THROW(std::rethrow_exception(e.errors()[1]), std::logic_error);
  }
}

TEST(NotifierErrors, StrictModeNeverMasksTheBlocksException) {
  Failures failures;
  n::Notifier notifier({.error_handler = failures.handler(), .strict = true});
  auto a = notifier.subscribe("e", [](const n::Event&) { throw std::runtime_error("subscriber"); });
  try {
    notifier.instrument("e", [] { throw std::invalid_argument("block"); });
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "block");
  }
  ASSERT_EQ(failures.lines.size(), 1u);
  EXPECT_NE(failures.lines[0].find("subscriber"), std::string::npos);
  EXPECT_NE(failures.lines[0].find("while the block's own exception propagated"), std::string::npos);
}

TEST(NotifierErrors, StrictModeCanBeSwitchedAtRunTime) {
  n::Notifier notifier;
  notifier.set_error_handler([](const n::SubscriberFailure&) {});
  auto a = notifier.subscribe("e", [](const n::Event&) { throw std::runtime_error("x"); });
  EXPECT_NO_THROW(notifier.instrument("e"));
  notifier.set_strict(true);
  EXPECT_THROW(notifier.instrument("e"), std::runtime_error);
  notifier.set_strict(false);
  EXPECT_NO_THROW(notifier.instrument("e"));
  EXPECT_EQ(notifier.stats().subscriber_errors, 3u);
}

TEST(NotifierErrors, AThrowingErrorHandlerIsCountedAndContained) {
  n::Notifier notifier({.error_handler = [](const n::SubscriberFailure&) { throw std::runtime_error("handler"); }});
  int second = 0;
  auto a = notifier.subscribe("e", [](const n::Event&) { throw std::runtime_error("x"); });
  auto b = notifier.subscribe("e", [&](const n::Event&) { ++second; });
  EXPECT_NO_THROW(notifier.instrument("e"));
  EXPECT_EQ(second, 1);
  EXPECT_EQ(notifier.stats().error_handler_failures, 1u);
}

TEST(NotifierErrors, DefaultHandlerLogsAndCounts) {
  n::Notifier notifier;  // default handler: spdlog, once per subscription and name
  auto a = notifier.subscribe("e.*", [](const n::Event&) { throw std::runtime_error("logged"); });
  for (int i = 0; i < 100; ++i) notifier.instrument("e.x");
  notifier.instrument("e.y");
  EXPECT_EQ(notifier.stats().subscriber_errors, 101u);
}

}  // namespace
