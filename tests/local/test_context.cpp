// Context and tags (notifications/context.hpp): what events capture, scopes that restore, threads
// that do not share, listeners that cannot change an event already started, and the testing
// helpers that match on them.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "notifications/context.hpp"
#include "notifications/notifications.hpp"
#include "notifications/testing.hpp"

namespace n = notifications;
using nlohmann::json;

namespace {

// Every test leaves the thread as it found it: no context, no tags.
class Context : public ::testing::Test {
 protected:
  void SetUp() override {
    n::clear_context();
    ASSERT_EQ(n::tags(), json::object());
  }
  void TearDown() override { n::clear_context(); }

  n::Notifier notifier;
  std::vector<n::Event> seen;
  n::Subscription record(const std::string& pattern = ">") {
    return notifier.subscribe(n::Pattern(pattern), [this](const n::Event& event) { seen.push_back(event); });
  }
};

TEST_F(Context, EventsCarryNeitherWhenNoneIsSet) {
  auto subscription = record();
  notifier.instrument("a", json{{"x", 1}});
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].context(), json::object());
  EXPECT_EQ(seen[0].tags(), json::object());
}

TEST_F(Context, EventsCaptureTheThreadsContextAndTagsAndThePayloadIsUntouched) {
  auto subscription = record();
  n::set_context({{"request_id", "r-1"}});
  n::set_context({{"tenant", "acme"}});
  n::tagged("checkout", [&] { notifier.instrument("order.placed", json{{"id", 7}}, [] {}); });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].context(), json({{"request_id", "r-1"}, {"tenant", "acme"}}));
  EXPECT_EQ(seen[0].tags(), json({{"checkout", true}}));
  EXPECT_EQ(seen[0].payload(), json({{"id", 7}}));
}

TEST_F(Context, SetContextReplacesAKeyAndClearContextEmptiesIt) {
  n::set_context({{"request_id", "r-1"}, {"tenant", "acme"}});
  n::set_context({{"request_id", "r-2"}});
  EXPECT_EQ(n::context(), json({{"request_id", "r-2"}, {"tenant", "acme"}}));
  n::clear_context();
  EXPECT_EQ(n::context(), json::object());
}

TEST_F(Context, ANonObjectContextIsRefusedNamingWhatItGot) {
  try {
    n::set_context(json::array({1, 2}));
    FAIL() << "set_context took an array";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("expected a JSON object, got array"), std::string::npos) << e.what();
  }
  EXPECT_THROW(n::ContextScope scope(json("request")), std::invalid_argument);
  EXPECT_EQ(n::context(), json::object());
}

TEST_F(Context, AScopeRestoresTheContextItFoundWhateverWasSetInside) {
  n::set_context({{"app", "shop"}});
  {
    n::ContextScope request({{"request_id", "r-1"}});
    EXPECT_EQ(n::context(), json({{"app", "shop"}, {"request_id", "r-1"}}));
    n::set_context({{"user", 5}});
    n::clear_context();
    n::set_context({{"other", true}});
  }
  EXPECT_EQ(n::context(), json({{"app", "shop"}}));
  {
    n::ContextScope job(json::object(), /*replace=*/true);  // a new job starts from nothing
    EXPECT_EQ(n::context(), json::object());
  }
  EXPECT_EQ(n::context(), json({{"app", "shop"}}));
}

TEST_F(Context, TagsNestInnerOnesWinAndEachScopePopsItsOwn) {
  auto subscription = record();
  const int result = n::tagged({{"section", "admin"}, {"level", 1}}, [&] {
    n::tagged(json::array({"graphql", json{{"level", 2}}}), [&] { notifier.instrument("inner"); });
    notifier.instrument("outer");
    return 42;
  });
  EXPECT_EQ(result, 42);
  notifier.instrument("after");
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].tags(), json({{"section", "admin"}, {"level", 2}, {"graphql", true}}));
  EXPECT_EQ(seen[1].tags(), json({{"section", "admin"}, {"level", 1}}));
  EXPECT_EQ(seen[2].tags(), json::object());
}

TEST_F(Context, ATagScopeIsPoppedWhenTheBlockThrows) {
  EXPECT_THROW(n::tagged("failing", [] { throw std::runtime_error("boom"); }), std::runtime_error);
  EXPECT_EQ(n::tags(), json::object());
}

