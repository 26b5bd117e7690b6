// The memory transport and TransportBase's lifecycle. The factory registry's own tests are in
// tests/transport/test_transport_factory.cpp, redaction's in tests/transport/test_redaction.cpp.
// Every wait is bounded and fails the test when the bound passes; nothing sleeps to synchronise.
#include <gtest/gtest.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "notifications/fork.hpp"
#include "notifications/transport.hpp"
#include "notifications/transports/memory.hpp"
#include "transports/memory/loopback_broker.hpp"
#include "transport_test_support.hpp"
#include "scale.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

using test_support::error_of;
using test_support::in;
using test_support::publish1;

using test_support::kScale;  // tests/scale.hpp: a tenth of the counts in the sanitizer builds

constexpr auto kWait = 20s;  // bound of every wait that is expected to succeed

n::Message msg(std::string subject, std::string body = "", std::vector<std::pair<std::string, std::string>> headers = {}) {
  return n::Message{std::move(subject), std::move(body), std::move(headers)};
}

// Collects deliveries; waits are bounded.
class Collector {
 public:
  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) { add(std::move(d.message)); };
  }
  void add(n::Message m) {
    {
      std::lock_guard lock(mutex_);
      messages_.push_back(std::move(m));
      threads_.insert(std::this_thread::get_id());
    }
    changed_.notify_all();
  }
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return messages_.size() >= count; });
  }
  std::vector<n::Message> messages() const {
    std::lock_guard lock(mutex_);
    return messages_;
  }
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return messages_.size();
  }
  std::vector<std::string> bodies() const {
    std::vector<std::string> out;
    for (const auto& m : messages()) out.push_back(m.body);
    return out;
  }
  std::set<std::thread::id> threads() const {
    std::lock_guard lock(mutex_);
    return threads_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<n::Message> messages_;
  std::set<std::thread::id> threads_;
};

// A handler gate: the handler reports it entered, then blocks until the test opens the gate.
class Gate {
 public:
  void enter_and_wait() {
    std::unique_lock lock(mutex_);
    ++entered_;
    changed_.notify_all();
    // Bounded too: a test that failed before opening the gate must not hang in stop().
    if (!changed_.wait_for(lock, kWait, [&] { return open_; })) ADD_FAILURE() << "gate never opened";
  }
  bool wait_entered(int count = 1, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return entered_ >= count; });
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int entered_ = 0;
  bool open_ = false;
};

// Polls a condition that has no notification of its own (a health counter), bounded.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = kWait) {
  const auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

std::unique_ptr<n::Transport> memory(std::string broker, bool inline_delivery, std::size_t max_pending = 65536) {
  auto t = n::make_memory_transport(n::MemoryOptions{std::move(broker), inline_delivery, max_pending});
  t->start();
  return t;
}

// A fresh broker name per test, so tests never see each other's messages.
std::string fresh_broker() { return test_support::fresh_name("b"); }

}  // namespace

// ---- subject matching --------------------------------------------------------------------------

TEST(TransportMemorySubjects, MatchesLiteralStarAndGreaterThan) {
  struct Case {
    const char* pattern;
    const char* subject;
    bool matches;
  };
  const Case cases[] = {
      {"a", "a", true},           {"a", "b", false},          {"a", "a.b", false},
      {"a.b", "a", false},        {"a.b", "a.b", true},       {"a.b", "a.c", false},
      {"*", "a", true},           {"*", "a.b", false},        {"a.*", "a.b", true},
      {"a.*", "a", false},        {"a.*", "a.b.c", false},    {"*.b", "a.b", true},
      {"*.b", "a.c", false},      {"a.*.c", "a.x.c", true},   {"a.*.c", "a.x.d", false},
      {"*.*", "a.b", true},       {"*.*", "a.b.c", false},    {">", "a", true},
      {">", "a.b.c", true},       {"a.>", "a", false},        {"a.>", "a.b", true},
      {"a.>", "a.b.c", true},     {"a.>", "b.c", false},      {"a.*.>", "a.b", false},
      {"a.*.>", "a.b.c", true},   {"*.>", "a", false},        {"*.>", "a.b", true},
      {"ab", "a", false},         {"a", "ab", false},         {"a.b", "a.bc", false},
      {"orders.created", "orders.created", true},            {"orders.*", "orders.created.eu", false},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(n::loopback::subject_matches(c.pattern, c.subject), c.matches)
        << "pattern " << c.pattern << " subject " << c.subject;
  }
}

