// The Notifier's single-threaded contract: what instrument returns, what events carry, and how
// each subscription form selects events.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "notifications/notifications.hpp"
#include "local/thread_cache.hpp"

namespace n = notifications;
using nlohmann::json;

namespace {

struct Recorder {
  std::vector<n::Event> events;
  n::EventListener listener() {
    return [this](const n::Event& e) { events.push_back(e); };
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : events) out.emplace_back(e.name());
    return out;
  }
};

TEST(NotifierBasic, InstrumentReturnsTheBlockValueWithOrWithoutListeners) {
  n::Notifier notifier;
  EXPECT_EQ(notifier.instrument("calc", [] { return 42; }), 42);
  Recorder recorder;
  auto sub = notifier.subscribe("calc", recorder.listener());
  EXPECT_EQ(notifier.instrument("calc", {{"x", 1}}, [] { return std::string("done"); }), "done");
  ASSERT_EQ(recorder.events.size(), 1u);
  EXPECT_EQ(recorder.events[0].payload(), json({{"x", 1}}));
}

TEST(NotifierBasic, VoidBlocksAndMoveOnlyResults) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe("work", recorder.listener());
  int ran = 0;
  notifier.instrument("work", [&] { ++ran; });
  auto owned = notifier.instrument("work", [] { return std::make_unique<int>(7); });
  EXPECT_EQ(ran, 1);
  ASSERT_TRUE(owned);
  EXPECT_EQ(*owned, 7);
  EXPECT_EQ(recorder.events.size(), 2u);
}

TEST(NotifierBasic, BlockAddsToThePayloadAndTheCallerSeesIt) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe("order.placed", recorder.listener());
  json payload = {{"id", 7}};
  notifier.instrument("order.placed", payload, [](json& p) { p["total"] = 99; });
  EXPECT_EQ(payload["total"], 99);
  ASSERT_EQ(recorder.events.size(), 1u);
  EXPECT_EQ(recorder.events[0].payload()["total"], 99);
  EXPECT_EQ(recorder.events[0].payload()["id"], 7);
}

TEST(NotifierBasic, BlockGetsAWritablePayloadEvenWhenNobodyListens) {
  n::Notifier notifier;
  json payload = {{"id", 1}};
  notifier.instrument("quiet", payload, [](json& p) { p["seen"] = true; });
  EXPECT_EQ(payload["seen"], true);
  const json constant = {{"id", 2}};
  const int result = notifier.instrument("quiet", constant, [](json& p) { return p["id"].get<int>(); });
  EXPECT_EQ(result, 2);
}

TEST(NotifierBasic, InstantEventHasEqualStartAndEnd) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe("tick", recorder.listener());
  notifier.instrument("tick", {{"n", 1}});
  notifier.instrument("tick");
  ASSERT_EQ(recorder.events.size(), 2u);
  EXPECT_EQ(recorder.events[0].duration().count(), 0);
  EXPECT_EQ(recorder.events[0].payload()["n"], 1);
  EXPECT_TRUE(recorder.events[1].payload().is_null());
}

TEST(NotifierBasic, LazyPayloadIsBuiltOnlyWhenSomeoneListens) {
  n::Notifier notifier;
  int built = 0;
  auto make = [&] {
    ++built;
    return json{{"expensive", true}};
  };
  notifier.instrument("lazy", n::lazy(make), [] {});
  notifier.instrument("lazy", n::lazy(make));
  EXPECT_EQ(built, 0);
  Recorder recorder;
  auto sub = notifier.subscribe("lazy", recorder.listener());
  notifier.instrument("lazy", n::lazy(make), [] {});
  notifier.instrument("lazy", n::lazy(make));
  EXPECT_EQ(built, 2);
  ASSERT_EQ(recorder.events.size(), 2u);
  EXPECT_EQ(recorder.events[1].payload()["expensive"], true);
}

