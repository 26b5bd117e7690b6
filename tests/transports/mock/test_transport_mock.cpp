// The mock transport: loopback delivery between mocks, records, every injected fault, the wait
// helpers and the mock:// factory. Every wait is bounded and fails the test when it passes.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "notifications/transport.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
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

constexpr auto kWait = 20s;

n::Message msg(std::string subject, std::string body = "") { return n::Message{std::move(subject), std::move(body), {}}; }

class Collector {
 public:
  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) {
      {
        std::lock_guard lock(mutex_);
        bodies_.push_back(d.message.body);
        last_thread_ = std::this_thread::get_id();
      }
      changed_.notify_all();
    };
  }
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return bodies_.size() >= count; });
  }
  std::vector<std::string> bodies() const {
    std::lock_guard lock(mutex_);
    return bodies_;
  }
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return bodies_.size();
  }
  std::thread::id last_thread() const {
    std::lock_guard lock(mutex_);
    return last_thread_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> bodies_;
  std::thread::id last_thread_;
};

std::string fresh_broker() { return test_support::fresh_name("m"); }

std::shared_ptr<n::MockTransport> mock(const std::string& broker, bool inline_delivery = true, std::size_t max_pending = 65536) {
  n::MockOptions options;
  options.broker = broker;
  options.inline_delivery = inline_delivery;
  options.max_pending = max_pending;
  auto t = std::make_shared<n::MockTransport>(options);
  t->start();
  return t;
}

}  // namespace

// ---- delivery ----------------------------------------------------------------------------------

TEST(TransportMockDelivery, MocksOnOneBrokerExchangeMessagesInlineByDefault) {
  const auto broker = fresh_broker();
  Collector on_b;
  auto a = mock(broker);
  auto b = mock(broker);
  b->subscribe("orders.*", "", on_b.handler());
  const std::vector<n::Message> batch{msg("orders.created", "1"), msg("users.created", "2"), msg("orders.paid", "3")};
  EXPECT_EQ(a->publish(batch).published, 3u);
  EXPECT_EQ(on_b.bodies(), (std::vector<std::string>{"1", "3"}));  // inline: no wait needed
  EXPECT_EQ(on_b.last_thread(), std::this_thread::get_id());
  EXPECT_EQ(b->delivered_count(), 2u);
  EXPECT_EQ(a->kind(), "mock");
  EXPECT_EQ(a->health()["kind"], "mock");
  EXPECT_EQ(a->health()["mode"], "inline");
}

TEST(TransportMockDelivery, QueuedOption) {
  const auto broker = fresh_broker();
  Collector c;
  auto a = mock(broker, false);
  a->subscribe(">", "", c.handler());
  const std::vector<n::Message> batch(50, msg("x"));
  EXPECT_EQ(a->publish(batch).published, 50u);
  ASSERT_TRUE(a->flush(in(kWait)));
  EXPECT_EQ(c.size(), 50u);
  EXPECT_NE(c.last_thread(), std::this_thread::get_id());
  EXPECT_TRUE(a->wait_for_delivered(50, 0ms));
}

TEST(TransportMockDelivery, MockBrokersAreSeparateFromMemoryBrokersAndFromEachOther) {
  const auto broker = fresh_broker();
  Collector on_mock, on_other, on_memory;
  auto m = mock(broker);
  auto other = mock(broker + "-other");
  auto mem = n::make_memory_transport({broker, true});
  mem->start();
  m->subscribe(">", "", on_mock.handler());
  other->subscribe(">", "", on_other.handler());
  mem->subscribe(">", "", on_memory.handler());
  publish1(*m, msg("x", "mock"));
  publish1(*mem, msg("x", "memory"));
  EXPECT_EQ(on_mock.bodies(), (std::vector<std::string>{"mock"}));
  EXPECT_EQ(on_memory.bodies(), (std::vector<std::string>{"memory"}));
  EXPECT_EQ(on_other.size(), 0u);
}