TEST(TransportMemorySubjects, DeliversByWildcard) {
  const auto broker = fresh_broker();
  Collector exact, star, tail, all;
  auto t = memory(broker, true);
  t->subscribe("orders.created", "", exact.handler());
  t->subscribe("orders.*", "", star.handler());
  t->subscribe("orders.>", "", tail.handler());
  t->subscribe(">", "", all.handler());
  const std::vector<n::Message> batch{msg("orders.created", "1"), msg("orders.paid", "2"),
                                      msg("orders.created.eu", "3"), msg("orders", "4"), msg("users.x", "5")};
  const auto r = t->publish(batch);
  EXPECT_EQ(r.published, 5u);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(exact.bodies(), (std::vector<std::string>{"1"}));
  EXPECT_EQ(star.bodies(), (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(tail.bodies(), (std::vector<std::string>{"1", "2", "3"}));
  EXPECT_EQ(all.bodies(), (std::vector<std::string>{"1", "2", "3", "4", "5"}));
}

TEST(TransportMemorySubjects, MessageArrivesIntact) {
  Collector c;
  auto t = memory(fresh_broker(), true);
  t->subscribe("a.b", "", c.handler());
  const auto m = msg("a.b", std::string("body\0with nul", 13), {{"id", "42"}, {"content-type", "x/y"}});
  EXPECT_EQ(publish1(*t, m).published, 1u);
  ASSERT_EQ(c.size(), 1u);
  const auto got = c.messages()[0];
  EXPECT_EQ(got.subject, "a.b");
  EXPECT_EQ(got.body, m.body);
  EXPECT_EQ(got.headers, m.headers);
  EXPECT_EQ(got.header("id"), "42");
}

// Message::id is carried as the field, not as a header: it arrives as published.
TEST(TransportMemorySubjects, MessageIdRoundTrip) {
  Collector c;
  auto t = memory(fresh_broker(), true);
  t->subscribe("a.b", "", c.handler());
  auto m = msg("a.b", "{}");
  m.id = "id-42";
  EXPECT_EQ(publish1(*t, m).published, 1u);
  EXPECT_EQ(publish1(*t, msg("a.b", "{}")).published, 1u);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c.messages()[0].id, "id-42");
  EXPECT_TRUE(c.messages()[0].headers.empty());
  EXPECT_EQ(c.messages()[1].id, "");
}

// The memory transport has no durable consumers, start positions, acknowledgements or ordered
// option: each such DeliveryOptions field is refused at subscribe, naming it; nothing is
// subscribed.
TEST(TransportMemorySubjects, UnsupportedDeliveryOptionsAreRefusedByName) {
  auto t = memory(fresh_broker(), true);
  const auto refused = [&](const char* option, auto set) {
    n::DeliveryOptions options;
    set(options);
    const std::string error = error_of([&] { t->subscribe("a.>", options, [](n::Delivery&&) {}); });
    EXPECT_NE(error.find(std::string("DeliveryOptions::") + option), std::string::npos) << error;
  };
  refused("durable", [](n::DeliveryOptions& o) { o.durable = "d"; });
  refused("start", [](n::DeliveryOptions& o) { o.start = n::StartPosition::all_retained(); });
  refused("start", [](n::DeliveryOptions& o) { o.start = n::StartPosition::from_sequence(1); });
  refused("ack_wait", [](n::DeliveryOptions& o) { o.ack_wait = 1s; });
  refused("max_deliveries", [](n::DeliveryOptions& o) { o.max_deliveries = 3; });
  refused("ordered", [](n::DeliveryOptions& o) { o.ordered = true; });
  EXPECT_EQ(t->health()["subscriptions"], 0);
  n::DeliveryOptions plain;
  plain.start = n::StartPosition::new_only();  // the default: accepted
  EXPECT_NO_THROW(t->subscribe("a.>", plain, [](n::Delivery&&) {}));
}

TEST(TransportMemorySubjects, InvalidPatternsGroupsAndSubjectsAreRefused) {
  Collector c;
  auto t = memory(fresh_broker(), true);
  EXPECT_NE(error_of([&] { t->subscribe("a..b", "", [](n::Delivery&&) {}); }).find("subscribe pattern \"a..b\""),
            std::string::npos);
  EXPECT_NE(error_of([&] { t->subscribe("a.>.b", "", [](n::Delivery&&) {}); }).find("[notifications.transport]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { t->subscribe("a", "bad group", [](n::Delivery&&) {}); }).find("subscribe group \"bad group\""),
            std::string::npos);
  EXPECT_NE(error_of([&] { t->subscribe("a", "", nullptr); }).find("empty handler"), std::string::npos);

  t->subscribe(">", "", c.handler());
  const std::vector<n::Message> batch{msg("ok.one"), msg("bad.*"), msg("ok.two")};
  const auto r = t->publish(batch);
  EXPECT_EQ(r.published, 1u);
  EXPECT_FALSE(r.transient);
  EXPECT_NE(r.error.find("message 2 of 3: subject \"bad.*\""), std::string::npos) << r.error;
  EXPECT_EQ(c.size(), 1u);
  EXPECT_EQ(t->health()["refused_invalid"], 1);
}

// ---- lifecycle (TransportBase) -----------------------------------------------------------------

TEST(TransportMemoryLifecycle, PublishBeforeStartAndAfterStopIsRefusedWithoutThrowing) {
  auto t = n::make_memory_transport({fresh_broker(), true});
  EXPECT_EQ(static_cast<n::TransportBase&>(*t).state(), n::TransportBase::State::created);
  auto r = publish1(*t, msg("a"));
  EXPECT_EQ(r.published, 0u);
  EXPECT_FALSE(r.transient);
  EXPECT_EQ(r.error, "transport not started");
  EXPECT_NE(error_of([&] { t->subscribe("a", "", [](n::Delivery&&) {}); }).find("not started"), std::string::npos);
  EXPECT_TRUE(t->flush(in(0ms)));  // nothing to flush

  t->start();
  t->start();  // no-op
  EXPECT_EQ(static_cast<n::TransportBase&>(*t).state(), n::TransportBase::State::started);
  EXPECT_EQ(publish1(*t, msg("a")).published, 1u);

  t->stop(in(1s));
  t->stop(in(1s));  // idempotent
  EXPECT_EQ(static_cast<n::TransportBase&>(*t).state(), n::TransportBase::State::stopped);
  r = publish1(*t, msg("a"));
  EXPECT_EQ(r.published, 0u);
  EXPECT_FALSE(r.transient);
  EXPECT_EQ(r.error, "transport stopped");
  EXPECT_NE(error_of([&] { t->subscribe("a", "", [](n::Delivery&&) {}); }).find("transport stopped"), std::string::npos);
  EXPECT_NE(error_of([&] { t->start(); }).find("start() after stop()"), std::string::npos);
  t->unsubscribe(1);  // no-op
  EXPECT_TRUE(t->flush(in(0ms)));
  EXPECT_EQ(t->health()["state"], "stopped");
  EXPECT_EQ(t->health()["kind"], "memory");
}

TEST(TransportMemoryLifecycle, StopFromCreatedAndEmptyBatch) {
  auto t = n::make_memory_transport({fresh_broker()});
  t->stop(in(0ms));
  EXPECT_EQ(static_cast<n::TransportBase&>(*t).state(), n::TransportBase::State::stopped);
  EXPECT_EQ(t->health()["state"], "stopped");

  auto u = memory(fresh_broker(), false);
  const auto r = u->publish({});
  EXPECT_EQ(r.published, 0u);
  EXPECT_EQ(r.error, "");
}

TEST(TransportMemoryLifecycle, HealthAndCapabilities) {
  const auto broker = fresh_broker();
  Collector c;
  auto t = memory(broker, false, 77);
  const auto caps = t->capabilities();
  EXPECT_TRUE(caps.ordered);
  EXPECT_TRUE(caps.consumer_groups);
  EXPECT_FALSE(caps.persistent);
  EXPECT_FALSE(caps.exactly_once);
  EXPECT_FALSE(caps.acknowledgements);
  EXPECT_FALSE(caps.needs_server);
  t->subscribe(">", "", c.handler());
  const std::vector<n::Message> batch{msg("a"), msg("b"), msg("c")};
  EXPECT_EQ(t->publish(batch).published, 3u);
  ASSERT_TRUE(t->flush(in(kWait)));
  const auto h = t->health();
  EXPECT_EQ(h["kind"], "memory");
  EXPECT_EQ(h["state"], "started");
  EXPECT_EQ(h["broker"], broker);
  EXPECT_EQ(h["mode"], "queued");
  EXPECT_EQ(h["max_pending"], 77);
  EXPECT_EQ(h["subscriptions"], 1);
  EXPECT_EQ(h["published"], 3);
  EXPECT_EQ(h["delivered"], 3);
  EXPECT_EQ(h["pending"], 0);
  EXPECT_EQ(h["unflushed"], 0);
  EXPECT_EQ(h["discarded"], 0);
  EXPECT_EQ(h["handler_errors"], 0);
}

// ---- delivery modes ----------------------------------------------------------------------------

TEST(TransportMemoryModes, InlineDeliversOnThePublishingThreadBeforePublishReturns) {
  Collector c;
  auto t = memory(fresh_broker(), true);
  t->subscribe("x", "", c.handler());
  EXPECT_EQ(publish1(*t, msg("x", "1")).published, 1u);
  EXPECT_EQ(c.size(), 1u);  // no wait: already delivered
  EXPECT_EQ(c.threads(), std::set<std::thread::id>{std::this_thread::get_id()});
  EXPECT_EQ(t->health()["mode"], "inline");
}

TEST(TransportMemoryModes, QueuedDeliversOnItsOwnThreadAndFlushWaits) {
  Collector c;
  auto t = memory(fresh_broker(), false);
  t->subscribe("x", "", c.handler());
  std::vector<n::Message> batch;
  for (int i = 0; i < 200; ++i) batch.push_back(msg("x", std::to_string(i)));
  EXPECT_EQ(t->publish(batch).published, 200u);
  ASSERT_TRUE(t->flush(in(kWait)));
  EXPECT_EQ(c.size(), 200u);  // flush returned: everything was handed over
  const auto threads = c.threads();
  ASSERT_EQ(threads.size(), 1u);
  EXPECT_NE(*threads.begin(), std::this_thread::get_id());
}

TEST(TransportMemoryModes, FlushTimesOutWhileAHandlerHoldsAMessage) {
  Gate gate;
  auto t = memory(fresh_broker(), false);
  t->subscribe("x", "", [&](n::Delivery&&) { gate.enter_and_wait(); });
  EXPECT_EQ(publish1(*t, msg("x")).published, 1u);
  ASSERT_TRUE(gate.wait_entered());
  EXPECT_FALSE(t->flush(in(20ms)));
  EXPECT_EQ(t->health()["unflushed"], 1);
  gate.open();
  EXPECT_TRUE(t->flush(in(kWait)));
}

TEST(TransportMemoryModes, TwoTransportsOnOneBrokerAndIsolationBetweenBrokers) {
  const auto broker = fresh_broker();
  Collector on_a, on_b, on_other;
  auto a = memory(broker, false);
  auto b = memory(broker, true);
  auto other = memory(broker + "-other", true);
  a->subscribe("s.>", "", on_a.handler());
  b->subscribe("s.>", "", on_b.handler());
  other->subscribe(">", "", on_other.handler());
  EXPECT_EQ(publish1(*a, msg("s.1", "from a")).published, 1u);
  EXPECT_EQ(publish1(*b, msg("s.2", "from b")).published, 1u);
  ASSERT_TRUE(a->flush(in(kWait)));
  ASSERT_TRUE(b->flush(in(kWait)));
  EXPECT_EQ(on_a.bodies(), (std::vector<std::string>{"from a", "from b"}));
  EXPECT_EQ(on_b.bodies(), (std::vector<std::string>{"from a", "from b"}));
  EXPECT_EQ(on_other.size(), 0u);
  EXPECT_EQ(a->health()["published"], 1);
  EXPECT_EQ(a->health()["delivered"], 2);
}

TEST(TransportMemoryModes, NoSubscriberMeansAcceptedAndNotDelivered) {
  auto t = memory(fresh_broker(), false);
  EXPECT_EQ(publish1(*t, msg("nobody.listens")).published, 1u);
  EXPECT_TRUE(t->flush(in(kWait)));
}

TEST(TransportMemoryModes, ABrokerLivesOnlyWhileATransportUsesIt) {
  const auto broker = fresh_broker();
  Collector c;
  {
    auto a = memory(broker, true);
    a->subscribe(">", "", c.handler());
  }  // a stopped and destroyed: the broker goes with it
  auto b = memory(broker, true);
  EXPECT_EQ(publish1(*b, msg("x")).published, 1u);
  EXPECT_EQ(c.size(), 0u);
}

// ---- consumer groups ---------------------------------------------------------------------------

TEST(TransportMemoryGroups, RoundRobinWithinAGroupAndACopyPerGroupAndPlainSubscriber) {
  const auto broker = fresh_broker();
  Collector g1, g2, g3, h1, h2, plain;
  auto t = memory(broker, true);
  auto u = memory(broker, true);
  t->subscribe("jobs.*", "g", g1.handler());
  u->subscribe("jobs.*", "g", g2.handler());
  t->subscribe("jobs.*", "g", g3.handler());
  t->subscribe("jobs.*", "h", h1.handler());
  u->subscribe("jobs.*", "h", h2.handler());
  t->subscribe("jobs.*", "", plain.handler());
  std::vector<n::Message> batch;
  for (int i = 0; i < 9; ++i) batch.push_back(msg("jobs.run", std::to_string(i)));
  EXPECT_EQ(t->publish(batch).published, 9u);
  EXPECT_EQ(g1.bodies(), (std::vector<std::string>{"0", "3", "6"}));
  EXPECT_EQ(g2.bodies(), (std::vector<std::string>{"1", "4", "7"}));
  EXPECT_EQ(g3.bodies(), (std::vector<std::string>{"2", "5", "8"}));
  EXPECT_EQ(h1.bodies(), (std::vector<std::string>{"0", "2", "4", "6", "8"}));
  EXPECT_EQ(h2.bodies(), (std::vector<std::string>{"1", "3", "5", "7"}));
  EXPECT_EQ(plain.size(), 9u);
}

TEST(TransportMemoryGroups, QueuedGroupMembersTogetherReceiveEverythingOnce) {
  const auto broker = fresh_broker();
  std::mutex mutex;
  std::map<std::string, int> seen;
  auto pub = memory(broker, false);
  auto s1 = memory(broker, false);
  auto s2 = memory(broker, false);
  auto record = [&](n::Delivery&& d) {
    std::lock_guard lock(mutex);
    ++seen[d.message.body];
  };
  s1->subscribe("w.>", "workers", record);
  s2->subscribe("w.>", "workers", record);
  std::vector<n::Message> batch;
  for (int i = 0; i < 500; ++i) batch.push_back(msg("w.job", std::to_string(i)));
  EXPECT_EQ(pub->publish(batch).published, 500u);
  ASSERT_TRUE(pub->flush(in(kWait)));
  std::lock_guard lock(mutex);
  EXPECT_EQ(seen.size(), 500u);
  for (const auto& [body, count] : seen) EXPECT_EQ(count, 1) << body;
  EXPECT_EQ(s1->health()["delivered"], 250);
  EXPECT_EQ(s2->health()["delivered"], 250);
}

TEST(TransportMemoryGroups, UnsubscribedMemberLeavesTheRotation) {
  Collector a, b;
  auto t = memory(fresh_broker(), true);
  const auto ida = t->subscribe("x", "g", a.handler());
  t->subscribe("x", "g", b.handler());
  t->unsubscribe(ida);
  const std::vector<n::Message> batch{msg("x", "1"), msg("x", "2")};
  t->publish(batch);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.size(), 2u);
}