TEST(NotifierBasic, EventCarriesTimesIdsAndTransaction) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe("timed", recorder.listener());
  const auto before = std::chrono::system_clock::now();
  notifier.instrument("timed", [] { std::this_thread::sleep_for(std::chrono::milliseconds(2)); });
  notifier.instrument("timed", [] {});
  std::string other_thread_txn;
  std::thread([&] {
    notifier.instrument("timed", [] {});
  }).join();
  ASSERT_EQ(recorder.events.size(), 3u);
  const n::Event& e = recorder.events[0];
  EXPECT_EQ(e.name(), "timed");
  EXPECT_GE(e.time(), before - std::chrono::milliseconds(50));
  EXPECT_LE(e.time(), std::chrono::system_clock::now() + std::chrono::milliseconds(50));
  EXPECT_GE(e.duration(), std::chrono::milliseconds(2));
  EXPECT_GE(e.duration_ms(), 2.0);
  EXPECT_EQ(e.end() - e.start(), e.duration());
  EXPECT_FALSE(e.cpu_time().has_value());
  EXPECT_FALSE(e.exception().has_value());
  EXPECT_FALSE(e.remote());
  const std::regex uuid("^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  EXPECT_TRUE(std::regex_match(e.id(), uuid)) << e.id();
  EXPECT_NE(e.id(), recorder.events[1].id());
  EXPECT_EQ(e.id(), e.id());
  EXPECT_EQ(e.transaction_id().size(), 20u);
  EXPECT_EQ(e.transaction_id(), recorder.events[1].transaction_id());
  EXPECT_NE(e.transaction_id(), recorder.events[2].transaction_id());
}

TEST(NotifierBasic, CpuTimeIsMeasuredOnlyWhenASubscriberAsks) {
  n::Notifier notifier;
  Recorder plain;
  Recorder timed;
  auto a = notifier.subscribe("cpu", plain.listener());
  notifier.instrument("cpu", [] {});
  ASSERT_EQ(plain.events.size(), 1u);
  EXPECT_FALSE(plain.events[0].cpu_time().has_value());
  auto b = notifier.subscribe("cpu", timed.listener(), {.cpu_time = true});
  notifier.instrument("cpu", [] {
    volatile double x = 0;
    for (int i = 0; i < 200000; ++i) x = x + i;
  });
  ASSERT_EQ(timed.events.size(), 1u);
  ASSERT_TRUE(timed.events[0].cpu_time().has_value());
  EXPECT_GT(timed.events[0].cpu_time()->count(), 0);
  ASSERT_TRUE(timed.events[0].idle_time().has_value());
}

// The CPU clock is read inside the wall-clock pair and idle_time() is clamped at zero (as
// Rails does), so neither an instant event nor a CPU-bound block gives a negative idle time.
TEST(NotifierBasic, IdleTimeIsNeverNegative) {
  n::Notifier notifier;
  std::vector<std::chrono::nanoseconds> idle;
  auto sub = notifier.subscribe(
      "cpu.>", [&](const n::Event& e) { idle.push_back(e.idle_time().value()); },
      {.cpu_time = true});
  auto with_start = notifier.subscribe("cpu.started.>", n::StartFinishListener{{}, {}});
  for (int i = 0; i < 100; ++i) {
    notifier.instrument("cpu.instant");
    notifier.instrument("cpu.started.instant");
    notifier.instrument("cpu.busy", [] {
      volatile int x = 0;
      for (int j = 0; j < 1000; ++j) x = x + j;
    });
    notifier.instrument("cpu.started.empty", [] {});
  }
  ASSERT_EQ(idle.size(), 400u);
  for (std::size_t i = 0; i < idle.size(); ++i) {
    EXPECT_GE(idle[i].count(), 0) << "event " << i;
  }
}

TEST(NotifierBasic, ThrowingBlockPublishesTheEventAndPropagatesUnchanged) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe("boom", recorder.listener());
  json payload = {{"id", 3}};
  try {
    notifier.instrument("boom", payload, [] { throw std::invalid_argument("bad id"); });
    FAIL() << "the exception did not propagate";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "bad id");
  }
  ASSERT_EQ(recorder.events.size(), 1u);
  const auto& info = recorder.events[0].exception();
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->type, "std::invalid_argument");
  EXPECT_EQ(info->message, "bad id");
  EXPECT_THROW(std::rethrow_exception(info->object), std::invalid_argument);
  EXPECT_EQ(recorder.events[0].payload()["exception"], json::array({"std::invalid_argument", "bad id"}));
  EXPECT_EQ(payload["exception"][0], "std::invalid_argument");
}