TEST(TransportMockDelivery, GroupsAsTheMemoryTransport) {
  const auto broker = fresh_broker();
  Collector g1, g2;
  auto a = mock(broker);
  auto b = mock(broker);
  a->subscribe("w.*", "workers", g1.handler());
  b->subscribe("w.*", "workers", g2.handler());
  const std::vector<n::Message> batch{msg("w.1", "1"), msg("w.1", "2"), msg("w.1", "3"), msg("w.1", "4")};
  a->publish(batch);
  EXPECT_EQ(g1.bodies(), (std::vector<std::string>{"1", "3"}));
  EXPECT_EQ(g2.bodies(), (std::vector<std::string>{"2", "4"}));
}

TEST(TransportMockDelivery, CapabilitiesAreConfigurable) {
  auto defaults = std::make_shared<n::MockTransport>();
  EXPECT_TRUE(defaults->capabilities().ordered);
  EXPECT_TRUE(defaults->capabilities().consumer_groups);
  EXPECT_FALSE(defaults->capabilities().persistent);
  n::MockOptions options;
  options.capabilities.persistent = true;
  options.capabilities.acknowledgements = true;
  options.capabilities.ordered = false;
  auto custom = std::make_shared<n::MockTransport>(options);
  EXPECT_TRUE(custom->capabilities().persistent);
  EXPECT_TRUE(custom->capabilities().acknowledgements);
  EXPECT_FALSE(custom->capabilities().ordered);
}

// ---- records -----------------------------------------------------------------------------------

TEST(TransportMockRecords, PublishCallsBatchSizesMessagesAndSubscriptions) {
  auto t = mock(fresh_broker());
  const std::vector<n::Message> two{msg("a", "1"), msg("b", "2")};
  t->publish(two);
  publish1(*t, msg("c", "3"));
  t->publish({});  // an empty batch does not reach the mock
  EXPECT_EQ(t->publish_calls(), 2u);
  EXPECT_EQ(t->batch_sizes(), (std::vector<std::size_t>{2, 1}));
  ASSERT_EQ(t->published_count(), 3u);
  EXPECT_EQ(t->published()[2].subject, "c");
  EXPECT_EQ(t->published()[2].body, "3");

  const auto id1 = t->subscribe("a.*", "", [](n::Delivery&&) {});
  const auto id2 = t->subscribe("b.>", "g", [](n::Delivery&&) {});
  EXPECT_EQ(t->active_subscriptions(), 2u);
  t->unsubscribe(id1);
  const auto subs = t->subscriptions();
  ASSERT_EQ(subs.size(), 2u);
  EXPECT_EQ(subs[0].id, id1);
  EXPECT_EQ(subs[0].pattern, "a.*");
  EXPECT_FALSE(subs[0].active);
  EXPECT_EQ(subs[1].id, id2);
  EXPECT_EQ(subs[1].group, "g");
  EXPECT_TRUE(subs[1].active);
  EXPECT_EQ(t->unsubscribe_calls(), 1u);
  EXPECT_EQ(t->active_subscriptions(), 1u);

  t->clear_records();
  EXPECT_EQ(t->publish_calls(), 0u);
  EXPECT_TRUE(t->published().empty());
  EXPECT_TRUE(t->subscriptions().empty());
  EXPECT_EQ(t->health()["publish_calls"], 2);  // health counters are not records

  t->stop(in(kWait));
  EXPECT_EQ(t->publish_calls(), 0u);  // refused by the base: never reaches the mock
}

TEST(TransportMockRecords, StopMarksSubscriptionsInactive) {
  auto t = mock(fresh_broker());
  t->subscribe("a", "", [](n::Delivery&&) {});
  t->stop(in(kWait));
  EXPECT_FALSE(t->subscriptions().at(0).active);
  EXPECT_EQ(t->active_subscriptions(), 0u);
}

// ---- faults ------------------------------------------------------------------------------------