// ---- order -------------------------------------------------------------------------------------

TEST(TransportMemoryOrder, PerSubjectOrderWith1000MessagesOver16Subjects) {
  for (const bool inline_delivery : {false, true}) {
    const auto broker = fresh_broker();
    Collector all, groupa, groupb;
    auto pub = memory(broker, inline_delivery);
    auto sub = memory(broker, inline_delivery);
    sub->subscribe("keys.*", "", all.handler());
    sub->subscribe("keys.>", "g", groupa.handler());
    sub->subscribe("keys.>", "g", groupb.handler());
    std::vector<n::Message> batch;
    for (int i = 0; i < 1000; ++i) batch.push_back(msg("keys.k" + std::to_string(i % 16), std::to_string(i)));
    // In batches of 37, to cross batch boundaries.
    for (std::size_t off = 0; off < batch.size(); off += 37) {
      const auto part = std::span<const n::Message>(batch).subspan(off, std::min<std::size_t>(37, batch.size() - off));
      ASSERT_EQ(pub->publish(part).published, part.size());
    }
    ASSERT_TRUE(pub->flush(in(kWait)));
    ASSERT_EQ(all.size(), 1000u);
    std::map<std::string, int> last;
    for (const auto& m : all.messages()) {
      const int i = std::stoi(m.body);
      auto it = last.find(m.subject);
      if (it != last.end()) {
        EXPECT_LT(it->second, i) << m.subject << " inline=" << inline_delivery;
      }
      last[m.subject] = i;
    }
    EXPECT_EQ(last.size(), 16u);
    for (Collector* member : {&groupa, &groupb}) {
      std::map<std::string, int> last_in_group;
      for (const auto& m : member->messages()) {
        const int i = std::stoi(m.body);
        auto it = last_in_group.find(m.subject);
        if (it != last_in_group.end()) {
          EXPECT_LT(it->second, i);
        }
        last_in_group[m.subject] = i;
      }
    }
    EXPECT_EQ(groupa.size() + groupb.size(), 1000u);
  }
}

// ---- stop and drain ----------------------------------------------------------------------------

TEST(TransportMemoryStop, StopDeliversEverythingPublishedBeforeIt) {
  const auto broker = fresh_broker();
  Gate gate;
  std::atomic<int> received{0};
  auto pub = memory(broker, false);
  auto sub = memory(broker, false);
  sub->subscribe(">", "", [&](n::Delivery&&) {
    if (received.fetch_add(1) == 0) gate.enter_and_wait();
  });
  std::vector<n::Message> batch;
  for (int i = 0; i < 1000; ++i) batch.push_back(msg("d." + std::to_string(i % 7), std::to_string(i)));
  ASSERT_EQ(pub->publish(batch).published, 1000u);
  ASSERT_TRUE(gate.wait_entered());
  EXPECT_EQ(sub->health()["pending"], 999);  // held while the first call blocks
  auto stopping = std::async(std::launch::async, [&] { sub->stop(in(kWait)); });
  gate.open();
  ASSERT_EQ(stopping.wait_for(kWait), std::future_status::ready);
  stopping.get();
  EXPECT_EQ(received.load(), 1000);
  const auto h = sub->health();
  EXPECT_EQ(h["delivered"], 1000);
  EXPECT_EQ(h["discarded"], 0);
  EXPECT_EQ(h["subscriptions"], 0);
  EXPECT_TRUE(pub->flush(in(kWait)));
  // And the stopped transport no longer receives.
  EXPECT_EQ(publish1(*pub, msg("d.x")).published, 1u);
  EXPECT_EQ(received.load(), 1000);
}

