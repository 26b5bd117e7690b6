// The Bridge's inbound side against redeliveries (docs/bridge.md, "Redeliveries"; promises I1-I3
// of remote/bridge_inbound.hpp): a redelivered id is delivered once, counted as suppressed and not
// as a drop, loss or sequence gap; the window is bounded by count (oldest forgotten first) and by
// time; suppression runs only on transports that may redeliver. The mock's redeliver_next() fault
// stands in for a durable transport. Every wait is bounded; nothing here asserts speed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "bridge_test_support.hpp"
#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/mock.hpp"
#include "remote/bridge_inbound.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::config_for;
using test_support::counter;
using test_support::unique_broker;
using test_support::wait_until;

namespace {

using Clock = std::chrono::steady_clock;

// A receiving Bridge on a mock that claims acknowledgements (so the Bridge suppresses
// redeliveries), and a raw peer mock on the same broker that publishes envelopes.
struct Receiver {
  explicit Receiver(n::BridgeConfig config = config_for("receiver"), bool acknowledgements = true) {
    n::MockOptions options;
    options.broker = unique_broker("redelivery");
    options.capabilities.acknowledgements = acknowledgements;
    peer = std::make_shared<n::MockTransport>(options);
    transport = std::make_shared<n::MockTransport>(options);
    subscription = notifier.subscribe("order.placed", [this](const n::Event& event) {
      delivered.fetch_add(1);
      (void)event;
    });
    bridge = std::make_unique<n::Bridge>(notifier, transport, config);
    bridge->start();
    peer->start();
  }
  ~Receiver() {
    bridge->shutdown(5s);
    peer->stop(Clock::now() + 5s);
  }

  // An envelope of "order.placed" from a peer, with this id and sequence.
  static n::Message message(const std::string& id, std::uint64_t sequence) {
    n::Envelope envelope;
    envelope.name = "order.placed";
    envelope.producer = "peer";
    envelope.producer_instance = "peer-instance";
    envelope.id = id;
    envelope.time = std::chrono::system_clock::now();
    envelope.sequence = sequence;
    envelope.payload = json::object();
    return n::message_from_envelope(envelope, "test.order.placed");
  }
  void send(const std::string& id, std::uint64_t sequence) {
    ASSERT_EQ(peer->publish(std::vector<n::Message>{message(id, sequence)}).published, 1u);
  }
  // Waits until the bridge handled every delivery the transport handed over.
  bool settled(std::size_t deliveries) {
    return transport->wait_for_delivered(deliveries, 10s) && bridge->wait_delivered(10s);
  }

  n::Notifier notifier;
  std::shared_ptr<n::MockTransport> peer;
  std::shared_ptr<n::MockTransport> transport;
  n::Subscription subscription;
  std::unique_ptr<n::Bridge> bridge;
  std::atomic<int> delivered{0};
};

std::string id(int i) {
  std::string text = std::to_string(i);
  return "00000000-0000-4000-8000-" + std::string(12 - text.size(), '0') + text;
}

// A transport with acknowledgements, driven by the test: deliver() hands a Delivery to the
// subscription, whose settle records the outcome. Thread-safety: as every Transport.
class AckingTransport final : public n::TransportBase {
 public:
  struct Settled {
    n::Settle outcome;
    int listener_calls;  // how many times the listener had run when settle was called
  };
  explicit AckingTransport(const std::atomic<int>& listener_calls) : listener_calls_(listener_calls) {}
  ~AckingTransport() override { stop(Clock::now() + 5s); }

  std::string kind() const override { return "acking"; }
  n::TransportCapabilities capabilities() const override {
    return n::TransportCapabilities{.acknowledgements = true};
  }

  void deliver(n::Message message, std::uint32_t redelivery) {
    n::Delivery delivery;
    delivery.message = std::move(message);
    delivery.redelivery = redelivery;
    delivery.settle = [this](n::Settlement settlement) {
      std::lock_guard lock(mutex_);
      settled_.push_back(Settled{settlement.outcome, listener_calls_.load()});
    };
    n::DeliveryHandler handler;
    {
      std::lock_guard lock(mutex_);
      handler = handler_;
    }
    handler(std::move(delivery));
  }
  std::vector<Settled> settled() const {
    std::lock_guard lock(mutex_);
    return settled_;
  }