TEST(TransportMockFaults, FailNextPublishesFailsWholeBatches) {
  Collector c;
  auto t = mock(fresh_broker());
  t->subscribe(">", "", c.handler());
  t->fail_next_publishes(2);
  const std::vector<n::Message> batch{msg("a"), msg("b")};
  for (int i = 0; i < 2; ++i) {
    const auto r = t->publish(batch);
    EXPECT_EQ(r.published, 0u);
    EXPECT_TRUE(r.transient);
    EXPECT_EQ(r.error, "mock: injected publish failure");
  }
  EXPECT_EQ(t->publish(batch).published, 2u);
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(t->publish_calls(), 3u);

  t->fail_next_publishes(1, false);
  const auto r = t->publish(batch);
  EXPECT_EQ(r.published, 0u);
  EXPECT_FALSE(r.transient);
  EXPECT_EQ(t->health()["failed_by_fault"], 3);
  EXPECT_EQ(t->published_count(), 2u);
}

TEST(TransportMockFaults, DisconnectRefusesPublishesAndHoldsDeliveriesUntilReconnect) {
  for (const bool inline_delivery : {true, false}) {
    const auto broker = fresh_broker();
    Collector c;
    auto pub = mock(broker, inline_delivery);
    auto sub = mock(broker, inline_delivery);
    sub->subscribe("s.>", "", c.handler());  // one subscribe call for the whole test
    sub->disconnect();
    EXPECT_FALSE(sub->connected());
    const auto refused = publish1(*sub, msg("s.own"));
    EXPECT_EQ(refused.published, 0u);
    EXPECT_TRUE(refused.transient);
    EXPECT_EQ(refused.error, "mock: disconnected");

    const std::vector<n::Message> batch{msg("s.1", "1"), msg("s.2", "2"), msg("s.1", "3")};
    EXPECT_EQ(pub->publish(batch).published, 3u);  // the publisher is connected
    EXPECT_FALSE(pub->flush(in(20ms)));             // held, not handed over
    EXPECT_EQ(c.size(), 0u);
    EXPECT_EQ(sub->health()["pending"], 3);

    sub->reconnect();
    EXPECT_TRUE(sub->connected());
    ASSERT_TRUE(c.wait_for(3));
    EXPECT_EQ(c.bodies(), (std::vector<std::string>{"1", "2", "3"}));
    EXPECT_EQ(sub->subscriptions().size(), 1u);  // no new subscribe
    EXPECT_TRUE(pub->flush(in(kWait)));
    EXPECT_EQ(publish1(*sub, msg("s.own", "4")).published, 1u);
    ASSERT_TRUE(c.wait_for(4));
    EXPECT_EQ(sub->health()["refused_disconnected"], 1);
  }
}

TEST(TransportMockFaults, HeldMessagesAreBoundedByMaxPending) {
  const auto broker = fresh_broker();
  Collector c;
  auto pub = mock(broker, true);
  auto sub = mock(broker, true, 2);
  sub->subscribe(">", "", c.handler());
  sub->disconnect();
  const std::vector<n::Message> batch{msg("x", "1"), msg("x", "2"), msg("x", "3")};
  const auto r = pub->publish(batch);
  EXPECT_EQ(r.published, 2u);
  EXPECT_TRUE(r.transient);
  EXPECT_NE(r.error.find("max_pending=2"), std::string::npos) << r.error;
  sub->reconnect();
  EXPECT_EQ(c.bodies(), (std::vector<std::string>{"1", "2"}));  // inline: on reconnect()'s thread
}

TEST(TransportMockFaults, StopDeliversHeldMessages) {
  const auto broker = fresh_broker();
  Collector c;
  auto pub = mock(broker);
  auto sub = mock(broker);
  sub->subscribe(">", "", c.handler());
  sub->disconnect();
  publish1(*pub, msg("x", "held"));
  sub->stop(in(kWait));
  EXPECT_EQ(c.bodies(), (std::vector<std::string>{"held"}));
}

TEST(TransportMockFaults, LatencyDelaysEachPublishCall) {
  auto t = mock(fresh_broker());
  t->set_latency(30ms);
  const auto start = Clock::now();
  const std::vector<n::Message> batch{msg("a"), msg("b")};
  EXPECT_EQ(t->publish(batch).published, 2u);
  EXPECT_EQ(publish1(*t, msg("c")).published, 1u);
  EXPECT_GE(Clock::now() - start, 60ms);
  t->set_latency(Clock::duration::zero());
}

