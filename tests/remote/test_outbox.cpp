// The Outbox contract (notifications/outbox.hpp): each numbered promise against the default
// in-memory outbox, then a Bridge with outboxes of its own: one that records what it is given,
// one that fails between take and settle. Every wait is bounded; nothing asserts speed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/outbox.hpp"
#include "notifications/transports/mock.hpp"
#include "bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Push = n::Outbox::Push;
using Settled = n::Outbox::Settled;

namespace {

n::OutboxEvent item(const std::string& name, std::size_t payload_bytes = 2) {
  n::OutboxEvent event;
  event.set_text(name, std::string(payload_bytes, '0'), "");
  return event;
}

Push push(n::Outbox& outbox, const std::string& name, n::OverflowPolicy policy = n::OverflowPolicy::drop_newest,
          std::optional<n::OutboxEvent>* evicted = nullptr, bool* waited = nullptr) {
  return outbox.push(item(name), policy, 1ms, evicted, waited);
}

std::vector<std::string> names(std::span<n::OutboxEvent> batch) {
  std::vector<std::string> out;
  for (const auto& event : batch) out.emplace_back(event.name());
  return out;
}

// Takes up to `max` items (waiting at most 1 s) and returns their names.
std::vector<std::string> take(n::Outbox& outbox, std::size_t max, bool* open = nullptr) {
  std::span<n::OutboxEvent> batch;
  const bool result = outbox.take(batch, max, Clock::now() + 1s);
  if (open != nullptr) *open = result;
  return names(batch);
}

using Names = std::vector<std::string>;

// ---- the promises, against make_memory_outbox() --------------------------------------------------

TEST(Outbox, OutboxPromise1_TakeHandsOutItemsInPushOrder) {
  auto outbox = n::make_memory_outbox(100, 0, 4);
  Names pushed;
  for (int i = 0; i < 10; ++i) {
    pushed.push_back("e" + std::to_string(i));
    ASSERT_EQ(push(*outbox, pushed.back()), Push::accepted);
  }
  Names taken;
  while (taken.size() < pushed.size()) {
    const Names batch = take(*outbox, 3);
    ASSERT_FALSE(batch.empty());
    ASSERT_LE(batch.size(), 3u);
    taken.insert(taken.end(), batch.begin(), batch.end());
    outbox->settle(batch.size(), Settled::confirmed);
  }
  EXPECT_EQ(taken, pushed);
}

TEST(Outbox, OutboxPromise2_TakenItemsStayUntilSettled) {
  auto outbox = n::make_memory_outbox(100);
  for (const char* name : {"a", "b", "c"}) ASSERT_EQ(push(*outbox, name), Push::accepted);
  EXPECT_EQ(take(*outbox, 10), (Names{"a", "b", "c"}));
  EXPECT_EQ(outbox->stats().in_flight, 3u);
  EXPECT_EQ(outbox->stats().depth, 0u);
  outbox->settle(1, Settled::confirmed);
  EXPECT_EQ(outbox->stats().in_flight, 2u);
  // The taker "failed" here without settling b and c: they are still in the outbox.
  EXPECT_EQ(take(*outbox, 10), (Names{"b", "c"}));
  outbox->settle(1, Settled::dropped, "publish_rejected");
  outbox->settle(1, Settled::confirmed);
  EXPECT_EQ(outbox->stats().in_flight, 0u);
  std::span<n::OutboxEvent> batch;
  EXPECT_TRUE(outbox->take(batch, 10, Clock::now() + 10ms));
  EXPECT_TRUE(batch.empty()) << "settled items must have left";
}

TEST(Outbox, OutboxPromise3_ReleasedItemsComeBackFirstInTheirOrder) {
  auto outbox = n::make_memory_outbox(100);
  for (const char* name : {"1", "2", "3", "4", "5", "6"}) ASSERT_EQ(push(*outbox, name), Push::accepted);
  EXPECT_EQ(take(*outbox, 4), (Names{"1", "2", "3", "4"}));
  outbox->settle(1, Settled::confirmed);
  outbox->release();
  ASSERT_EQ(push(*outbox, "7"), Push::accepted);
  Names rest;
  while (rest.size() < 6) {
    const Names batch = take(*outbox, 10);
    ASSERT_FALSE(batch.empty());
    rest.insert(rest.end(), batch.begin(), batch.end());
    outbox->settle(batch.size(), Settled::confirmed);
  }
  EXPECT_EQ(rest, (Names{"2", "3", "4", "5", "6", "7"}));
}

TEST(Outbox, OutboxPromise3_ARetakeAfterAFailedTakerReturnsTheSameItemsFirst) {
  auto outbox = n::make_memory_outbox(100);
  for (const char* name : {"a", "b", "c", "d"}) ASSERT_EQ(push(*outbox, name), Push::accepted);
  EXPECT_EQ(take(*outbox, 2), (Names{"a", "b"}));
  ASSERT_EQ(push(*outbox, "e"), Push::accepted);
  // No settle, no release: the next take hands out a and b again, before c.
  EXPECT_EQ(take(*outbox, 3), (Names{"a", "b"}));
  outbox->settle(2, Settled::confirmed);
  EXPECT_EQ(take(*outbox, 10), (Names{"c", "d", "e"}));
}

TEST(Outbox, OutboxPromise4_DropOldestNeverEvictsAnItemInFlight) {
  auto outbox = n::make_memory_outbox(2);
  ASSERT_EQ(push(*outbox, "a"), Push::accepted);
  ASSERT_EQ(push(*outbox, "b"), Push::accepted);
  EXPECT_EQ(take(*outbox, 1), (Names{"a"}));  // a in flight, b waiting
  ASSERT_EQ(push(*outbox, "c"), Push::accepted);  // in-flight items do not count
  std::optional<n::OutboxEvent> evicted;
  ASSERT_EQ(push(*outbox, "d", n::OverflowPolicy::drop_oldest, &evicted), Push::accepted_dropped_oldest);
  ASSERT_TRUE(evicted.has_value());
  EXPECT_EQ(evicted->name(), "b");
  EXPECT_EQ(outbox->stats().in_flight, 1u);
  outbox->settle(1, Settled::confirmed);  // a is still there to settle
  EXPECT_EQ(take(*outbox, 10), (Names{"c", "d"}));
}

TEST(Outbox, OutboxPromise4_FullRefusesTheNewItemUnderDropNewestAndBlock) {
  auto outbox = n::make_memory_outbox(1);
  ASSERT_EQ(push(*outbox, "a"), Push::accepted);
  EXPECT_EQ(push(*outbox, "b", n::OverflowPolicy::drop_newest), Push::dropped_newest);
  bool waited = false;
  EXPECT_EQ(push(*outbox, "c", n::OverflowPolicy::block, nullptr, &waited), Push::dropped_newest);
  EXPECT_TRUE(waited);
  EXPECT_EQ(take(*outbox, 10), (Names{"a"}));
}

TEST(Outbox, OutboxPromise4_ByteBoundRefusesButAlwaysTakesIntoAnEmptyOutbox) {
  const std::size_t one = item("x", 4000).queued_bytes();
  auto outbox = n::make_memory_outbox(100, one + one / 2);
  EXPECT_EQ(outbox->push(item("big", 100000), n::OverflowPolicy::drop_oldest, 1ms), Push::accepted);
  EXPECT_EQ(outbox->push(item("x", 4000), n::OverflowPolicy::drop_oldest, 1ms), Push::dropped_newest);
  EXPECT_EQ(take(*outbox, 10), (Names{"big"}));
  outbox->settle(1, Settled::confirmed);
  EXPECT_EQ(outbox->push(item("x", 4000), n::OverflowPolicy::drop_newest, 1ms), Push::accepted);
  EXPECT_EQ(outbox->stats().bytes, one);
}

TEST(Outbox, OutboxPromise5_CloseRefusesPushesAndKeepsItemsTakeable) {
  auto outbox = n::make_memory_outbox(100);
  std::span<n::OutboxEvent> batch;
  EXPECT_TRUE(outbox->take(batch, 10, Clock::now() + 5ms)) << "open and empty: returns at `until`";
  EXPECT_TRUE(batch.empty());
  ASSERT_EQ(push(*outbox, "a"), Push::accepted);
  ASSERT_EQ(push(*outbox, "b"), Push::accepted);
  outbox->close();
  EXPECT_EQ(push(*outbox, "c"), Push::closed);
  bool open = false;
  EXPECT_EQ(take(*outbox, 1, &open), (Names{"a"}));
  EXPECT_TRUE(open);
  outbox->release();
  EXPECT_EQ(take(*outbox, 10, &open), (Names{"a"})) << "released after close: still takeable";
  outbox->settle(1, Settled::confirmed);
  EXPECT_EQ(take(*outbox, 10, &open), (Names{"b"}));
  outbox->settle(1, Settled::confirmed);
  take(*outbox, 10, &open);
  EXPECT_FALSE(open) << "closed and nothing left";
}

TEST(Outbox, OutboxPromise6_DrainReturnsTheItemsNotInFlight) {
  auto outbox = n::make_memory_outbox(100);
  for (const char* name : {"a", "b", "c"}) ASSERT_EQ(push(*outbox, name), Push::accepted);
  EXPECT_EQ(take(*outbox, 1), (Names{"a"}));
  Names drained;
  for (const auto& event : outbox->drain()) drained.emplace_back(event.name());
  EXPECT_EQ(drained, (Names{"b", "c"}));
  EXPECT_EQ(outbox->stats().depth, 0u);
  EXPECT_EQ(outbox->stats().in_flight, 1u);
  outbox->settle(1, Settled::confirmed);
}

// ---- outboxes of its own given to a Bridge --------------------------------------------------------

// Forwards to a memory outbox and records what passes. Faults, set before the bridge starts:
// every `fail_take_every`-th take() takes and then throws (the sender "crashes" after take);
// every `fail_settle_every`-th settle() settles and then throws; every `transport_fail_every`-th
// take() makes the transport refuse its next two publish() calls (transiently).
// Thread-safety: the record is guarded by mutex_; the faults are read-only once started.
class RecordingOutbox final : public n::Outbox {
 public:
  RecordingOutbox() : inner_(n::make_memory_outbox(1024, 0, 16)) {}