TEST(TransportMemoryStop, PastTheDeadlineTheRestIsDiscardedAndCounted) {
  Gate gate;
  auto t = memory(fresh_broker(), false);
  t->subscribe(">", "", [&](n::Delivery&&) { gate.enter_and_wait(); });
  std::vector<n::Message> batch(10, msg("x"));
  ASSERT_EQ(t->publish(batch).published, 10u);
  ASSERT_TRUE(gate.wait_entered());
  auto stopping = std::async(std::launch::async, [&] { t->stop(Clock::now()); });
  // stop() discards the 9 queued messages at once, then waits for the call in progress.
  ASSERT_TRUE(eventually([&] { return t->health()["discarded"] == 9; }));
  EXPECT_EQ(stopping.wait_for(10ms), std::future_status::timeout);
  gate.open();
  ASSERT_EQ(stopping.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(t->health()["delivered"], 1);
  EXPECT_TRUE(t->flush(in(0ms)));  // stopped
}

TEST(TransportMemoryStop, InlineStopWaitsForACallInProgressOnAnotherThread) {
  const auto broker = fresh_broker();
  Gate gate;
  std::atomic<bool> returned{false};
  auto pub = memory(broker, true);
  auto sub = memory(broker, true);
  sub->subscribe(">", "", [&](n::Delivery&&) {
    gate.enter_and_wait();
    returned = true;
  });
  auto publishing = std::async(std::launch::async, [&] { return publish1(*pub, msg("x")); });
  ASSERT_TRUE(gate.wait_entered());
  auto stopping = std::async(std::launch::async, [&] { sub->stop(in(kWait)); });
  EXPECT_EQ(stopping.wait_for(10ms), std::future_status::timeout);
  gate.open();
  ASSERT_EQ(stopping.wait_for(kWait), std::future_status::ready);
  EXPECT_TRUE(returned.load());  // stop returned only after the handler did
  ASSERT_EQ(publishing.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(publishing.get().published, 1u);
}

TEST(TransportMemoryStop, PublishDuringShutdownIsDeliveredOrClearlyRefused) {
  // One thread publishes without pause while another stops the subscriber: every publish() that
  // was accepted before the subscriber's stop() returned was delivered.
  const auto broker = fresh_broker();
  std::atomic<int> received{0};
  std::atomic<int> accepted_before_stop{0};
  auto pub = memory(broker, false);
  auto sub = memory(broker, false);
  sub->subscribe(">", "", [&](n::Delivery&&) { received.fetch_add(1); });
  auto publishing = std::async(std::launch::async, [&] {
    for (int i = 0; i < 20000 / kScale; ++i) {
      const auto r = publish1(*sub, msg("p"));  // publish on the stopping transport itself
      if (r.published == 1) {
        accepted_before_stop.fetch_add(1);
      } else {
        EXPECT_EQ(r.error, "transport stopped");
        EXPECT_FALSE(r.transient);
        break;
      }
    }
  });
  ASSERT_TRUE(eventually([&] { return received.load() > 100; }));
  sub->stop(in(kWait));
  ASSERT_EQ(publishing.wait_for(kWait), std::future_status::ready);
  publishing.get();
  EXPECT_EQ(received.load(), accepted_before_stop.load());
  EXPECT_EQ(sub->health()["discarded"], 0);
}

TEST(TransportMemoryStop, DestructorStopsAndJoins) {
  std::atomic<int> received{0};
  {
    auto t = memory(fresh_broker(), false);
    t->subscribe(">", "", [&](n::Delivery&&) { received.fetch_add(1); });
    std::vector<n::Message> batch(100, msg("x"));
    t->publish(batch);
  }
  EXPECT_EQ(received.load(), 100);  // drained by the destructor's stop()
}

// ---- back-pressure -----------------------------------------------------------------------------

TEST(TransportMemoryBackpressure, AFullSubscriptionRefusesTheRestTransiently) {
  Gate gate;
  std::atomic<int> received{0};
  auto t = memory(fresh_broker(), false, 5);
  t->subscribe("bp.*", "", [&](n::Delivery&&) {
    if (received.fetch_add(1) == 0) gate.enter_and_wait();
  });
  ASSERT_EQ(publish1(*t, msg("bp.x", "first")).published, 1u);
  ASSERT_TRUE(gate.wait_entered());  // the first message is in the handler, the queue is empty
  std::vector<n::Message> batch;
  for (int i = 0; i < 10; ++i) batch.push_back(msg("bp.x", std::to_string(i)));
  const auto r = t->publish(batch);
  EXPECT_EQ(r.published, 5u);
  EXPECT_TRUE(r.transient);
  EXPECT_NE(r.error.find("message 6 of 10"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("\"bp.*\""), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("max_pending=5"), std::string::npos) << r.error;
  EXPECT_EQ(t->health()["refused_full"], 5);
  EXPECT_EQ(t->health()["pending"], 5);
  gate.open();
  ASSERT_TRUE(t->flush(in(kWait)));
  const auto rest = std::span<const n::Message>(batch).subspan(r.published);
  EXPECT_EQ(t->publish(rest).published, 5u);
  ASSERT_TRUE(t->flush(in(kWait)));
  EXPECT_EQ(received.load(), 11);
}

TEST(TransportMemoryBackpressure, AllOrNoneAcrossSubscriptions) {
  Gate gate;
  Collector free_one;
  auto t = memory(fresh_broker(), false, 1);
  t->subscribe("x", "", [&](n::Delivery&&) { gate.enter_and_wait(); });
  t->subscribe("x", "", free_one.handler());
  ASSERT_EQ(publish1(*t, msg("x", "1")).published, 1u);
  ASSERT_TRUE(gate.wait_entered());  // the blocked one's queue is empty again
  ASSERT_TRUE(free_one.wait_for(1));   // and so is the free one's
  ASSERT_EQ(publish1(*t, msg("x", "2")).published, 1u);  // fills the blocked one's queue
  ASSERT_TRUE(free_one.wait_for(2));
  EXPECT_EQ(publish1(*t, msg("x", "3")).published, 0u);  // refused for both
  gate.open();
  ASSERT_TRUE(t->flush(in(kWait)));
  EXPECT_EQ(free_one.bodies(), (std::vector<std::string>{"1", "2"}));
}

// ---- handlers calling back ---------------------------------------------------------------------

TEST(TransportMemoryReentrancy, InlineHandlerPublishesAndUnsubscribesWithoutDeadlock) {
  Collector echoes;
  std::vector<std::string> order;
  std::uint64_t self = 0;
  int depth = 0;
  auto t = memory(fresh_broker(), true);
  t->subscribe("echo", "", echoes.handler());
  self = t->subscribe("in", "", [&](n::Delivery&& d) {
    ++depth;
    EXPECT_EQ(depth, 1);  // a nested publish to this subscription does not recurse into it
    order.push_back(d.message.body);
    if (d.message.body == "1") {
      EXPECT_EQ(publish1(*t, msg("in", "nested")).published, 1u);
      EXPECT_EQ(publish1(*t, msg("echo", "e")).published, 1u);
    }
    if (d.message.body == "2") t->unsubscribe(self);
    --depth;
  });
  const std::vector<n::Message> batch{msg("in", "1"), msg("in", "2"), msg("in", "3")};
  EXPECT_EQ(t->publish(batch).published, 3u);
  EXPECT_EQ(order, (std::vector<std::string>{"1", "nested", "2"}));
  EXPECT_EQ(echoes.size(), 1u);
}

TEST(TransportMemoryReentrancy, QueuedHandlerPublishesAndUnsubscribesWithoutDeadlock) {
  Collector echoes;
  std::atomic<std::uint64_t> self{0};
  std::atomic<int> calls{0};
  std::promise<void> subscribed;
  auto t = memory(fresh_broker(), false);
  t->subscribe("echo", "", echoes.handler());
  auto ready = subscribed.get_future().share();
  self = t->subscribe("in", "", [&, ready](n::Delivery&& d) {
    ready.wait_for(kWait);
    calls.fetch_add(1);
    publish1(*t, msg("echo", d.message.body));
    t->unsubscribe(self.load());
  });
  const std::vector<n::Message> batch{msg("in", "1"), msg("in", "2"), msg("in", "3")};
  EXPECT_EQ(t->publish(batch).published, 3u);
  subscribed.set_value();  // the handler runs only once all three are queued
  ASSERT_TRUE(echoes.wait_for(1));
  ASSERT_TRUE(eventually([&] { return t->health()["subscriptions"] == 1; }));
  EXPECT_EQ(calls.load(), 1);  // the rest was discarded by the unsubscribe
  EXPECT_TRUE(t->flush(in(kWait)));
  EXPECT_EQ(t->health()["discarded"], 2);
  t->stop(in(kWait));
}

TEST(TransportMemoryReentrancy, HandlerCallingUnsubscribeAndPublishWhileStopDrains) {
  Gate gate;
  std::atomic<int> calls{0};
  std::vector<n::PublishResult> results;
  std::mutex results_mutex;
  std::uint64_t self = 0;
  auto t = memory(fresh_broker(), false);
  self = t->subscribe(">", "", [&](n::Delivery&&) {
    if (calls.fetch_add(1) == 0) gate.enter_and_wait();
    const auto r = publish1(*t, msg("again"));
    {
      std::lock_guard lock(results_mutex);
      results.push_back(r);
    }
    t->unsubscribe(self);  // stop() is draining: no hook runs, no deadlock; no call follows
  });
  const std::vector<n::Message> batch(3, msg("x"));
  ASSERT_EQ(t->publish(batch).published, 3u);
  ASSERT_TRUE(gate.wait_entered());
  auto stopping = std::async(std::launch::async, [&] { t->stop(in(kWait)); });
  ASSERT_TRUE(eventually([&] { return t->health()["state"] == "stopping"; }));
  gate.open();
  ASSERT_EQ(stopping.wait_for(kWait), std::future_status::ready);
  // The first call unsubscribed: the other two were drained to a closed handler, and counted.
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(t->health().value("discarded_after_unsubscribe", 0), 2) << t->health().dump();
  std::lock_guard lock(results_mutex);
  for (const auto& r : results) EXPECT_EQ(r.error, "transport stopped");
}

TEST(TransportMemoryReentrancy, ThrowingHandlerIsCountedAndDeliveryContinues) {
  std::atomic<int> calls{0};
  auto t = memory(fresh_broker(), false);
  t->subscribe(">", "", [&](n::Delivery&&) {
    calls.fetch_add(1);
    throw std::runtime_error("boom");
  });
  const std::vector<n::Message> batch(4, msg("x"));
  EXPECT_EQ(t->publish(batch).published, 4u);
  ASSERT_TRUE(t->flush(in(kWait)));
  EXPECT_EQ(calls.load(), 4);
  EXPECT_EQ(t->health()["handler_errors"], 4);
}

TEST(TransportMemoryReentrancy, UnsubscribeStopsDeliveriesAndCountsWhatWasHeld) {
  Gate gate;
  std::atomic<int> calls{0};
  auto t = memory(fresh_broker(), false);
  const auto id = t->subscribe(">", "", [&](n::Delivery&&) {
    calls.fetch_add(1);
    gate.enter_and_wait();
  });
  const std::vector<n::Message> batch(5, msg("x"));
  ASSERT_EQ(t->publish(batch).published, 5u);
  ASSERT_TRUE(gate.wait_entered());
  // unsubscribe() discards what was held at once, then waits for the call in progress.
  auto unsubscribing = std::async(std::launch::async, [&] { t->unsubscribe(id); });
  ASSERT_TRUE(eventually([&] { return t->health()["discarded"] == 4; })) << t->health().dump();
  EXPECT_EQ(unsubscribing.wait_for(50ms), std::future_status::timeout) << "returned while the handler ran";
  gate.open();
  ASSERT_EQ(unsubscribing.wait_for(kWait), std::future_status::ready);
  ASSERT_TRUE(t->flush(in(kWait)));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(publish1(*t, msg("x")).published, 1u);
  EXPECT_EQ(calls.load(), 1);
  t->unsubscribe(id);    // twice: no-op
  t->unsubscribe(999);   // unknown: no-op
}

// ---- stress ------------------------------------------------------------------------------------

TEST(TransportMemoryStress, FourPublishersTwoQueuedSubscribersEveryMessageExactlyOnce) {
  constexpr int per_thread = 5000 / kScale;
  constexpr int kThreads = 4;
  const auto broker = fresh_broker();
  std::atomic<int> order_errors{0};
  std::atomic<long> retries{0};
  auto pub = memory(broker, false, 1024);  // small queues: publishers meet back-pressure
  auto sub = memory(broker, false, 1024);
  std::vector<std::atomic<int>> counts_a(kThreads * per_thread), counts_b(kThreads * per_thread);
  auto handler_for = [&](std::vector<std::atomic<int>>& counts) {
    // One delivery thread per subscription, so `last` needs no lock.
    auto last = std::make_shared<std::vector<int>>(kThreads, -1);
    return [&counts, &order_errors, last](n::Delivery&& d) {
      const int id = std::stoi(d.message.body);
      counts[id].fetch_add(1);
      const int thread = id / per_thread;
      if ((*last)[thread] >= id) order_errors.fetch_add(1);  // per-publisher order
      (*last)[thread] = id;
    };
  };
  sub->subscribe("stress.*", "", handler_for(counts_a));
  sub->subscribe("stress.>", "", handler_for(counts_b));

  std::vector<std::future<void>> publishers;
  for (int t = 0; t < kThreads; ++t) {
    publishers.push_back(std::async(std::launch::async, [&, t] {
      std::vector<n::Message> batch;
      for (int i = 0; i < per_thread; ++i) {
        batch.push_back(msg("stress.t" + std::to_string(t), std::to_string(t * per_thread + i)));
        if (batch.size() == 64 || i == per_thread - 1) {
          std::size_t off = 0;
          const auto deadline = Clock::now() + kWait;
          while (off < batch.size()) {
            const auto r = pub->publish(std::span<const n::Message>(batch).subspan(off));
            off += r.published;
            if (off < batch.size()) {
              ASSERT_TRUE(r.transient) << r.error;
              ASSERT_LT(Clock::now(), deadline) << "publisher stuck: " << r.error;
              retries.fetch_add(1);
              std::this_thread::yield();  // back-off on a full queue, not synchronisation
            }
          }
          batch.clear();
        }
      }
    }));
  }
  for (auto& f : publishers) {
    ASSERT_EQ(f.wait_for(2 * kWait), std::future_status::ready) << "publisher did not finish (deadlock?)";
    f.get();
  }
  ASSERT_TRUE(pub->flush(in(2 * kWait)));
  for (std::size_t i = 0; i < counts_a.size(); ++i) {
    ASSERT_EQ(counts_a[i].load(), 1) << "subscriber a, message " << i;
    ASSERT_EQ(counts_b[i].load(), 1) << "subscriber b, message " << i;
  }
  EXPECT_EQ(order_errors.load(), 0);
  EXPECT_EQ(sub->health()["delivered"], 2 * kThreads * per_thread);
  EXPECT_EQ(sub->health()["discarded"], 0);
  pub->stop(in(kWait));
  sub->stop(in(kWait));
}

// ---- memory:// URLs -----------------------------------------------------------------------------

TEST(TransportMemoryUrl, MemoryByUrl) {
  auto t = n::make_transport(n::TransportConfig{"memory://", {}});
  EXPECT_EQ(t->kind(), "memory");
  auto h = t->health();
  EXPECT_EQ(h["broker"], "default");
  EXPECT_EQ(h["mode"], "queued");
  EXPECT_EQ(h["state"], "created");

  t = n::make_transport(n::TransportConfig{"MEMORY://f1?mode=inline&max_pending=12", {}});
  h = t->health();
  EXPECT_EQ(h["broker"], "f1");
  EXPECT_EQ(h["mode"], "inline");
  EXPECT_EQ(h["max_pending"], 12);

  t = n::make_transport(n::TransportConfig{"memory://f2?mode=queued", {{"mode", "inline"}, {"max_pending", 3}}});
  h = t->health();
  EXPECT_EQ(h["mode"], "queued");  // the URL wins
  EXPECT_EQ(h["max_pending"], 3);

  const auto o = n::memory_options_from_config({"memory://x?mode=inline", {}});
  EXPECT_EQ(o.broker, "x");
  EXPECT_TRUE(o.inline_delivery);
}

TEST(TransportMemoryUrl, MemoryByUrlDelivers) {
  Collector c;
  auto a = n::make_transport({"memory://" + fresh_broker() + "?mode=inline", {}});
  a->start();
  a->subscribe("u", "", c.handler());
  publish1(*a, msg("u"));
  EXPECT_EQ(c.size(), 1u);
}

TEST(TransportMemoryUrl, BadQueryKeysValuesAndOptionsAreNamed) {
  auto err = error_of([] { n::make_transport({"memory://b?foo=1&mode=inline&bar", {}}); });
  EXPECT_NE(err.find("[notifications.transport]"), std::string::npos) << err;
  EXPECT_NE(err.find("memory url \"memory://b?foo=1&mode=inline&bar\""), std::string::npos) << err;
  EXPECT_NE(err.find("unknown query keys \"foo\", \"bar\" (known: mode, max_pending, acknowledgements, ack_wait_ms, max_deliveries)"), std::string::npos) << err;

  err = error_of([] { n::make_transport({"memory://b?mode=fast", {}}); });
  EXPECT_NE(err.find("\"mode\": expected \"inline\" or \"queued\", got \"fast\""), std::string::npos) << err;

  err = error_of([] { n::make_transport({"memory://b?max_pending=0", {}}); });
  EXPECT_NE(err.find("\"max_pending\": expected a whole number"), std::string::npos) << err;
  err = error_of([] { n::make_transport({"memory://b?max_pending=-4", {}}); });
  EXPECT_NE(err.find("got \"-4\""), std::string::npos) << err;

  err = error_of([] { n::make_transport({"memory://b", {{"token", "s3cret"}, {"x", 1}}}); });
  EXPECT_NE(err.find("unknown option keys \"token\", \"x\""), std::string::npos) << err;
  EXPECT_EQ(err.find("s3cret"), std::string::npos) << err;

  err = error_of([] { n::make_transport({"memory://b", {{"max_pending", "10"}}}); });
  EXPECT_NE(err.find("option \"max_pending\""), std::string::npos) << err;

  err = error_of([] { n::make_transport({"memory://bad name", {}}); });
  EXPECT_NE(err.find("broker name \"bad name\" has ' '"), std::string::npos) << err;

  err = error_of([] { n::make_transport({"memory://user:hunter2@broker", {}}); });
  EXPECT_EQ(err.find("hunter2"), std::string::npos) << err;
  EXPECT_NE(err.find("memory://***@broker"), std::string::npos) << err;

  err = error_of([] { n::make_memory_transport({"", false, 10}); });
  EXPECT_NE(err.find("broker name"), std::string::npos) << err;
  err = error_of([] { n::make_memory_transport({"ok", false, 0}); });
  EXPECT_NE(err.find("max_pending"), std::string::npos) << err;
}

// ---- acknowledgements (MemoryOptions::acknowledgements) ----------------------------------------

namespace {

// One delivery as an acknowledging handler saw it.
struct Got {
  std::string body;
  std::string id;
  std::uint32_t redelivery = 0;
  Clock::time_point at;
  std::thread::id thread;
  std::string thread_name;
};

// Records deliveries and keeps their settle and in_progress functions for the test thread; its
// handler settles at once as `decide` says (nullopt, the default: held for the test). Waits are
// bounded. Thread-safety: every member may be called from any thread.
class AckInbox {
 public:
  using Decide = std::function<std::optional<n::Settlement>(const Got& got, std::size_t index)>;
  explicit AckInbox(Decide decide = {}) : decide_(std::move(decide)) {}

  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) {
      std::optional<n::Settlement> how;
      std::function<void(n::Settlement)> settle = d.settle;
      {
        std::lock_guard lock(mutex_);
        Got got{d.message.body, d.message.id, d.redelivery, Clock::now(), std::this_thread::get_id(), {}};
        char name[32] = {};
        pthread_getname_np(pthread_self(), name, sizeof(name));
        got.thread_name = name;
        if (decide_) how = decide_(got, got_.size());
        got_.push_back(got);
        settles_.push_back(std::move(d.settle));
        touches_.push_back(std::move(d.in_progress));
      }
      changed_.notify_all();
      if (how && settle) settle(*how);  // outside the lock, as a handler would
    };
  }
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return got_.size() >= count; });
  }
  std::vector<Got> got() {
    std::lock_guard lock(mutex_);
    return got_;
  }
  std::size_t size() {
    std::lock_guard lock(mutex_);
    return got_.size();
  }
  std::function<void(n::Settlement)> settle_of(std::size_t index) {
    std::lock_guard lock(mutex_);
    return settles_.at(index);
  }
  std::function<void()> in_progress_of(std::size_t index) {
    std::lock_guard lock(mutex_);
    return touches_.at(index);
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  Decide decide_;
  std::vector<Got> got_;
  std::vector<std::function<void(n::Settlement)>> settles_;
  std::vector<std::function<void()>> touches_;
};