TEST(TransportMockFaults, DropNextAcceptsButLoses) {
  Collector c;
  auto t = mock(fresh_broker());
  t->subscribe(">", "", c.handler());
  t->drop_next(2);
  const std::vector<n::Message> batch{msg("x", "1"), msg("x", "2"), msg("x", "3"), msg("x", "4"), msg("x", "5")};
  const auto r = t->publish(batch);
  EXPECT_EQ(r.published, 5u);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(c.bodies(), (std::vector<std::string>{"3", "4", "5"}));
  EXPECT_EQ(t->published_count(), 5u);
  EXPECT_EQ(t->dropped_by_fault(), 2u);
  EXPECT_EQ(t->health()["dropped_by_fault"], 2);
  EXPECT_TRUE(t->flush(in(kWait)));
}

TEST(TransportMockFaults, DuplicateNextDeliversTwice) {
  const auto broker = fresh_broker();
  Collector c;
  auto a = mock(broker);
  auto b = mock(broker, false);
  b->subscribe(">", "", c.handler());
  a->duplicate_next(1);
  const std::vector<n::Message> batch{msg("x", "1"), msg("x", "2")};
  EXPECT_EQ(a->publish(batch).published, 2u);
  ASSERT_TRUE(a->flush(in(kWait)));
  EXPECT_EQ(c.bodies(), (std::vector<std::string>{"1", "1", "2"}));
  EXPECT_EQ(a->duplicated_by_fault(), 1u);
  EXPECT_EQ(a->health()["duplicated_by_fault"], 1);
  EXPECT_EQ(a->published_count(), 2u);
}

// redeliver_next: each message is delivered, then delivered again as a transport with
// acknowledgements redelivers: same Message::id, Delivery::redelivery 1.
TEST(TransportMockFaults, RedeliverNextDeliversAgainWithTheSameIdAndACount) {
  const auto broker = fresh_broker();
  auto a = mock(broker);
  auto b = mock(broker, false);
  std::mutex mutex;
  std::vector<std::pair<std::string, std::uint32_t>> got;  // (id, redelivery)
  b->subscribe(">", "", [&](n::Delivery&& d) {
    std::lock_guard lock(mutex);
    got.emplace_back(d.message.id, d.redelivery);
    EXPECT_FALSE(d.settle);  // no acknowledgements: nothing to settle
    EXPECT_FALSE(d.in_progress);
  });
  a->redeliver_next(1);
  const std::vector<n::Message> batch{n::Message{"x", "1", {}, "id-1"}, n::Message{"x", "2", {}, "id-2"}};
  EXPECT_EQ(a->publish(batch).published, 2u);
  ASSERT_TRUE(a->flush(in(kWait)));
  std::lock_guard lock(mutex);
  EXPECT_EQ(got, (std::vector<std::pair<std::string, std::uint32_t>>{{"id-1", 0}, {"id-1", 1}, {"id-2", 0}}));
  EXPECT_EQ(a->redelivered_by_fault(), 1u);
  EXPECT_EQ(a->health()["redelivered_by_fault"], 1);
  EXPECT_EQ(a->published_count(), 2u);
}

// Message::id is carried as the field: what is published is what arrives (and what is recorded).
TEST(TransportMock, MessageIdRoundTrip) {
  const auto broker = fresh_broker();
  auto a = mock(broker);
  std::mutex mutex;
  std::vector<std::string> ids;
  a->subscribe(">", "", [&](n::Delivery&& d) {
    std::lock_guard lock(mutex);
    ids.push_back(d.message.id);
  });
  const std::vector<n::Message> batch{n::Message{"x", "1", {}, "id-1"}, n::Message{"x", "2", {}, ""}};
  EXPECT_EQ(a->publish(batch).published, 2u);
  ASSERT_TRUE(a->flush(in(kWait)));
  std::lock_guard lock(mutex);
  EXPECT_EQ(ids, (std::vector<std::string>{"id-1", ""}));
  EXPECT_EQ(a->published()[0].id, "id-1");
}