  int fail_take_every = 0;
  int fail_settle_every = 0;
  int transport_fail_every = 0;
  std::shared_ptr<n::MockTransport> transport;

  Push push(n::OutboxEvent&& event, n::OverflowPolicy policy, std::chrono::milliseconds block_timeout,
            std::optional<n::OutboxEvent>* evicted, bool* waited) override {
    std::string name(event.name());
    const Push result = inner_->push(std::move(event), policy, block_timeout, evicted, waited);
    std::lock_guard lock(mutex_);
    if (result == Push::accepted) pushed_.push_back(std::move(name));
    return result;
  }
  bool take(std::span<n::OutboxEvent>& batch, std::size_t max, Clock::time_point until) override {
    const bool open = inner_->take(batch, max, until);
    if (batch.empty()) return open;
    std::lock_guard lock(mutex_);
    ++takes_;
    const Names now = names(batch);
    if (!unsettled_.empty()) {
      // Whatever the last taker left unsettled comes back first, in the same order.
      const std::size_t common = std::min(now.size(), unsettled_.size());
      if (!std::equal(now.begin(), now.begin() + static_cast<std::ptrdiff_t>(common), unsettled_.begin())) {
        retake_out_of_order_ = true;
      }
      ++retakes_;
    }
    unsettled_ = now;
    if (transport_fail_every > 0 && takes_ % transport_fail_every == 0) transport->fail_next_publishes(2, true);
    if (fail_take_every > 0 && takes_ % fail_take_every == 0) throw std::runtime_error("injected: failed after take");
    return open;
  }
  void settle(std::size_t count, Settled how, std::string_view reason) override {
    inner_->settle(count, how, reason);
    std::lock_guard lock(mutex_);
    ++settles_;
    if (how == Settled::confirmed) confirmed_ += count;
    unsettled_.erase(unsettled_.begin(), unsettled_.begin() + static_cast<std::ptrdiff_t>(std::min(count, unsettled_.size())));
    if (fail_settle_every > 0 && settles_ % fail_settle_every == 0) throw std::runtime_error("injected: failed after settle");
  }
  void release() override { inner_->release(); }
  void close() override { inner_->close(); }
  std::vector<n::OutboxEvent> drain() override { return inner_->drain(); }
  n::OutboxStats stats() const override { return inner_->stats(); }
  std::size_t depth_unlocked() const noexcept override { return inner_->depth_unlocked(); }
  void reset_in_forked_child() override { inner_->reset_in_forked_child(); }