TEST_F(Context, BadTagsAreRefusedNamingWhatWasWrong) {
  const auto message = [](const json& tags) {
    try {
      n::TagScope scope(tags);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message(json(3)).find("got number"), std::string::npos) << message(json(3));
  EXPECT_NE(message(json("")).find("empty string"), std::string::npos);
  EXPECT_NE(message(json::array({json::array({"x"})})).find("array inside the array"), std::string::npos);
  EXPECT_EQ(n::tags(), json::object());
}

TEST_F(Context, AnEventKeepsWhatItCapturedAtItsStartWhateverListenersDoLater) {
  std::vector<json> at_start;
  auto start_finish = notifier.subscribe(
      n::Pattern("work"),
      n::StartFinishListener{[&](const n::Event& event) {
                               at_start.push_back(event.context());
                               n::set_context({{"changed_by", "start listener"}});
                             },
                             [&](const n::Event& event) { at_start.push_back(event.context()); }});
  n::ContextScope scope({{"request_id", "r-9"}});
  notifier.instrument("work", json::object(), [] { n::set_context({{"changed_by", "block"}}); });
  ASSERT_EQ(at_start.size(), 2u);
  EXPECT_EQ(at_start[0], json({{"request_id", "r-9"}}));
  EXPECT_EQ(at_start[1], json({{"request_id", "r-9"}})) << "finish saw a context set after the event started";
  EXPECT_EQ(n::context(), json({{"request_id", "r-9"}, {"changed_by", "block"}}));
}

TEST_F(Context, CopiesOfAnEventKeepItsContextAfterTheScopeEnded) {
  auto subscription = record();
  {
    n::ContextScope scope({{"request_id", "r-3"}});
    n::TagScope tags("checkout");
    notifier.instrument("a");
  }
  ASSERT_EQ(seen.size(), 1u);
  n::Event copy = seen[0];
  n::Event moved = std::move(seen[0]);
  EXPECT_EQ(copy.context(), json({{"request_id", "r-3"}}));
  EXPECT_EQ(moved.tags(), json({{"checkout", true}}));
}

TEST_F(Context, ThreadsDoNotShareContextOrTags) {
  std::atomic<int> mismatches{0};
  std::atomic<int> events{0};
  auto subscription = notifier.subscribe(n::Pattern("t.>"), [&](const n::Event& event) {
    const std::string expected = std::string(event.name()).substr(2);
    if (event.context() != json({{"thread", expected}}) || event.tags() != json({{expected, true}})) ++mismatches;
    ++events;
  });
  constexpr int kThreads = 4;
  constexpr int kEvents = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string name = "w" + std::to_string(t);
      n::ContextScope scope({{"thread", name}});
      n::TagScope tags(name);
      for (int i = 0; i < kEvents; ++i) notifier.instrument("t." + name);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(events.load(), kThreads * kEvents);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(n::context(), json::object()) << "another thread's context leaked into this one";
}

TEST_F(Context, ListenersOfAPublishedEventInstrumentWithItsContextThenTheThreadsComesBack) {
  n::Event received = [] {
    n::ContextScope scope({{"request_id", "from-elsewhere"}});
    n::TagScope tags("checkout");
    return n::Event("order.placed", json{{"id", 1}});
  }();
  n::set_context({{"mine", true}});
  auto chained = notifier.subscribe(n::Pattern("order.placed"),
                                    [&](const n::Event&) { notifier.instrument("payment.charged"); });
  auto subscription = record("payment.charged");
  notifier.publish(received);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].context(), json({{"request_id", "from-elsewhere"}}));
  EXPECT_EQ(seen[0].tags(), json({{"checkout", true}}));
  EXPECT_EQ(n::context(), json({{"mine", true}}));
  EXPECT_EQ(n::tags(), json::object());
}

TEST_F(Context, TheTestingHelperMatchesTagsAndContextPartially) {
  namespace t = n::testing;
  const auto place = [&] {
    n::ContextScope scope({{"request_id", "r-1"}, {"tenant", "acme"}});
    n::tagged({{"section", "admin"}, {"graphql", true}},
              [&] { notifier.instrument("order.placed", json{{"id", 42}, {"total", 10}}); });
  };
  EXPECT_TRUE(t::notified_matching(notifier, "order.placed",
                                   {.payload = {{"id", 42}}, .tags = {{"section", "admin"}}, .context = {{"tenant", "acme"}}},
                                   place));
  const auto wrong_tag = t::notified_matching(notifier, "order.placed", {.tags = {{"section", "public"}}}, place);
  EXPECT_FALSE(wrong_tag);
  EXPECT_NE(std::string(wrong_tag.message()).find("with tags containing {\"section\":\"public\"}"), std::string::npos)
      << wrong_tag.message();
  EXPECT_NE(std::string(wrong_tag.message()).find("tags {\"graphql\":true,\"section\":\"admin\"}"), std::string::npos)
      << wrong_tag.message();
  EXPECT_FALSE(t::notified_matching(notifier, "order.placed", {.context = {{"request_id", "r-2"}}}, place));
}

}  // namespace

namespace {

bool ends_with(std::string_view text, std::string_view end) {
  return text.size() >= end.size() && text.substr(text.size() - end.size()) == end;
}

TEST_F(Context, EventsKnowTheInstrumentCallThatMadeThemAndOnlyThose) {
  auto subscription = record();
  auto on_default = n::subscribe(n::Pattern("located.default"), [this](const n::Event& event) { seen.push_back(event); });
  const n::Handle handle = notifier.handle("located.handle");
  const unsigned first = __LINE__ + 1;
  notifier.instrument("located.block", json::object(), [] {});
  notifier.instrument("located.instant");
  handle.instrument([] {});
  n::instrument("located.default", json{{"x", 1}});
  notifier.instrument("located.lazy", n::lazy([] { return json{{"built", true}}; }));
  notifier.publish(n::Event("published", nullptr));
  ASSERT_EQ(seen.size(), 6u);
  for (unsigned i = 0; i < 5; ++i) {
    const n::SourceLocation& where = seen[i].source_location();
    EXPECT_TRUE(where.known()) << seen[i].name();
    EXPECT_EQ(where.line, first + i) << seen[i].name();
    EXPECT_TRUE(ends_with(where.file, "test_context.cpp")) << where.file;
    EXPECT_NE(std::string_view(where.function).find("TestBody"), std::string_view::npos) << where.function;
  }
  const n::Event copy = seen[0];
  EXPECT_EQ(copy.source_location().line, first) << "a copy keeps the location";
  EXPECT_FALSE(seen[5].source_location().known()) << "a published event was not instrumented here";
}

}  // namespace