// The default mock claims none of the durable capabilities: it refuses their options, naming
// them; a mock claiming them accepts them (and, but for acknowledgements, does not implement
// them, as documented).
TEST(TransportMock, RefusesDeliveryOptionsItsCapabilitiesDoNotCover) {
  auto a = mock(fresh_broker());
  n::DeliveryOptions durable;
  durable.durable = "d";
  EXPECT_NE(error_of([&] { a->subscribe(">", durable, [](n::Delivery&&) {}); }).find("durable"), std::string::npos);
  n::DeliveryOptions ack_wait;
  ack_wait.ack_wait = 5s;
  EXPECT_NE(error_of([&] { a->subscribe(">", ack_wait, [](n::Delivery&&) {}); }).find("ack_wait"), std::string::npos);
  n::DeliveryOptions ordered;
  ordered.ordered = true;
  EXPECT_NE(error_of([&] { a->subscribe(">", ordered, [](n::Delivery&&) {}); }).find("ordered"), std::string::npos);
  EXPECT_EQ(a->active_subscriptions(), 0u);

  n::MockOptions options;
  options.broker = fresh_broker();
  options.capabilities.durable_consumers = true;
  auto claiming = std::make_shared<n::MockTransport>(options);
  claiming->start();
  EXPECT_NO_THROW(claiming->subscribe(">", durable, [](n::Delivery&&) {}));
  EXPECT_NE(error_of([&] { claiming->subscribe(">", ack_wait, [](n::Delivery&&) {}); }).find("ack_wait"),
            std::string::npos);
}

TEST(TransportMockFaults, FailNextStartsThenStarts) {
  auto t = std::make_shared<n::MockTransport>();
  t->fail_next_starts(2);
  EXPECT_NE(error_of([&] { t->start(); }).find("mock: injected start failure"), std::string::npos);
  EXPECT_NE(error_of([&] { t->start(); }).find("mock: injected start failure"), std::string::npos);
  EXPECT_EQ(t->state(), n::TransportBase::State::created);
  t->start();
  EXPECT_EQ(t->state(), n::TransportBase::State::started);
}

TEST(TransportMockFaults, FaultsToggledConcurrentlyWithPublishers) {
  // Thread-safety of the fault switches (meaningful under TSan): every publish either succeeds,
  // fails as injected, or fails disconnected, and every accepted, undropped message arrives.
  const auto broker = fresh_broker();
  std::atomic<long> received{0};
  std::atomic<bool> done{false};
  std::atomic<long> accepted{0};
  auto pub = mock(broker, false);
  auto sub = mock(broker, false);
  sub->subscribe(">", "", [&](n::Delivery&&) { received.fetch_add(1); });
  std::vector<std::future<void>> publishers;
  for (int t = 0; t < 2; ++t) {
    publishers.push_back(std::async(std::launch::async, [&] {
      for (int i = 0; i < 2000 / kScale; ++i) {
        const auto r = publish1(*pub, msg("f.x"));
        if (r.published == 1) {
          accepted.fetch_add(1);
        } else {
          EXPECT_TRUE(r.error == "mock: injected publish failure" || r.error == "mock: disconnected") << r.error;
        }
      }
    }));
  }
  auto toggler = std::async(std::launch::async, [&] {
    for (int i = 0; !done.load(); ++i) {
      pub->fail_next_publishes(1);
      pub->drop_next(1);
      pub->duplicate_next(1);
      if (i % 2 == 0) pub->disconnect(); else pub->reconnect();
      (void)pub->health();
      std::this_thread::yield();
    }
    pub->reconnect();
  });
  for (auto& f : publishers) {
    ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
    f.get();
  }
  done = true;
  ASSERT_EQ(toggler.wait_for(kWait), std::future_status::ready);
  ASSERT_TRUE(pub->flush(in(kWait)));
  EXPECT_EQ(static_cast<long>(pub->published_count()), accepted.load());
  EXPECT_EQ(received.load(), accepted.load() - static_cast<long>(pub->dropped_by_fault()) +
                                 static_cast<long>(pub->duplicated_by_fault()));
}

// ---- waits -------------------------------------------------------------------------------------