TEST(NotifierBasic, NonStdExceptionsAreRecordedByType) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe("boom", recorder.listener());
  EXPECT_THROW(notifier.instrument("boom", [] { throw 7; }), int);
  ASSERT_EQ(recorder.events.size(), 1u);
  EXPECT_EQ(recorder.events[0].exception()->type, "int");
  EXPECT_EQ(recorder.events[0].exception()->message, "");
}

TEST(NotifierBasic, SubscriptionFormsSelectTheirEvents) {
  n::Notifier notifier;
  Recorder exact, star, tail, regex, all;
  auto s1 = notifier.subscribe("sql.query", exact.listener());
  auto s2 = notifier.subscribe("sql.*", star.listener());
  auto s3 = notifier.subscribe("sql.>", tail.listener());
  auto s4 = notifier.subscribe(n::Pattern::regex("cache"), regex.listener());
  auto s5 = notifier.subscribe(all.listener());
  for (const char* name : {"sql.query", "sql.query.slow", "cache.read", "other"}) {
    notifier.instrument(name);
  }
  EXPECT_EQ(exact.names(), std::vector<std::string>({"sql.query"}));
  EXPECT_EQ(star.names(), std::vector<std::string>({"sql.query"}));
  EXPECT_EQ(tail.names(), std::vector<std::string>({"sql.query", "sql.query.slow"}));
  EXPECT_EQ(regex.names(), std::vector<std::string>({"cache.read"}));
  EXPECT_EQ(all.names(), std::vector<std::string>({"sql.query", "sql.query.slow", "cache.read", "other"}));
}

TEST(NotifierBasic, ListenersRunInSubscriptionOrderOnTheInstrumentingThread) {
  n::Notifier notifier;
  std::vector<int> order;
  std::thread::id seen;
  auto a = notifier.subscribe("x", [&](const n::Event&) { order.push_back(1); seen = std::this_thread::get_id(); });
  auto b = notifier.subscribe("x", [&](const n::Event&) { order.push_back(2); });
  auto c = notifier.subscribe("x", [&](const n::Event&) { order.push_back(3); });
  notifier.instrument("x");
  EXPECT_EQ(order, std::vector<int>({1, 2, 3}));
  EXPECT_EQ(seen, std::this_thread::get_id());
}

TEST(NotifierBasic, StartFinishListenerWrapsTheBlock) {
  n::Notifier notifier;
  std::vector<std::string> log;
  auto sub = notifier.subscribe(
      "wrapped", n::StartFinishListener{[&](const n::Event& e) { log.push_back("start " + std::string(e.name())); },
                                        [&](const n::Event& e) {
                                          log.push_back("finish " + std::to_string(e.payload()["step"].get<int>()));
                                        }});
  notifier.instrument("wrapped", {{"step", 0}}, [&](json& p) {
    log.push_back("block");
    p["step"] = 1;
  });
  EXPECT_EQ(log, std::vector<std::string>({"start wrapped", "block", "finish 1"}));
}

struct Tracer {
  std::vector<std::string> calls;
  void start(const n::Event& e) { calls.push_back("start:" + std::string(e.name())); }
  void finish(const n::Event& e) { calls.push_back("finish:" + std::string(e.name())); }
};

TEST(NotifierBasic, ObjectWithStartAndFinishCanSubscribe) {
  n::Notifier notifier;
  auto tracer = std::make_shared<Tracer>();
  auto sub = notifier.subscribe("obj.*", tracer);
  notifier.instrument("obj.a", [] {});
  EXPECT_EQ(tracer->calls, std::vector<std::string>({"start:obj.a", "finish:obj.a"}));
}

TEST(NotifierBasic, ScopedSubscriptionUnsubscribesOnDestructionAndOnDemand) {
  n::Notifier notifier;
  Recorder recorder;
  {
    auto sub = notifier.subscribe("scoped", recorder.listener());
    EXPECT_TRUE(sub.active());
    notifier.instrument("scoped");
  }
  notifier.instrument("scoped");
  EXPECT_EQ(recorder.events.size(), 1u);
  auto sub = notifier.subscribe("scoped", recorder.listener());
  sub.unsubscribe();
  EXPECT_FALSE(sub.active());
  sub.unsubscribe();  // idempotent
  notifier.instrument("scoped");
  EXPECT_EQ(recorder.events.size(), 1u);
  EXPECT_FALSE(notifier.listening("scoped"));
}