 protected:
  void do_start() override {}
  n::PublishResult do_publish(std::span<const n::Message> batch) override { return {batch.size(), true, {}}; }
  void do_subscribe(std::uint64_t, const std::string&, const n::DeliveryOptions&, n::DeliveryHandler handler) override {
    std::lock_guard lock(mutex_);
    handler_ = std::move(handler);
  }
  void do_unsubscribe(std::uint64_t) override {}
  bool do_flush(n::Deadline) override { return true; }
  void do_stop(n::Deadline) override {}
  nlohmann::json do_health() const override { return json::object(); }

 private:
  const std::atomic<int>& listener_calls_;
  mutable std::mutex mutex_;
  n::DeliveryHandler handler_;
  std::vector<Settled> settled_;
};

}  // namespace

// I1 and I2 on a transport with acknowledgements: each delivery is settled once, after the
// listener ran (take, then settle); the redelivery of an id already delivered is acked without
// reaching the listener.
TEST(BridgeRedelivery, BridgePromise9_ASuppressedRedeliveryIsAckedAndEverySettleFollowsHandling) {
  n::Notifier notifier;
  std::atomic<int> calls{0};
  auto subscription = notifier.subscribe("order.placed", [&](const n::Event&) { calls.fetch_add(1); });
  auto transport = std::make_shared<AckingTransport>(calls);
  n::Bridge bridge(notifier, transport, config_for("receiver"));
  bridge.start();
  transport->deliver(Receiver::message(id(1), 1), 0);
  transport->deliver(Receiver::message(id(1), 1), 1);  // redelivered: suppressed
  transport->deliver(Receiver::message(id(2), 2), 0);
  ASSERT_TRUE(bridge.wait_delivered(10s));
  const auto settled = transport->settled();
  ASSERT_EQ(settled.size(), 3u);
  for (const auto& s : settled) EXPECT_EQ(s.outcome, n::Settle::ack);
  EXPECT_EQ(settled[0].listener_calls, 1);  // after the listener saw id 1
  EXPECT_EQ(settled[1].listener_calls, 1);  // the redelivery: acked, not delivered
  EXPECT_EQ(settled[2].listener_calls, 2);
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(counter(bridge.health(), "redeliveries_suppressed"), 1u);
  bridge.shutdown(5s);
}

