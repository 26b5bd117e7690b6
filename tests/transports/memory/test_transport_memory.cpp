// The memory transport and TransportBase's lifecycle. The factory registry's own tests are in
// tests/transport/test_transport_factory.cpp, redaction's in tests/transport/test_redaction.cpp.
// Every wait is bounded and fails the test when the bound passes; nothing sleeps to synchronise.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

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
    t->unsubscribe(self);  // stop() is draining: a no-op, must not deadlock
  });
  const std::vector<n::Message> batch(3, msg("x"));
  ASSERT_EQ(t->publish(batch).published, 3u);
  ASSERT_TRUE(gate.wait_entered());
  auto stopping = std::async(std::launch::async, [&] { t->stop(in(kWait)); });
  ASSERT_TRUE(eventually([&] { return t->health()["state"] == "stopping"; }));
  gate.open();
  ASSERT_EQ(stopping.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(calls.load(), 3);  // drained: unsubscribe during stop discards nothing
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
  t->unsubscribe(id);  // does not wait for the call in progress
  EXPECT_EQ(t->health()["discarded"], 4);
  gate.open();
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