TEST(NotifierBasic, ReleasedSubscriptionStaysForTheNotifiersLifetime) {
  n::Notifier notifier;
  Recorder recorder;
  notifier.subscribe("kept", recorder.listener()).release();
  notifier.instrument("kept");
  EXPECT_EQ(recorder.events.size(), 1u);
  EXPECT_EQ(notifier.stats().subscriptions, 1u);
}

TEST(NotifierBasic, MovedSubscriptionKeepsListening) {
  n::Notifier notifier;
  Recorder recorder;
  n::Subscription outer;
  {
    auto inner = notifier.subscribe("moved", recorder.listener());
    outer = std::move(inner);
  }
  notifier.instrument("moved");
  EXPECT_EQ(recorder.events.size(), 1u);
}

TEST(NotifierBasic, SubscribedListensForTheBlockOnly) {
  n::Notifier notifier;
  Recorder recorder;
  const int value = notifier.subscribed("during", recorder.listener(), [&] {
    notifier.instrument("during");
    return 5;
  });
  notifier.instrument("during");
  EXPECT_EQ(value, 5);
  EXPECT_EQ(recorder.events.size(), 1u);
}

TEST(NotifierBasic, UnsubscribeByNameRemovesExactAndExcludesFromPatterns) {
  n::Notifier notifier;
  Recorder exact, other_exact, pattern, all;
  auto a = notifier.subscribe("sql.query", exact.listener());
  auto b = notifier.subscribe("sql.write", other_exact.listener());
  auto c = notifier.subscribe("sql.*", pattern.listener());
  auto d = notifier.subscribe(all.listener());
  notifier.unsubscribe("sql.query");
  EXPECT_FALSE(a.active());
  EXPECT_TRUE(c.active());
  notifier.instrument("sql.query");
  notifier.instrument("sql.write");
  EXPECT_TRUE(exact.events.empty());
  EXPECT_EQ(other_exact.names(), std::vector<std::string>({"sql.write"}));
  EXPECT_EQ(pattern.names(), std::vector<std::string>({"sql.write"}));
  EXPECT_EQ(all.names(), std::vector<std::string>({"sql.query", "sql.write"}));  // as Rails
}

// Rails' unsubscribe(name) never touches subscribers without a pattern: Pattern::all() is one,
// in every listener shape.
TEST(NotifierBasic, UnsubscribeByNameKeepsEveryAllEventsSubscriber) {
  n::Notifier notifier;
  Recorder event_shape, no_pattern;
  std::vector<std::string> started, finished;
  auto a = notifier.subscribe(n::Pattern::all(), event_shape.listener());
  auto b = notifier.subscribe(
      n::Pattern::all(),
      n::StartFinishListener{[&](const n::Event& e) { started.emplace_back(e.name()); },
                             [&](const n::Event& e) { finished.emplace_back(e.name()); }});
  auto c = notifier.subscribe(no_pattern.listener());
  notifier.unsubscribe("sql.query");
  notifier.instrument("sql.query");
  EXPECT_EQ(event_shape.names(), std::vector<std::string>({"sql.query"}));
  EXPECT_EQ(started, std::vector<std::string>({"sql.query"}));
  EXPECT_EQ(finished, std::vector<std::string>({"sql.query"}));
  EXPECT_EQ(no_pattern.names(), std::vector<std::string>({"sql.query"}));
  EXPECT_TRUE(a.active());
  EXPECT_TRUE(b.active());
}

// A null pattern does not compile (it would otherwise convert to a null C string): every
// subscribing function rejects it, while a C-string pattern still works.
struct AroundObject {
  void start(const n::Event&) {}
  void finish(const n::Event&) {}
};
struct NoOpBlock {
  void operator()() const {}
};
template <class P>
constexpr bool subscribes_event_listener =
    requires(n::Notifier& notifier, P pattern, n::EventListener listener) {
      notifier.subscribe(pattern, listener);
    };
template <class L>
constexpr bool subscribes_alone = requires(n::Notifier& notifier, L listener) {
  notifier.subscribe(listener);
};
template <class P>
constexpr bool subscribes_start_finish_listener =
    requires(n::Notifier& notifier, P pattern, n::StartFinishListener listener) {
      notifier.subscribe(pattern, listener);
    };