std::unique_ptr<n::Transport> acking(std::string broker, bool inline_delivery,
                                     std::chrono::milliseconds ack_wait = 30s, std::uint32_t max_deliveries = 0,
                                     std::size_t max_pending = 65536) {
  n::MemoryOptions options{std::move(broker), inline_delivery, max_pending};
  options.acknowledgements = true;
  options.ack_wait = ack_wait;
  options.max_deliveries = max_deliveries;
  auto t = n::make_memory_transport(options);
  t->start();
  return t;
}

n::Message with_id(std::string subject, std::string body, std::string id) {
  return n::Message{std::move(subject), std::move(body), {}, std::move(id)};
}

std::uint64_t counter(const n::Transport& t, const char* name) { return t.health()[name].get<std::uint64_t>(); }

// Room for a wrong (extra or early) delivery to show up before a test checks that it did not.
constexpr auto kQuiet = 300ms;

}  // namespace

TEST(TransportMemoryAcks, OffByDefaultOnlyWhenAskedWithItsCapabilities) {
  auto plain = memory(fresh_broker(), true);
  EXPECT_FALSE(plain->capabilities().acknowledgements);
  EXPECT_FALSE(plain->capabilities().nak_may_be_overtaken);
  EXPECT_FALSE(plain->health().contains("unsettled"));
  bool had_settle = true;
  plain->subscribe("a", "", [&](n::Delivery&& d) { had_settle = static_cast<bool>(d.settle) || static_cast<bool>(d.in_progress); });
  publish1(*plain, msg("a"));
  EXPECT_FALSE(had_settle);

  auto t = acking(fresh_broker(), true);
  const auto caps = t->capabilities();
  EXPECT_TRUE(caps.acknowledgements);
  EXPECT_TRUE(caps.nak_may_be_overtaken);
  EXPECT_TRUE(caps.ordered);
  EXPECT_TRUE(caps.consumer_groups);
  EXPECT_FALSE(caps.persistent);
  EXPECT_FALSE(caps.durable_consumers);
  EXPECT_FALSE(caps.start_positions);
  EXPECT_FALSE(caps.ordered_delivery_option);
  EXPECT_EQ(caps.dedupe_window.count(), 0);
  const auto h = t->health();
  EXPECT_EQ(h["acknowledgements"], true);
  EXPECT_EQ(h["ack_wait_ms"], 30000);
  for (const char* key : {"unsettled", "acked", "naked", "terminated", "in_progress", "redelivered", "expired",
                          "max_deliveries_reached", "unsettled_discarded", "stale_settlements"}) {
    EXPECT_EQ(h[key], 0) << key;
  }
  // ack_wait and max_deliveries are accepted now; the durable options still are not.
  n::DeliveryOptions options;
  options.ack_wait = 5s;
  options.max_deliveries = 3;
  EXPECT_NO_THROW(t->subscribe("a", options, [](n::Delivery&&) {}));
  n::DeliveryOptions durable;
  durable.durable = "d";
  EXPECT_NE(error_of([&] { t->subscribe("a", durable, [](n::Delivery&&) {}); }).find("durable"), std::string::npos);
}