TEST(TransportMockWaits, WaitForPublishedDeliveredAndSubscriptions) {
  const auto broker = fresh_broker();
  auto a = mock(broker, false);
  auto b = mock(broker, false);
  EXPECT_FALSE(a->wait_for_published(1, 10ms));  // times out, bounded
  EXPECT_FALSE(b->wait_for_subscriptions(1, 10ms));
  auto subscriber = std::async(std::launch::async, [&] { b->subscribe(">", "", [](n::Delivery&&) {}); });
  ASSERT_TRUE(b->wait_for_subscriptions(1, kWait));
  subscriber.get();
  auto publisher = std::async(std::launch::async, [&] {
    for (int i = 0; i < 10; ++i) publish1(*a, msg("x", std::to_string(i)));
  });
  EXPECT_TRUE(a->wait_for_published(10, kWait));
  EXPECT_TRUE(b->wait_for_delivered(10, kWait));
  EXPECT_FALSE(b->wait_for_delivered(11, 10ms));
  publisher.get();
}

// ---- reentrancy --------------------------------------------------------------------------------

TEST(TransportMockReentrancy, HandlerPublishesAndUnsubscribesOnTheSameMock) {
  for (const bool inline_delivery : {true, false}) {
    Collector echoes;
    std::atomic<std::uint64_t> self{0};
    std::promise<void> ready_promise;
    auto ready = ready_promise.get_future().share();
    auto t = mock(fresh_broker(), inline_delivery);
    t->subscribe("echo", "", echoes.handler());
    self = t->subscribe("in", "", [&, ready](n::Delivery&& d) {
      ready.wait_for(kWait);
      publish1(*t, msg("echo", d.message.body));
      t->unsubscribe(self.load());
    });
    ready_promise.set_value();
    publish1(*t, msg("in", "1"));
    ASSERT_TRUE(echoes.wait_for(1));
    ASSERT_TRUE(t->flush(in(kWait)));
    EXPECT_EQ(t->active_subscriptions(), 1u);
    EXPECT_EQ(publish1(*t, msg("in", "2")).published, 1u);
    ASSERT_TRUE(t->flush(in(kWait)));
    EXPECT_EQ(echoes.size(), 1u);
  }
}

// ---- factory -----------------------------------------------------------------------------------

TEST(TransportMockFactory, ByUrl) {
  const auto broker = fresh_broker();
  Collector c;
  auto t = n::make_transport({"mock://" + broker + "?mode=queued&max_pending=9", {}});
  auto* m = dynamic_cast<n::MockTransport*>(t.get());
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->options().broker, broker);
  EXPECT_FALSE(m->options().inline_delivery);
  EXPECT_EQ(m->options().max_pending, 9u);

  auto d = n::make_transport({"mock://", {}});
  auto* dm = dynamic_cast<n::MockTransport*>(d.get());
  ASSERT_NE(dm, nullptr);
  EXPECT_EQ(dm->options().broker, "default");
  EXPECT_TRUE(dm->options().inline_delivery);

  // A URL-made mock and a directly made one on the same broker talk.
  auto direct = mock(broker);
  direct->subscribe(">", "", c.handler());
  t->start();
  publish1(*t, msg("x"));
  ASSERT_TRUE(c.wait_for(1));

  const auto err = error_of([] { n::make_transport({"mock://x?latency=5", {}}); });
  EXPECT_NE(err.find("mock url \"mock://x?latency=5\": unknown query keys \"latency\""), std::string::npos) << err;
  const auto o = n::mock_options_from_config({"mock://y", {{"mode", "queued"}}});
  EXPECT_FALSE(o.inline_delivery);
  EXPECT_EQ(o.broker, "y");
}

// ---- acknowledgements (capabilities.acknowledgements: implemented as memory:// does) ----------