// I2: a redelivery (same Message::id, Delivery::redelivery 1) is delivered once, counted as
// suppressed, and neither dropped nor lost nor a sequence gap.
TEST(BridgeRedelivery, BridgePromise8_ARedeliveredIdIsDeliveredOnceAndCountedAsSuppressed) {
  Receiver r;
  r.peer->redeliver_next(1);
  r.send(id(1), 1);
  r.send(id(2), 2);
  ASSERT_TRUE(r.settled(3)) << r.bridge->health().dump();
  EXPECT_EQ(r.transport->redelivered_by_fault(), 0u);  // the fault was the peer's
  EXPECT_EQ(r.peer->redelivered_by_fault(), 1u);
  const json health = r.bridge->health();
  EXPECT_EQ(r.delivered.load(), 2);
  EXPECT_EQ(counter(health, "received"), 2u) << health.dump();
  EXPECT_EQ(counter(health, "redeliveries_suppressed"), 1u) << health.dump();
  EXPECT_EQ(counter(health, "lost"), 0u) << health.dump();
  EXPECT_EQ(counter(health, "sequence_resets"), 0u) << health.dump();
  for (const auto& item : health["counters"]["dropped"].items()) EXPECT_EQ(item.value(), 0u) << item.key();
  EXPECT_TRUE(health["redelivery"]["active"].get<bool>());
  EXPECT_EQ(health["redelivery"]["window_ms"], 120'000);  // the default: JetStream's 2 minutes
}

// The window by count: with room for two ids, a third delivered id makes the Bridge forget the
// oldest, which is then delivered again; a remembered one is still suppressed.
TEST(BridgeRedelivery, TheWindowByCountForgetsTheOldestId) {
  n::BridgeConfig config = config_for("receiver");
  config.redelivery.window_count = 2;
  Receiver r(config);
  r.send(id(1), 1);
  r.send(id(2), 2);
  r.send(id(3), 3);
  ASSERT_TRUE(r.settled(3));
  r.send(id(3), 3);  // remembered: suppressed
  ASSERT_TRUE(r.settled(4));
  EXPECT_EQ(counter(r.bridge->health(), "redeliveries_suppressed"), 1u);
  r.send(id(1), 1);  // forgotten: delivered again (an older sequence: no loss counted)
  ASSERT_TRUE(r.settled(5));
  const json health = r.bridge->health();
  EXPECT_EQ(r.delivered.load(), 4);
  EXPECT_EQ(counter(health, "redeliveries_suppressed"), 1u) << health.dump();
  EXPECT_EQ(counter(health, "lost"), 0u) << health.dump();
}

// The window by time, at the unit: an id older than the window is forgotten.
TEST(BridgeRedelivery, DeliveredIdsForgetsIdsOlderThanTheWindow) {
  n::bridge_internal::DeliveredIds ids(100ms, 10);
  const auto start = Clock::now();
  ids.remember("a", start);
  ids.remember("b", start + 60ms);
  EXPECT_TRUE(ids.contains("a", start + 100ms));
  EXPECT_FALSE(ids.contains("a", start + 101ms));
  EXPECT_TRUE(ids.contains("b", start + 101ms));
  EXPECT_EQ(ids.size(), 1u);
}

TEST(BridgeRedelivery, DeliveredIdsByCountForgetsTheOldestFirst) {
  n::bridge_internal::DeliveredIds ids(1h, 2);
  const auto now = Clock::now();
  ids.remember("a", now);
  ids.remember("b", now);
  ids.remember("a", now);  // already remembered: no change
  ids.remember("c", now);
  EXPECT_FALSE(ids.contains("a", now));
  EXPECT_TRUE(ids.contains("b", now));
  EXPECT_TRUE(ids.contains("c", now));
}

// The default window is at least the transport's dedupe window, and never under 2 minutes; a
// configured window is taken as it is.
TEST(BridgeRedelivery, TheDefaultWindowCoversTheTransportsDedupeWindow) {
  using n::bridge_internal::redelivery_window;
  n::TransportCapabilities capabilities;
  EXPECT_EQ(redelivery_window({}, capabilities), 2min);
  capabilities.dedupe_window = 10min;
  EXPECT_EQ(redelivery_window({}, capabilities), 10min);
  capabilities.dedupe_window = 1s;
  EXPECT_EQ(redelivery_window({}, capabilities), 2min);
  n::RedeliveryPolicy policy;
  policy.window = 5s;
  EXPECT_EQ(redelivery_window(policy, capabilities), 5s);
}

// On a transport that never delivers an id twice (no acknowledgements, not persistent) the Bridge
// keeps no ids: a repeated id is delivered again, as before.
TEST(BridgeRedelivery, NoSuppressionOnTransportsThatDoNotRedeliver) {
  Receiver r(config_for("receiver"), false);
  r.peer->redeliver_next(1);
  r.send(id(1), 1);
  ASSERT_TRUE(r.settled(2));
  const json health = r.bridge->health();
  EXPECT_FALSE(health["redelivery"]["active"].get<bool>());
  EXPECT_EQ(r.delivered.load(), 2);
  EXPECT_EQ(counter(health, "redeliveries_suppressed"), 0u);
}

// window_count 0 turns suppression off.
TEST(BridgeRedelivery, AWindowCountOfZeroTurnsSuppressionOff) {
  n::BridgeConfig config = config_for("receiver");
  config.redelivery.window_count = 0;
  Receiver r(config);
  r.peer->redeliver_next(1);
  r.send(id(1), 1);
  ASSERT_TRUE(r.settled(2));
  EXPECT_FALSE(r.bridge->health()["redelivery"]["active"].get<bool>());
  EXPECT_EQ(r.delivered.load(), 2);
}