template <class P>
constexpr bool subscribes_object =
    requires(n::Notifier& notifier, P pattern, std::shared_ptr<AroundObject> object) {
      notifier.subscribe(pattern, object);
    };
template <class P>
constexpr bool subscribes_for_a_block =
    requires(n::Notifier& notifier, P pattern, n::EventListener listener, NoOpBlock block) {
      notifier.subscribed(pattern, listener, block);
    };
template <class P>
constexpr bool free_function_subscribes = requires(P pattern, n::EventListener listener) {
  n::subscribe(pattern, listener);
};
template <class P>
constexpr bool free_function_subscribes_for_a_block =
    requires(P pattern, n::EventListener listener, NoOpBlock block) {
      n::subscribed(pattern, listener, block);
    };

TEST(NotifierBasic, NullPatternDoesNotCompile) {
  static_assert(subscribes_event_listener<const char*>);
  static_assert(subscribes_start_finish_listener<const char*>);
  static_assert(subscribes_object<const char*>);
  static_assert(subscribes_for_a_block<const char*>);
  static_assert(free_function_subscribes<const char*>);
  static_assert(free_function_subscribes_for_a_block<const char*>);
  static_assert(!subscribes_event_listener<std::nullptr_t>);
  static_assert(!subscribes_start_finish_listener<std::nullptr_t>);
  static_assert(!subscribes_object<std::nullptr_t>);
  static_assert(!subscribes_for_a_block<std::nullptr_t>);
  static_assert(!free_function_subscribes<std::nullptr_t>);
  static_assert(!free_function_subscribes_for_a_block<std::nullptr_t>);
  static_assert(subscribes_alone<n::EventListener>);
  static_assert(!subscribes_alone<std::nullptr_t>);  // a null listener is no pattern either
  static_assert(!std::is_constructible_v<n::Pattern, std::nullptr_t>);  // nor a Pattern, for capture() and friends
}

TEST(NotifierBasic, ListeningReflectsCurrentSubscribers) {
  n::Notifier notifier;
  EXPECT_FALSE(notifier.listening("a.b"));
  auto other = notifier.subscribe("c.d", [](const n::Event&) {});
  EXPECT_FALSE(notifier.listening("a.b"));
  auto sub = notifier.subscribe("a.*", [](const n::Event&) {});
  EXPECT_TRUE(notifier.listening("a.b"));
  sub.unsubscribe();
  EXPECT_FALSE(notifier.listening("a.b"));
}

TEST(NotifierBasic, HandleFollowsSubscriptionChanges) {
  n::Notifier notifier;
  auto handle = notifier.handle("hot.path");
  Recorder recorder;
  EXPECT_FALSE(handle.listening());
  EXPECT_EQ(handle.instrument([] { return 1; }), 1);
  {
    auto sub = notifier.subscribe("hot.>", recorder.listener());
    EXPECT_TRUE(handle.listening());
    json payload = {{"k", 1}};
    handle.instrument(payload, [](json& p) { p["added"] = true; });
    handle.instrument({{"k", 2}}, [] {});
    handle.instrument(n::lazy([] { return json{{"k", 3}}; }), [] {});
    handle.instrument({{"k", 4}});
    auto copy = handle;
    copy.instrument([] {});
  }
  EXPECT_FALSE(handle.listening());
  handle.instrument([] {});
  ASSERT_EQ(recorder.events.size(), 5u);
  EXPECT_EQ(recorder.events[0].payload()["added"], true);
  EXPECT_EQ(recorder.events[3].payload()["k"], 4);
  EXPECT_EQ(recorder.events[4].name(), "hot.path");
}

TEST(NotifierBasic, HandleWithListenersFollowsChangesOfItsListeners) {
  n::Notifier notifier;
  const auto handle = notifier.handle("hot.path");
  std::vector<std::string> calls;
  auto a = notifier.subscribe("hot.path", [&](const n::Event&) { calls.emplace_back("a"); });
  handle.instrument([] {});
  handle.instrument([] {});  // resolved at this generation: the handle's fast path
  auto b = notifier.subscribe("hot.*", [&](const n::Event&) { calls.emplace_back("b"); });
  handle.instrument([] {});
  a.unsubscribe();
  handle.instrument([] {});
  notifier.unsubscribe("hot.path");  // excludes the name from "hot.*"
  handle.instrument([] {});
  EXPECT_EQ(calls, (std::vector<std::string>{"a", "a", "a", "b", "b"}));
  EXPECT_FALSE(handle.listening());
}