// nak_after(d): the message comes back no sooner than d later, with redelivery 1 and the same id,
// in both modes; then an ack ends it.
TEST(TransportMemoryAcks, NakAfterRedeliversNoSoonerThanTheDelay) {
  for (const bool inline_delivery : {false, true}) {
    SCOPED_TRACE(inline_delivery ? "inline" : "queued");
    AckInbox inbox([](const Got& got, std::size_t) -> std::optional<n::Settlement> {
      if (got.redelivery == 0) return n::Settlement::nak_after(150ms);
      return n::Settle::ack;
    });
    auto t = acking(fresh_broker(), inline_delivery);
    t->subscribe("a.>", "", inbox.handler());
    ASSERT_EQ(publish1(*t, with_id("a.b", "x", "id-1")).published, 1u);
    ASSERT_TRUE(inbox.wait_for(2));
    const auto got = inbox.got();
    EXPECT_EQ(got[0].redelivery, 0u);
    EXPECT_EQ(got[1].redelivery, 1u);
    EXPECT_EQ(got[1].id, "id-1");
    EXPECT_EQ(got[1].body, "x");
    EXPECT_GE(got[1].at - got[0].at, 150ms);
    std::this_thread::sleep_for(kQuiet);
    EXPECT_EQ(inbox.size(), 2u);
    EXPECT_TRUE(eventually([&] { return counter(*t, "acked") == 1; }));
    const auto h = t->health();
    EXPECT_EQ(h["naked"], 1);
    EXPECT_EQ(h["redelivered"], 1);
    EXPECT_EQ(h["expired"], 0);
    EXPECT_EQ(h["unsettled"], 0);
    EXPECT_EQ(h["delivered"], 2);
  }
}

// A nak without a delay redelivers promptly (no ack wait in between: the ack wait here is long).
TEST(TransportMemoryAcks, NakWithoutDelayRedeliversWithoutWaitingForTheAckWait) {
  AckInbox inbox([](const Got& got, std::size_t) -> std::optional<n::Settlement> {
    return got.redelivery < 2 ? n::Settlement(n::Settle::nak) : n::Settlement(n::Settle::ack);
  });
  auto t = acking(fresh_broker(), false, 1h);
  t->subscribe("a", "", inbox.handler());
  publish1(*t, with_id("a", "x", "id-1"));
  ASSERT_TRUE(inbox.wait_for(3));
  const auto got = inbox.got();
  EXPECT_EQ(got[2].redelivery, 2u);
  EXPECT_TRUE(eventually([&] { return counter(*t, "acked") == 1; }));
}

// An unsettled delivery comes back after its ack wait (DeliveryOptions::ack_wait here), counted
// as expired; in queued mode on the subscription's delivery thread, in inline mode on the timer
// thread.
TEST(TransportMemoryAcks, AnUnsettledDeliveryIsRedeliveredAfterItsAckWait) {
  for (const bool inline_delivery : {false, true}) {
    SCOPED_TRACE(inline_delivery ? "inline" : "queued");
    AckInbox inbox([](const Got& got, std::size_t) -> std::optional<n::Settlement> {
      if (got.redelivery == 0) return std::nullopt;  // held: never settled
      return n::Settle::ack;
    });
    auto t = acking(fresh_broker(), inline_delivery);
    n::DeliveryOptions options;
    options.ack_wait = 120ms;
    t->subscribe("a", options, inbox.handler());
    const auto published = Clock::now();  // the ack wait starts later, when the handler is called
    publish1(*t, with_id("a", "x", "id-1"));
    ASSERT_TRUE(inbox.wait_for(2));
    const auto got = inbox.got();
    EXPECT_EQ(got[1].redelivery, 1u);
    EXPECT_EQ(got[1].id, "id-1");
    EXPECT_GE(got[1].at - published, 120ms);
    if (inline_delivery) {
      EXPECT_EQ(got[0].thread, std::this_thread::get_id());
      EXPECT_EQ(got[1].thread_name, "ntf-memory-acks");
    } else {
      EXPECT_EQ(got[1].thread, got[0].thread) << "the subscription's delivery thread";
    }
    EXPECT_TRUE(eventually([&] { return counter(*t, "acked") == 1; }));
    EXPECT_EQ(counter(*t, "expired"), 1u);
    EXPECT_EQ(counter(*t, "redelivered"), 1u);
    // The first delivery's settle is stale now: harmless, counted.
    inbox.settle_of(0)(n::Settle::ack);
    EXPECT_EQ(counter(*t, "stale_settlements"), 1u);
    EXPECT_EQ(counter(*t, "unsettled"), 0u);
  }
}

