// The numbered promises of docs/dispatch.md ("Nested dispatch"), one test (or more) each.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "notifications/notifications.hpp"

namespace n = notifications;
using namespace std::chrono_literals;

namespace {

// Promise 1: synchronous, in subscription order, start before the block, finish after.
TEST(NestedPromise1, OrderAroundTheBlock) {
  n::Notifier notifier;
  std::vector<std::string> log;
  auto a = notifier.subscribe("p", n::StartFinishListener{[&](const n::Event&) { log.push_back("a.start"); },
                                                          [&](const n::Event&) { log.push_back("a.finish"); }});
  auto b = notifier.subscribe("p", [&](const n::Event&) { log.push_back("b"); });
  auto c = notifier.subscribe("p", n::StartFinishListener{[&](const n::Event&) { log.push_back("c.start"); },
                                                          [&](const n::Event&) { log.push_back("c.finish"); }});
  notifier.instrument("p", [&] { log.push_back("block"); });
  EXPECT_EQ(log, std::vector<std::string>({"a.start", "c.start", "block", "a.finish", "b", "c.finish"}));
}

// Promise 2: a listener subscribed during dispatch gets events that start afterwards only.
TEST(NestedPromise2, SubscribeDuringDispatchTakesEffectFromTheNextEvent) {
  n::Notifier notifier;
  int late_calls = 0;
  std::optional<n::Subscription> late;
  auto first = notifier.subscribe("p", [&](const n::Event&) {
    if (!late) late.emplace(notifier.subscribe("p", [&](const n::Event&) { ++late_calls; }));
  });
  notifier.instrument("p");
  EXPECT_EQ(late_calls, 0);
  notifier.instrument("p");
  EXPECT_EQ(late_calls, 1);
}

TEST(NestedPromise2, SubscribeFromTheBlockTakesEffectFromTheNextEvent) {
  n::Notifier notifier;
  int calls = 0;
  auto watcher = notifier.subscribe("p", [](const n::Event&) {});
  std::optional<n::Subscription> sub;
  notifier.instrument("p", [&] { sub.emplace(notifier.subscribe("p", [&](const n::Event&) { ++calls; })); });
  EXPECT_EQ(calls, 0);
  notifier.instrument("p");
  EXPECT_EQ(calls, 1);
}

// Promise 3: a listener unsubscribed during dispatch on the same thread is not called afterwards
// for that event; a start/finish listener whose start ran still gets its finish.
TEST(NestedPromise3, UnsubscribedLaterListenerIsSkipped) {
  n::Notifier notifier;
  int second_calls = 0;
  n::Subscription second;
  auto first = notifier.subscribe("p", [&](const n::Event&) { second.unsubscribe(); });
  second = notifier.subscribe("p", [&](const n::Event&) { ++second_calls; });
  notifier.instrument("p");
  EXPECT_EQ(second_calls, 0);
}

TEST(NestedPromise3, FinishStillPairsWithStart) {
  n::Notifier notifier;
  std::vector<std::string> log;
  n::Subscription wrapped = notifier.subscribe(
      "p", n::StartFinishListener{[&](const n::Event&) { log.push_back("start"); },
                                  [&](const n::Event&) { log.push_back("finish"); }});
  notifier.instrument("p", [&] { wrapped.unsubscribe(); });
  notifier.instrument("p");
  EXPECT_EQ(log, std::vector<std::string>({"start", "finish"}));
}

TEST(NestedPromise3, UnsubscribeByNameDuringDispatchApplies) {
  n::Notifier notifier;
  int calls = 0;
  auto first = notifier.subscribe("p", [&](const n::Event&) { notifier.unsubscribe("p"); });
  auto second = notifier.subscribe("p", [&](const n::Event&) { ++calls; });
  notifier.instrument("p");
  notifier.instrument("p");
  EXPECT_EQ(calls, 0);
}

// Promise 4: after unsubscribe returns on one thread, events that start afterwards on any
// thread never call the listener.
TEST(NestedPromise4, UnsubscribeIsVisibleToOtherThreads) {
  n::Notifier notifier;
  std::atomic<int> calls{0};
  auto sub = notifier.subscribe("p", [&](const n::Event&) { calls.fetch_add(1); });
  std::thread([&] { notifier.instrument("p"); }).join();  // warms the other thread's cache
  sub.unsubscribe();
  const int before = calls.load();
  std::thread([&] { notifier.instrument("p"); }).join();
  EXPECT_EQ(before, 1);
  EXPECT_EQ(calls.load(), 1);
}

// Promise 5: nested instruments dispatch immediately and finish inner-first.
TEST(NestedPromise5, NestedEventsFinishInnerFirst) {
  n::Notifier notifier;
  std::vector<std::string> finished;
  auto sub = notifier.subscribe("level.*",
                                [&](const n::Event& e) { finished.emplace_back(e.name()); });
  notifier.instrument("level.outer", [&] {
    notifier.instrument("level.middle", [&] { notifier.instrument("level.inner", [] {}); });
  });
  EXPECT_EQ(finished, std::vector<std::string>({"level.inner", "level.middle", "level.outer"}));
}

TEST(NestedPromise5, ListenerMayInstrumentAndTheNestedEventIsDelivered) {
  n::Notifier notifier;
  std::vector<std::string> seen;
  auto relay = notifier.subscribe("a", [&](const n::Event&) { notifier.instrument("b"); });
  auto all = notifier.subscribe([&](const n::Event& e) { seen.emplace_back(e.name()); });
  notifier.instrument("a");
  EXPECT_EQ(seen, std::vector<std::string>({"b", "a"}));
}

// Promise 6: a listener may destroy its own subscription, and others', from inside the call.
TEST(NestedPromise6, ListenerDestroysItsOwnSubscription) {
  n::Notifier notifier;
  int calls = 0;
  auto holder = std::make_shared<std::optional<n::Subscription>>();
  holder->emplace(notifier.subscribe("p", [&calls, holder](const n::Event&) {
    ++calls;
    holder->reset();  // destroys the Subscription that owns this very listener's registration
  }));
  notifier.instrument("p");
  notifier.instrument("p");
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(notifier.listening("p"));
  holder->reset();
}

// Promise 7: no lock is held while a listener runs: other threads subscribe, unsubscribe and
// instrument while a listener blocks.
TEST(NestedPromise7, OtherThreadsProceedWhileAListenerBlocks) {
  n::Notifier notifier;
  std::promise<void> entered;
  std::promise<void> release;
  auto released = release.get_future().share();
  auto blocker = notifier.subscribe("slow", [&](const n::Event&) {
    entered.set_value();
    released.wait_for(10s);
  });
  std::thread slow([&] { notifier.instrument("slow"); });
  ASSERT_EQ(entered.get_future().wait_for(10s), std::future_status::ready);
  auto other = std::async(std::launch::async, [&] {
    int calls = 0;
    auto sub = notifier.subscribe("fast", [&](const n::Event&) { ++calls; });
    notifier.instrument("fast");
    notifier.unsubscribe("fast");
    (void)notifier.stats();
    return calls;
  });
  const auto status = other.wait_for(10s);
  release.set_value();
  slow.join();
  ASSERT_EQ(status, std::future_status::ready) << "another thread was blocked by a running listener";
  EXPECT_EQ(other.get(), 1);
}

// Promise 8: a listener's destructor may call back into the notifier; it runs once no thread
// can still call the listener (here: at this thread's next lookup after unsubscribing).
TEST(NestedPromise8, ListenerDestructorMayUseTheNotifier) {
  n::Notifier notifier;
  auto live = std::make_shared<int>(0);
  struct CallsBack {
    n::Notifier* notifier;
    std::shared_ptr<int> live;
    CallsBack(n::Notifier* owner, std::shared_ptr<int> counter) : notifier(owner), live(std::move(counter)) { ++*live; }
    CallsBack(const CallsBack& o) : notifier(o.notifier), live(o.live) { ++*live; }
    ~CallsBack() {
      --*live;
      notifier->instrument("from.destructor");
      auto s = notifier->subscribe("x", [](const n::Event&) {});
    }
  };
  int from_destructor = 0;
  auto watcher = notifier.subscribe("from.destructor", [&](const n::Event&) { ++from_destructor; });
  {
    auto sub = notifier.subscribe("p", [cb = CallsBack(&notifier, live)](const n::Event&) {});
    notifier.instrument("p");
    EXPECT_GE(*live, 1);
  }
  notifier.instrument("p");          // this thread's cached set for "p" is replaced and parked
  notifier.instrument("unrelated");  // the next top-level lookup releases what was parked
  EXPECT_EQ(*live, 0);
  EXPECT_GE(from_destructor, 1);
}

// Promise 9: listener errors never stop other listeners or the block (see test_notifier_errors).
TEST(NestedPromise9, ErrorInANestedEventStaysInTheNestedEvent) {
  n::Notifier notifier({.error_handler = [](const n::SubscriberFailure&) {}});
  int outer_calls = 0;
  auto thrower = notifier.subscribe("inner", [](const n::Event&) { throw std::runtime_error("x"); });
  auto outer = notifier.subscribe("outer", [&](const n::Event&) { ++outer_calls; });
  notifier.instrument("outer", [&] { notifier.instrument("inner"); });
  EXPECT_EQ(outer_calls, 1);
}

// A lazy payload's builder runs before the event exists, at the top level of the thread: when it
// subscribes to the name and instruments twice, the listener set looked up before it was retired
// and released (the second top-level lookup releases what the first one retired). The event must
// not use that set: it reaches the listeners that exist after the builder ran, and ASan sees no
// use after free.
TEST(NestedPromise2, ALazyPayloadBuilderThatSubscribesAndInstrumentsDoesNotStaleTheLookup) {
  n::Notifier notifier;
  std::vector<std::string> seen;
  auto first = notifier.subscribe("lazy.event", [&](const n::Event& event) { seen.push_back("first:" + std::string(event.name())); });
  std::optional<n::Subscription> added;
  const auto builder = [&] {
    if (!added) added = notifier.subscribe("lazy.event", [&](const n::Event&) { seen.push_back("added"); });
    notifier.instrument("other.one");
    notifier.instrument("other.two");
    return nlohmann::json{{"built", true}};
  };
  const n::Handle handle = notifier.handle("lazy.event");
  notifier.instrument("lazy.event", n::lazy(builder));
  notifier.instrument("lazy.event", n::lazy(builder), [] {});
  handle.instrument(n::lazy(builder), [] {});
  EXPECT_EQ(seen, (std::vector<std::string>{"first:lazy.event", "added", "first:lazy.event", "added",
                                            "first:lazy.event", "added"}));
}

}  // namespace