namespace {

// One delivery as an acknowledging handler saw it.
struct Got {
  std::string body;
  std::string id;
  std::uint32_t redelivery = 0;
  Clock::time_point at;
  bool settleable = false;
};

// Records deliveries and settles each at once as `decide` says (nullopt: held, its settle function
// kept for the test). Thread-safety: every member may be called from any thread.
class AckInbox {
 public:
  using Decide = std::function<std::optional<n::Settlement>(const Got& got)>;
  explicit AckInbox(Decide decide = {}) : decide_(std::move(decide)) {}
  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) {
      std::optional<n::Settlement> how;
      std::function<void(n::Settlement)> settle = d.settle;
      {
        std::lock_guard lock(mutex_);
        Got got{d.message.body, d.message.id, d.redelivery, Clock::now(), static_cast<bool>(d.settle) && static_cast<bool>(d.in_progress)};
        if (decide_) how = decide_(got);
        got_.push_back(got);
        settles_.push_back(std::move(d.settle));
      }
      changed_.notify_all();
      if (how && settle) settle(*how);
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
  std::function<void(n::Settlement)> settle_of(std::size_t index) {
    std::lock_guard lock(mutex_);
    return settles_.at(index);
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  Decide decide_;
  std::vector<Got> got_;
  std::vector<std::function<void(n::Settlement)>> settles_;
};

std::shared_ptr<n::MockTransport> acking_mock(const std::string& broker, bool inline_delivery = true,
                                              std::chrono::milliseconds ack_wait = 30s, std::uint32_t max_deliveries = 0) {
  n::MockOptions options;
  options.broker = broker;
  options.inline_delivery = inline_delivery;
  options.capabilities = n::kMemoryAckCapabilities;
  options.ack_wait = ack_wait;
  options.max_deliveries = max_deliveries;
  auto t = std::make_shared<n::MockTransport>(options);
  t->start();
  return t;
}

std::uint64_t counter(const n::Transport& t, const char* name) { return t.health()[name].get<std::uint64_t>(); }

}  // namespace

// nak_after(d): redelivered no sooner than d later, redelivery 1, same id; ack ends it.
TEST(TransportMockAcks, NakAfterRedeliversNoSoonerThanTheDelay) {
  for (const bool inline_delivery : {true, false}) {
    SCOPED_TRACE(inline_delivery ? "inline" : "queued");
    AckInbox inbox([](const Got& got) -> std::optional<n::Settlement> {
      if (got.redelivery == 0) return n::Settlement::nak_after(150ms);
      return n::Settle::ack;
    });
    const auto broker = fresh_broker();
    auto sub = acking_mock(broker, inline_delivery);
    auto pub = acking_mock(broker);
    sub->subscribe("a", "", inbox.handler());
    ASSERT_EQ(publish1(*pub, n::Message{"a", "x", {}, "id-1"}).published, 1u);
    ASSERT_TRUE(inbox.wait_for(2));
    const auto got = inbox.got();
    EXPECT_TRUE(got[0].settleable);
    EXPECT_EQ(got[1].redelivery, 1u);
    EXPECT_EQ(got[1].id, "id-1");
    EXPECT_GE(got[1].at - got[0].at, 150ms);
    ASSERT_TRUE(sub->wait_for_delivered(2, kWait));
    const auto h = sub->health();
    EXPECT_EQ(h["naked"], 1);
    EXPECT_EQ(h["redelivered"], 1);
    EXPECT_EQ(h["connected"], true);  // the mock's own fields stay
  }
}

// Ack wait expiry, then max_deliveries: dropped and counted; term ends a delivery.
TEST(TransportMockAcks, AckWaitMaxDeliveriesAndTerm) {
  AckInbox held;  // holds every delivery
  auto t = acking_mock(fresh_broker(), true, 50ms, 2);
  t->subscribe("a", "", held.handler());
  const auto published = Clock::now();  // the ack wait starts later, when the handler is called
  publish1(*t, n::Message{"a", "x", {}, "id-1"});
  ASSERT_TRUE(held.wait_for(2));
  EXPECT_EQ(held.got()[1].redelivery, 1u);
  EXPECT_GE(held.got()[1].at - published, 50ms);
  const auto deadline = Clock::now() + kWait;
  while (counter(*t, "max_deliveries_reached") == 0 && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(counter(*t, "max_deliveries_reached"), 1u);
  EXPECT_EQ(counter(*t, "expired"), 2u);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(held.got().size(), 2u);

  AckInbox terms([](const Got&) -> std::optional<n::Settlement> { return n::Settle::term; });
  auto u = acking_mock(fresh_broker(), true, 50ms);
  u->subscribe("a", "", terms.handler());
  publish1(*u, n::Message{"a", "x", {}, "id-1"});
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(terms.got().size(), 1u);
  EXPECT_EQ(counter(*u, "terminated"), 1u);
  EXPECT_EQ(counter(*u, "unsettled"), 0u);
}

// The faults still work with acknowledgements: redeliver_next's two deliveries are settled each on
// its own; a disconnected mock holds a due redelivery until reconnect().
TEST(TransportMockAcks, FaultsStillApply) {
  AckInbox inbox([](const Got& got) -> std::optional<n::Settlement> {
    if (got.body == "nak" && got.redelivery == 0) return n::Settle::nak;
    return n::Settle::ack;
  });
  const auto broker = fresh_broker();
  auto t = acking_mock(broker);
  t->subscribe("a", "", inbox.handler());
  t->redeliver_next(1);
  publish1(*t, n::Message{"a", "twice", {}, "id-1"});
  ASSERT_TRUE(inbox.wait_for(2));
  EXPECT_EQ(inbox.got()[1].redelivery, 1u);
  EXPECT_TRUE(inbox.got()[1].settleable);
  EXPECT_EQ(counter(*t, "acked"), 2u);
  EXPECT_EQ(t->redelivered_by_fault(), 1u);

  auto pub = acking_mock(broker);
  t->disconnect();
  publish1(*pub, n::Message{"a", "nak", {}, "id-2"});  // held: t is disconnected
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(inbox.got().size(), 2u);
  t->reconnect();  // delivered (and nak'd) now; the redelivery follows
  ASSERT_TRUE(inbox.wait_for(4));
  EXPECT_EQ(inbox.got()[3].id, "id-2");
  EXPECT_EQ(inbox.got()[3].redelivery, 1u);

  // Stop discards what is unsettled; settling afterwards is harmless.
  AckInbox held;
  auto u = acking_mock(fresh_broker());
  u->subscribe("a", "", held.handler());
  publish1(*u, n::Message{"a", "x", {}, "id-3"});
  u->stop(in(kWait));
  EXPECT_EQ(counter(*u, "unsettled_discarded"), 1u);
  held.settle_of(0)(n::Settle::ack);
  EXPECT_EQ(counter(*u, "stale_settlements"), 1u);
}

TEST(TransportMockAcks, UrlAndOptionKeys) {
  auto o = n::mock_options_from_config({"mock://y?acknowledgements=true&ack_wait_ms=40&max_deliveries=2", {}});
  EXPECT_TRUE(o.capabilities.acknowledgements);
  EXPECT_TRUE(o.capabilities.nak_may_be_overtaken);
  EXPECT_EQ(o.ack_wait, 40ms);
  EXPECT_EQ(o.max_deliveries, 2u);
  o = n::mock_options_from_config({"mock://y", {{"acknowledgements", true}}});
  EXPECT_TRUE(o.capabilities.acknowledgements);
  o = n::mock_options_from_config({"mock://y", {}});
  EXPECT_FALSE(o.capabilities.acknowledgements);
  auto t = n::make_transport({"mock://y?acknowledgements=true", {}});
  EXPECT_TRUE(t->capabilities().acknowledgements);
  EXPECT_EQ(t->health()["acknowledgements"], true);
  for (const auto& bad : std::vector<std::pair<n::TransportConfig, std::string>>{
           {{"mock://y?acknowledgements=1", {}}, "acknowledgements"},
           {{"mock://y", {{"acknowledgements", "yes"}}}, "acknowledgements"},
           {{"mock://y?ack_wait_ms=0", {}}, "ack_wait_ms"},
           {{"mock://y?max_deliveries=x", {}}, "max_deliveries"}}) {
    const auto err = error_of([&] { n::make_transport(bad.first); });
    EXPECT_NE(err.find("\"" + bad.second + "\""), std::string::npos) << err;
  }
}