// in_progress() restarts the ack wait: the redelivery comes no sooner than ack_wait after the last
// call.
TEST(TransportMemoryAcks, InProgressRestartsTheAckWait) {
  AckInbox inbox([](const Got& got, std::size_t) -> std::optional<n::Settlement> {
    if (got.redelivery == 0) return std::nullopt;
    return n::Settle::ack;
  });
  auto t = acking(fresh_broker(), false, 400ms);
  t->subscribe("a", "", inbox.handler());
  publish1(*t, with_id("a", "x", "id-1"));
  ASSERT_TRUE(inbox.wait_for(1));
  Clock::time_point last;
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(50ms);
    last = Clock::now();
    inbox.in_progress_of(0)();
  }
  ASSERT_TRUE(inbox.wait_for(2));
  const auto got = inbox.got();
  EXPECT_GE(got[1].at - last, 400ms);
  EXPECT_EQ(got[1].redelivery, 1u);
  EXPECT_EQ(counter(*t, "in_progress"), 4u);
  // Once redelivered, in_progress of the old delivery is stale.
  inbox.in_progress_of(0)();
  EXPECT_EQ(counter(*t, "stale_settlements"), 1u);
}

// max_deliveries bounds every delivery, the first included: after the last is nak'd (or its ack
// wait ends) the message is dropped and counted, never redelivered again.
TEST(TransportMemoryAcks, MaxDeliveriesDropsTheMessageAndCountsIt) {
  {
    SCOPED_TRACE("DeliveryOptions::max_deliveries, nak");
    AckInbox inbox([](const Got&, std::size_t) -> std::optional<n::Settlement> { return n::Settle::nak; });
    auto t = acking(fresh_broker(), false);
    n::DeliveryOptions options;
    options.max_deliveries = 3;
    t->subscribe("a", options, inbox.handler());
    publish1(*t, with_id("a", "x", "id-1"));
    ASSERT_TRUE(eventually([&] { return counter(*t, "max_deliveries_reached") == 1; }));
    std::this_thread::sleep_for(kQuiet);
    const auto got = inbox.got();
    ASSERT_EQ(got.size(), 3u);
    for (std::uint32_t i = 0; i < 3; ++i) EXPECT_EQ(got[i].redelivery, i);
    EXPECT_EQ(counter(*t, "unsettled"), 0u);
    EXPECT_EQ(counter(*t, "naked"), 3u);
  }
  {
    SCOPED_TRACE("MemoryOptions::max_deliveries, ack wait");
    AckInbox inbox;  // holds every delivery
    auto t = acking(fresh_broker(), true, 50ms, 2);
    t->subscribe("a", "", inbox.handler());
    publish1(*t, with_id("a", "x", "id-1"));
    ASSERT_TRUE(eventually([&] { return counter(*t, "max_deliveries_reached") == 1; }));
    std::this_thread::sleep_for(kQuiet);
    EXPECT_EQ(inbox.size(), 2u);
    EXPECT_EQ(counter(*t, "expired"), 2u);
    EXPECT_EQ(counter(*t, "unsettled"), 0u);
    // Settling a dropped delivery is harmless.
    inbox.settle_of(1)(n::Settle::ack);
    EXPECT_EQ(counter(*t, "stale_settlements"), 1u);
  }
}

// term ends a delivery: never redelivered, even past the ack wait.
TEST(TransportMemoryAcks, TermEndsTheDelivery) {
  AckInbox inbox([](const Got&, std::size_t) -> std::optional<n::Settlement> { return n::Settle::term; });
  auto t = acking(fresh_broker(), false, 50ms);
  t->subscribe("a", "", inbox.handler());
  publish1(*t, with_id("a", "x", "id-1"));
  ASSERT_TRUE(inbox.wait_for(1));
  std::this_thread::sleep_for(kQuiet);
  EXPECT_EQ(inbox.size(), 1u);
  EXPECT_EQ(counter(*t, "terminated"), 1u);
  EXPECT_EQ(counter(*t, "unsettled"), 0u);
  EXPECT_EQ(counter(*t, "expired"), 0u);
}

// In a consumer group a redelivery goes to one member (here the next in turn: the other one);
// another group and a plain subscription keep their own single copy. A member that unsubscribes
// with an unsettled delivery leaves it to the group: it comes back to the other member after its
// ack wait.
TEST(TransportMemoryAcks, GroupRedeliveryGoesToOneMember) {
  for (const bool inline_delivery : {false, true}) {
    SCOPED_TRACE(inline_delivery ? "inline" : "queued");
    const auto broker = fresh_broker();
    std::atomic<int> naks{0};
    const auto nak_first = [&](const Got& got, std::size_t) -> std::optional<n::Settlement> {
      if (got.redelivery == 0 && got.body == "nak") {
        naks.fetch_add(1);
        return n::Settle::nak;
      }
      if (got.body == "hold" && got.redelivery == 0) return std::nullopt;
      return n::Settle::ack;
    };
    AckInbox a(nak_first);
    AckInbox b(nak_first);
    const auto ack_all = [](const Got&, std::size_t) -> std::optional<n::Settlement> { return n::Settle::ack; };
    AckInbox other(ack_all);
    AckInbox plain(ack_all);
    auto ta = acking(broker, inline_delivery, 150ms);
    auto tb = acking(broker, inline_delivery, 150ms);
    const auto id_a = ta->subscribe("g.>", "workers", a.handler());
    tb->subscribe("g.>", "workers", b.handler());
    tb->subscribe("g.>", "others", other.handler());
    tb->subscribe("g.>", "", plain.handler());
    publish1(*ta, with_id("g.x", "nak", "id-1"));  // to a (first in turn), nak'd, then to b
    ASSERT_TRUE(b.wait_for(1));
    ASSERT_TRUE(other.wait_for(1));
    ASSERT_TRUE(plain.wait_for(1));
    std::this_thread::sleep_for(kQuiet);
    ASSERT_EQ(a.size(), 1u);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(a.got()[0].redelivery, 0u);
    EXPECT_EQ(b.got()[0].redelivery, 1u);
    EXPECT_EQ(b.got()[0].id, "id-1");
    EXPECT_EQ(other.size(), 1u);
    EXPECT_EQ(other.got()[0].redelivery, 0u);
    EXPECT_EQ(plain.size(), 1u);
    EXPECT_EQ(naks.load(), 1);

    // The next message goes to a (round robin), which holds it and leaves the group.
    const auto published = Clock::now();  // the ack wait starts later, when a gets it
    publish1(*ta, with_id("g.x", "hold", "id-2"));
    ASSERT_TRUE(a.wait_for(2));
    EXPECT_EQ(a.got()[1].id, "id-2");
    ta->unsubscribe(id_a);
    ASSERT_TRUE(b.wait_for(2));
    EXPECT_EQ(b.got()[1].id, "id-2");
    EXPECT_EQ(b.got()[1].redelivery, 1u);
    EXPECT_GE(b.got()[1].at - published, 150ms);  // its ack wait ran out first
    // Settling on the member that left is harmless (stale: b got it since).
    a.settle_of(1)(n::Settle::ack);
    EXPECT_EQ(counter(*ta, "stale_settlements"), 1u);
    EXPECT_TRUE(eventually([&] { return counter(*tb, "unsettled") == 0; }));
  }
}

// Unsettled deliveries count against max_pending: holding max_pending of them refuses the next
// publish (transient); an ack makes room.
TEST(TransportMemoryAcks, UnsettledDeliveriesCountAgainstMaxPending) {
  AckInbox inbox;  // holds every delivery
  auto t = acking(fresh_broker(), true, 30s, 0, 2);
  t->subscribe("a", "", inbox.handler());
  ASSERT_EQ(publish1(*t, msg("a", "1")).published, 1u);
  ASSERT_EQ(publish1(*t, msg("a", "2")).published, 1u);
  const auto refused = publish1(*t, msg("a", "3"));
  EXPECT_EQ(refused.published, 0u);
  EXPECT_TRUE(refused.transient);
  EXPECT_NE(refused.error.find("max_pending=2"), std::string::npos) << refused.error;
  EXPECT_EQ(counter(*t, "unsettled"), 2u);
  inbox.settle_of(0)(n::Settle::ack);
  EXPECT_EQ(publish1(*t, msg("a", "3")).published, 1u);
  EXPECT_EQ(inbox.size(), 3u);
}