TEST(NotifierBasic, AssignedHandleInstrumentsItsNewName) {
  n::Notifier notifier;
  Recorder recorder;
  auto sub = notifier.subscribe(recorder.listener());
  auto handle = notifier.handle("first.name");
  handle.instrument([] {});
  handle = notifier.handle("second.name");
  handle.instrument([] {});
  handle.instrument([] {});
  EXPECT_EQ(recorder.names(),
            (std::vector<std::string>{"first.name", "second.name", "second.name"}));
}

// Names of every length up to 40 that differ from a subscribed name in one byte, by name and
// through handles, interleaved so that they share the per-thread cache.
TEST(NotifierBasic, NamesDifferingInOneByteAreToldApartAtEveryLength) {
  n::Notifier notifier;
  Recorder recorder;
  std::vector<n::Subscription> subscriptions;
  for (std::size_t length = 1; length <= 40; ++length) {
    subscriptions.push_back(notifier.subscribe(std::string(length, 'a'), recorder.listener()));
  }
  std::size_t expected = 0;
  for (std::size_t length = 1; length <= 40; ++length) {
    const std::string name(length, 'a');
    for (std::size_t at = 0; at < length; ++at) {
      std::string other = name;
      other[at] = 'b';
      notifier.instrument(name, [] {});
      notifier.instrument(other, [] {});
      notifier.handle(other).instrument([] {});
      notifier.handle(name).instrument([] {});
      EXPECT_FALSE(notifier.listening(other)) << other;
      expected += 2;
    }
  }
  ASSERT_EQ(recorder.events.size(), expected);
  for (const auto& event : recorder.events) {
    EXPECT_EQ(event.name().find('b'), std::string_view::npos) << event.name();
  }
}

TEST(NotifierBasic, CacheNameCompareAndHashReadOnlyTheName) {
  namespace d = n::detail;
  for (std::size_t length = 0; length <= 40; ++length) {
    // The names sit inside larger buffers whose bytes after the name differ.
    const std::string left = std::string(length, 'x') + "1111111111111111";
    const std::string right = std::string(length, 'x') + "2222222222222222";
    const std::string_view a(left.data(), length);
    const std::string_view b(right.data(), length);
    EXPECT_EQ(d::name_hash(a), d::name_hash(b)) << length;
    EXPECT_TRUE(d::same_name(std::string(a), b)) << length;
    EXPECT_FALSE(d::same_name(std::string(a), std::string_view(right.data(), length + 1)));
    for (std::size_t at = 0; at < length; ++at) {
      std::string other(a);
      other[at] = 'y';
      EXPECT_FALSE(d::same_name(other, a)) << length << " " << at;
      EXPECT_FALSE(d::same_name(std::string(a), other)) << length << " " << at;
    }
  }
}

TEST(NotifierBasic, HandleOutlivesItsNotifier) {
  auto notifier = std::make_unique<n::Notifier>();
  Recorder recorder;
  auto sub = notifier->subscribe("h", recorder.listener());
  auto handle = notifier->handle("h");
  handle.instrument([] {});
  notifier.reset();
  EXPECT_FALSE(handle.listening());
  handle.instrument([] {});
  EXPECT_FALSE(sub.active());
  sub.unsubscribe();
  EXPECT_EQ(recorder.events.size(), 1u);
}