  Names pushed() const {
    std::lock_guard lock(mutex_);
    return pushed_;
  }
  std::size_t confirmed() const {
    std::lock_guard lock(mutex_);
    return confirmed_;
  }
  int retakes() const {
    std::lock_guard lock(mutex_);
    return retakes_;
  }
  bool retake_out_of_order() const {
    std::lock_guard lock(mutex_);
    return retake_out_of_order_;
  }

 private:
  std::shared_ptr<n::Outbox> inner_;
  mutable std::mutex mutex_;
  Names pushed_;
  Names unsettled_;  // taken, not yet settled, in order
  std::size_t confirmed_ = 0;
  int takes_ = 0;
  int settles_ = 0;
  int retakes_ = 0;
  bool retake_out_of_order_ = false;
};

std::shared_ptr<n::MockTransport> mock(const std::string& broker) {
  n::MockOptions options;
  static std::atomic<int> counter{0};
  options.broker = broker + "-" + std::to_string(counter.fetch_add(1));
  return std::make_shared<n::MockTransport>(options);
}

TEST(BridgeOutbox, ACustomOutboxReceivesEveryEvent) {
  n::Notifier notifier;
  auto transport = mock("custom-outbox");
  auto outbox = std::make_shared<RecordingOutbox>();
  n::BridgeConfig config = test_support::config_for("custom");
  config.subscribe = {};
  n::BridgeHooks hooks;
  hooks.outbox = outbox;
  n::Bridge bridge(notifier, transport, config, hooks);
  bridge.start();
  Names instrumented;
  for (int i = 0; i < 200; ++i) {
    instrumented.push_back("order.e" + std::to_string(i));
    notifier.instrument(instrumented.back(), {{"i", i}});
  }
  ASSERT_TRUE(bridge.flush(30s));
  EXPECT_EQ(outbox->pushed(), instrumented);
  EXPECT_EQ(outbox->confirmed(), instrumented.size());
  EXPECT_EQ(transport->published_count(), instrumented.size());
  EXPECT_EQ(bridge.health()["queue"]["capacity"], 1024);
  const n::ShutdownReport report = bridge.shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
}

// The sender fails after take (the outbox throws once the items are taken), the transport fails
// after take (two refused publish calls, transient), and settle fails after settling: every
// event arrives, once, in the order instrumented, with no gap in its stream's sequence.
TEST(BridgeOutbox, BridgePromise3_FailuresBetweenTakeAndSettleLoseNothingAndKeepOrder) {
  const std::string broker = "take-settle";
  n::MockOptions options;
  static std::atomic<int> counter{0};
  options.broker = broker + "-" + std::to_string(counter.fetch_add(1));
  auto sending = std::make_shared<n::MockTransport>(options);
  auto receiving = std::make_shared<n::MockTransport>(options);

  auto outbox = std::make_shared<RecordingOutbox>();
  outbox->fail_take_every = 3;
  outbox->fail_settle_every = 4;
  outbox->transport_fail_every = 5;
  outbox->transport = sending;

  n::Notifier a;
  n::Notifier b;
  n::BridgeConfig sender_config = test_support::config_for("a");
  sender_config.subscribe = {};
  sender_config.batch_size = 16;
  n::BridgeHooks hooks;
  hooks.outbox = outbox;
  n::Bridge sender(a, sending, sender_config, hooks);
  n::BridgeConfig receiver_config = test_support::config_for("b");
  receiver_config.forward = {};
  receiver_config.subscribe = {"order.>"};
  n::Bridge receiver(b, receiving, receiver_config);

  std::mutex mutex;
  std::vector<int> delivered;
  auto subscription = b.subscribe("order.placed", [&](const n::Event& event) {
    std::lock_guard lock(mutex);
    delivered.push_back(event.payload()["i"].get<int>());
  });
  receiver.start();
  sender.start();

  std::vector<int> instrumented;
  for (int i = 0; i < 300; ++i) {
    instrumented.push_back(i);
    a.instrument("order.placed", {{"i", i}});
  }
  ASSERT_TRUE(sender.flush(30s));
  ASSERT_TRUE(receiver.wait_delivered(30s));
  {
    std::lock_guard lock(mutex);
    EXPECT_EQ(delivered, instrumented);
  }
  EXPECT_GT(outbox->retakes(), 0) << "the faults did not fire: the test proves nothing";
  EXPECT_FALSE(outbox->retake_out_of_order());
  EXPECT_GT(test_support::counter(sender.health(), "retried"), 0u);
  const nlohmann::json health = receiver.health();
  EXPECT_EQ(test_support::counter(health, "lost"), 0u) << "a retry must resend the sequence numbers it took";
  EXPECT_EQ(test_support::counter(health, "sequence_resets"), 0u);
  EXPECT_EQ(sender.health()["counters"]["sent"], instrumented.size());
  sender.shutdown(5s);
  receiver.shutdown(5s);
}

}  // namespace