// Settling twice, from many threads at once, after unsubscribe, after stop and after the
// transport is gone: harmless. stop() discards what is unsettled and counts it.
TEST(TransportMemoryAcks, SettlingTwiceFromAnyThreadAndAfterStopIsHarmless) {
  AckInbox inbox;  // holds every delivery
  auto t = acking(fresh_broker(), false);
  const auto id = t->subscribe("a", "", inbox.handler());
  for (int i = 0; i < 4; ++i) publish1(*t, with_id("a", std::to_string(i), "id-" + std::to_string(i)));
  ASSERT_TRUE(inbox.wait_for(4));
  inbox.settle_of(0)(n::Settle::ack);
  inbox.settle_of(0)(n::Settle::nak);  // a second settle: stale
  {
    std::vector<std::thread> threads;  // one delivery settled by 8 threads at once: one wins
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&, i] { inbox.settle_of(1)(i % 2 == 0 ? n::Settlement(n::Settle::ack) : n::Settlement(n::Settle::term)); });
    }
    for (auto& thread : threads) thread.join();
  }
  EXPECT_EQ(counter(*t, "acked") + counter(*t, "terminated"), 2u);
  EXPECT_EQ(counter(*t, "stale_settlements"), 8u);
  // A plain subscription's unsettled deliveries go with it.
  t->unsubscribe(id);
  EXPECT_EQ(counter(*t, "unsettled_discarded"), 2u);
  EXPECT_EQ(counter(*t, "unsettled"), 0u);
  inbox.settle_of(2)(n::Settle::ack);
  inbox.in_progress_of(3)();
  EXPECT_EQ(counter(*t, "stale_settlements"), 10u);
  EXPECT_EQ(inbox.size(), 4u);

  // Held at stop: discarded and counted; settling afterwards (and once the transport is gone) is
  // harmless.
  AckInbox held;
  auto u = acking(fresh_broker(), true);
  u->subscribe("a", "", held.handler());
  publish1(*u, msg("a", "1"));
  publish1(*u, msg("a", "2"));
  u->stop(in(kWait));
  EXPECT_EQ(counter(*u, "unsettled_discarded"), 2u);
  EXPECT_EQ(counter(*u, "unsettled"), 0u);
  held.settle_of(0)(n::Settlement::nak_after(1ms));
  held.in_progress_of(1)();
  EXPECT_EQ(counter(*u, "stale_settlements"), 2u);
  u.reset();
  held.settle_of(1)(n::Settle::ack);
  EXPECT_EQ(held.size(), 2u);
}

// The queued delivery thread and stop() within a deadline: a delivery nak'd during stop is not
// redelivered after it; stop returns.
TEST(TransportMemoryAcks, StopWhileRedeliveriesAreDue) {
  AckInbox inbox([](const Got&, std::size_t) -> std::optional<n::Settlement> { return n::Settlement::nak_after(1ms); });
  auto t = acking(fresh_broker(), false, 10ms);
  t->subscribe("a", "", inbox.handler());
  for (int i = 0; i < 20; ++i) publish1(*t, msg("a", std::to_string(i)));
  ASSERT_TRUE(inbox.wait_for(60));
  t->stop(in(kWait));
  const auto after_stop = inbox.size();
  std::this_thread::sleep_for(kQuiet);
  EXPECT_EQ(inbox.size(), after_stop);
  EXPECT_EQ(counter(*t, "unsettled"), 0u);
}

TEST(TransportMemoryAcks, UrlAndOptionKeys) {
  auto o = n::memory_options_from_config({"memory://x?acknowledgements=true&ack_wait_ms=250&max_deliveries=4", {}});
  EXPECT_TRUE(o.acknowledgements);
  EXPECT_EQ(o.ack_wait, 250ms);
  EXPECT_EQ(o.max_deliveries, 4u);
  o = n::memory_options_from_config({"memory://x", {{"acknowledgements", true}, {"ack_wait_ms", 7}, {"max_deliveries", 0}}});
  EXPECT_TRUE(o.acknowledgements);
  EXPECT_EQ(o.ack_wait, 7ms);
  EXPECT_EQ(o.max_deliveries, 0u);
  o = n::memory_options_from_config({"memory://x?acknowledgements=false", {{"acknowledgements", true}}});
  EXPECT_FALSE(o.acknowledgements);  // the URL wins
  o = n::memory_options_from_config({"memory://x", {}});
  EXPECT_FALSE(o.acknowledgements);
  EXPECT_EQ(o.ack_wait, 30s);
  EXPECT_EQ(o.max_deliveries, 0u);

  auto t = n::make_transport({"memory://x?acknowledgements=true&ack_wait_ms=250&max_deliveries=4", {}});
  EXPECT_TRUE(t->capabilities().acknowledgements);
  EXPECT_EQ(t->health()["ack_wait_ms"], 250);
  EXPECT_EQ(t->health()["max_deliveries"], 4);

  const auto names = [](const n::TransportConfig& config, const std::string& key) {
    const std::string err = error_of([&] { n::make_transport(config); });
    EXPECT_NE(err.find("[notifications.transport]"), std::string::npos) << err;
    EXPECT_NE(err.find("\"" + key + "\""), std::string::npos) << err;
  };
  names({"memory://x?acknowledgements=yes", {}}, "acknowledgements");
  names({"memory://x?acknowledgements=", {}}, "acknowledgements");
  names({"memory://x", {{"acknowledgements", "true"}}}, "acknowledgements");
  names({"memory://x", {{"acknowledgements", 1}}}, "acknowledgements");
  names({"memory://x?ack_wait_ms=0", {}}, "ack_wait_ms");
  names({"memory://x?ack_wait_ms=1s", {}}, "ack_wait_ms");
  names({"memory://x", {{"ack_wait_ms", 0}}}, "ack_wait_ms");
  names({"memory://x", {{"ack_wait_ms", "250"}}}, "ack_wait_ms");
  names({"memory://x?max_deliveries=-1", {}}, "max_deliveries");
  names({"memory://x?max_deliveries=99999999999", {}}, "max_deliveries");
  names({"memory://x", {{"max_deliveries", -1}}}, "max_deliveries");
  names({"memory://x", {{"max_deliveries", 1.5}}}, "max_deliveries");
  auto err = error_of([] { n::make_memory_transport({.broker = "x", .acknowledgements = true, .ack_wait = 0ms}); });
  EXPECT_NE(err.find("ack_wait"), std::string::npos) << err;
}

// Fork with acknowledgements (notifications/fork.hpp): the timer thread is parked and restarted.
// The parent keeps what was unsettled at the fork and redelivers it when its ack wait ends; the
// child discards it (counted) and settles its own deliveries.
TEST(TransportMemoryAcks, ForkLeavesTheUnsettledToTheParent) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  GTEST_SKIP() << "ASan's allocator is not fork-safe (as in tests/process/test_fork_transports.cpp)";
#endif
  AckInbox inbox([](const Got& got, std::size_t) -> std::optional<n::Settlement> {
    if (got.body == "held" && got.redelivery == 0) return std::nullopt;
    return n::Settle::ack;
  });
  auto t = acking(fresh_broker(), false, 300ms);
  t->subscribe("a", "", inbox.handler());
  ASSERT_EQ(publish1(*t, msg("a", "held")).published, 1u);
  ASSERT_TRUE(inbox.wait_for(1));
  n::prepare_fork();
  const pid_t pid = ::fork();
  n::after_fork();
  if (pid == 0) {
    // The child reports by its exit code which check failed.
    if (t->health()["unsettled_discarded"] != 1 || t->health()["unsettled"] != 0) _exit(10);
    if (publish1(*t, msg("a", "child")).published != 1) _exit(11);
    if (!inbox.wait_for(2) || inbox.got()[1].body != "child") _exit(12);
    std::this_thread::sleep_for(500ms);  // past the held delivery's ack wait
    if (inbox.size() != 2) _exit(13);
    if (t->health()["acked"] != 1) _exit(14);
    t->stop(in(kWait));
    _exit(0);
  }
  ASSERT_GT(pid, 0) << "fork failed";
  ASSERT_TRUE(inbox.wait_for(2));
  const auto got = inbox.got();
  EXPECT_EQ(got[1].body, "held");
  EXPECT_EQ(got[1].redelivery, 1u);
  EXPECT_TRUE(eventually([&] { return counter(*t, "acked") == 1; }));
  EXPECT_EQ(counter(*t, "unsettled_discarded"), 0u);
  const auto r = test_support::wait_for_child(pid, 20s);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "10: unsettled not discarded, 11: publish refused, 12: not delivered, "
                               "13: the parent's delivery redelivered in the child, 14: not acked";
  t->stop(in(kWait));
}