TEST(NotifierBasic, BadInputNamesTheOffendingText) {
  n::Notifier notifier;
  try {
    notifier.instrument("", [] {});
    FAIL();
  } catch (const n::InvalidName& e) {
    EXPECT_NE(std::string(e.what()).find("event name \"\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(notifier.instrument(""), n::InvalidName);
  EXPECT_THROW((void)notifier.handle(""), n::InvalidName);
  EXPECT_THROW((void)notifier.listening(""), n::InvalidName);
  try {
    (void)notifier.subscribe("order.>.x", [](const n::Event&) {});
    FAIL();
  } catch (const n::InvalidPattern& e) {
    EXPECT_NE(std::string(e.what()).find("\"order.>.x\""), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)notifier.subscribe(n::Pattern::regex("[a-"), [](const n::Event&) {}),
               n::InvalidPattern);
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
}

TEST(NotifierBasic, EventCopiesAreSelfContained) {
  n::Notifier notifier;
  std::vector<n::Event> kept;
  auto sub = notifier.subscribe("copy.me", [&](const n::Event& e) {
    n::Event copy = e;
    kept.push_back(std::move(copy));
  });
  {
    std::string name = "copy.me";
    json payload = {{"big", std::string(100, 'x')}};
    notifier.instrument(name, payload, [] {});
    name.assign("overwritten");
    payload = json{{"other", 1}};
  }
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].name(), "copy.me");
  EXPECT_EQ(kept[0].payload()["big"].get<std::string>().size(), 100u);
  n::Event assigned("x", {{"y", 1}});
  assigned = kept[0];
  EXPECT_EQ(assigned.name(), "copy.me");
  EXPECT_EQ(assigned.id(), kept[0].id());
}

TEST(NotifierBasic, TraceparentComesFromThePayload) {
  n::Event plain("a", {{"x", 1}});
  EXPECT_EQ(plain.traceparent(), "");
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  n::Event traced("a", {{"traceparent", tp}});
  EXPECT_EQ(traced.traceparent(), tp);
}

// Each difference from Rails that docs/rails.md "Where we differ from Rails" lists, as the code does it.
TEST(NotifierBasic, TheReadmesDifferencesFromRailsHold) {
  n::Notifier notifier({.error_handler = [](const n::SubscriberFailure&) {}});
  {  // Subscriber errors are not raised by default.
    auto thrower = notifier.subscribe("e", [](const n::Event&) { throw std::runtime_error("x"); });
    EXPECT_NO_THROW(notifier.instrument("e", [] {}));
  }
  Recorder recorder;
  auto sub = notifier.subscribe("d.>", recorder.listener());
  // instrument(name) without a block is an instant event; CPU time is opt-in.
  notifier.instrument("d.instant");
  ASSERT_EQ(recorder.events.size(), 1u);
  EXPECT_EQ(recorder.events[0].start(), recorder.events[0].end());
  EXPECT_FALSE(recorder.events[0].cpu_time().has_value());
  // publish(Event) calls start and finish listeners.
  std::vector<std::string> calls;
  auto around = notifier.subscribe(
      "d.published", n::StartFinishListener{[&](const n::Event&) { calls.emplace_back("start"); },
                                            [&](const n::Event&) { calls.emplace_back("finish"); }});
  notifier.publish(n::Event("d.published", nullptr));
  EXPECT_EQ(calls, std::vector<std::string>({"start", "finish"}));
  // The exception object is in event.exception(), not in the payload.
  EXPECT_THROW(notifier.instrument("d.failed", [] { throw std::logic_error("bad"); }),
               std::logic_error);
  const n::Event& failed = recorder.events.back();
  ASSERT_EQ(failed.name(), "d.failed");
  ASSERT_TRUE(failed.exception().has_value());
  EXPECT_THROW(std::rethrow_exception(failed.exception()->object), std::logic_error);
  EXPECT_EQ(failed.payload(), json({{"exception", {"std::logic_error", "bad"}}}));
}

TEST(DefaultNotifier, FreeFunctionsUseTheProcessWideNotifier) {
  Recorder recorder;
  auto sub = n::subscribe("default.test", recorder.listener());
  EXPECT_TRUE(n::listening("default.test"));
  EXPECT_EQ(n::instrument("default.test", {{"a", 1}}, [] { return 3; }), 3);
  json payload = {{"b", 2}};
  n::instrument("default.test", payload, [](json& p) { p["c"] = 3; });
  n::instrument("default.test", n::lazy([] { return json{{"lazy", 1}}; }), [] {});
  n::instrument("default.test");
  auto handle = n::handle("default.test");
  handle.instrument([] {});
  EXPECT_EQ(&n::default_notifier(), &n::default_notifier());
  EXPECT_EQ(recorder.events.size(), 5u);
  EXPECT_EQ(payload["c"], 3);
  n::subscribed("default.other", recorder.listener(), [] { n::instrument("default.other"); });
  n::instrument("default.other");
  EXPECT_EQ(recorder.events.size(), 6u);
  n::unsubscribe("default.test");
  EXPECT_FALSE(n::listening("default.test"));
}

}  // namespace
