// Private: the Bridge's inbound part, the state between the transport's delivery handler and the
// dispatcher thread: the inbound queue, the sequence streams seen (loss accounting), the ids
// recently delivered (redelivery suppression) and the inbound counters.
//
// Thread-safety: offer() runs on transport threads; the dispatcher-side members (pop_batch,
// note_sequence, already_delivered, remember_delivered, handled) run on the dispatcher thread
// only; close/take_all run on the thread shutting down or forking (with the dispatcher parked or
// gone); counters and the queue's sizes may be read from any thread.
//
// Promises of the inbound side (docs/bridge.md):
//   I1. Take, then settle: a delivery is settled (on transports with acknowledgements) only after
//       it was handled: delivered to the local listeners, suppressed as a redelivery (ack),
//       dead-lettered as malformed (term), or refused (nak: not taken into the queue, or still
//       queued when shutdown's deadline passed). Nothing is acked while it only waits in the queue.
//   I2. A delivery whose Message::id was delivered within the redelivery window (bounded by time
//       and by count, oldest forgotten first) is not delivered again; it is counted in
//       "redeliveries_suppressed", never as a drop, as lost or as a sequence gap.
//   I3. Every delivery taken is handled exactly once (taken == handled once the queue is empty and
//       the dispatcher idle; wait_delivered() waits for that).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "notifications/config.hpp"
#include "notifications/envelope.hpp"
#include "notifications/transport.hpp"
#include "transport/bounded_queue.hpp"

namespace notifications::bridge_internal {

// Bytes a delivery holds in the inbound queue, for the byte bound (BridgeConfig::queue_max_bytes).
struct DeliveryBytes {
  std::size_t operator()(const Delivery& delivery) const noexcept {
    std::size_t bytes = sizeof(Delivery) + delivery.message.subject.size() + delivery.message.body.size() +
                        delivery.message.id.size();
    for (const auto& [key, value] : delivery.message.headers) bytes += key.size() + value.size() + 64;
    return bytes;
  }
};

// The ids delivered recently: at most `max_count`, none older than `window`. Dispatcher thread only.
class DeliveredIds {
 public:
  using Clock = std::chrono::steady_clock;

  DeliveredIds(std::chrono::milliseconds window, std::size_t max_count) : window_(window), max_count_(max_count) {}

  // True when `id` was remembered within the window at `now`.
  bool contains(const std::string& id, Clock::time_point now) {
    expire(now);
    return at_.find(id) != at_.end();
  }
  // Remembers `id` (not already remembered) as delivered at `now`; forgets the oldest past the count.
  void remember(const std::string& id, Clock::time_point now) {
    if (max_count_ == 0) return;
    if (!at_.emplace(id, now).second) return;
    order_.push_back(id);
    while (order_.size() > max_count_) forget_oldest();
  }
  std::size_t size() const noexcept { return order_.size(); }
  void clear() {
    at_.clear();
    order_.clear();
  }
  std::chrono::milliseconds window() const noexcept { return window_; }
  std::size_t max_count() const noexcept { return max_count_; }

 private:
  void expire(Clock::time_point now) {
    while (!order_.empty() && now - at_.find(order_.front())->second > window_) forget_oldest();
  }
  void forget_oldest() {
    at_.erase(order_.front());
    order_.pop_front();
  }

  const std::chrono::milliseconds window_;
  const std::size_t max_count_;
  std::unordered_map<std::string, Clock::time_point> at_;  // one entry per id in order_
  std::deque<std::string> order_;                          // oldest first
};

// The redelivery window a Bridge uses with a transport of these capabilities: the configured one,
// or by default the longer of 2 minutes (JetStream's dedupe window) and the transport's.
std::chrono::milliseconds redelivery_window(const RedeliveryPolicy& policy, const TransportCapabilities& capabilities);

// Whether a transport of these capabilities may deliver one id twice, so that suppression runs.
inline bool may_redeliver(const TransportCapabilities& capabilities) {
  return capabilities.acknowledgements || capabilities.persistent;
}

// Whether the listeners of recent events read their payloads. A payload decoded deferred is
// validated in the decoding pass and built on its first read (two passes when it is read, none of
// the building when it is not); one decoded at once is built in the decoding pass. In
// `bench_nats`' terms deferring saves a listener that does not read about 0.4 us per event and
// costs one that reads about 0.2 us, so payloads are deferred unless recent listeners read nearly
// all of them (more than about 4 in 5). While payloads are built at once, one event in
// kProbeEvery is still deferred, to notice when listeners stop reading.
// Thread-safety: dispatcher thread only.
class PayloadReadGuess {
 public:
  static constexpr int kProbeEvery = 16;
  static constexpr int kAtOnceFrom = 8;  // score from which payloads are built at once
  static constexpr int kMaxScore = 16;
  static constexpr int kUnreadPenalty = 4;

  // True: decode the next payload deferred and report what its listeners did to observed(). A
  // probe not observed (the event was not delivered: malformed, an echo) is taken by the next.
  bool defer_next() noexcept {
    if (score_ < kAtOnceFrom) return true;
    return ++since_probe_ >= kProbeEvery;
  }
  void observed(bool read) noexcept {
    since_probe_ = 0;
    score_ = read ? std::min(score_ + 1, kMaxScore) : std::max(score_ - kUnreadPenalty, 0);
  }
  bool building_at_once() const noexcept { return score_ >= kAtOnceFrom; }

 private:
  int score_ = 0;
  int since_probe_ = 0;
};

class Inbound {
 public:
  using Queue = detail::BoundedQueue<Delivery, DeliveryBytes>;
  using Batch = Queue::Batch;
  using Clock = std::chrono::steady_clock;

  // What the sequence of an arriving event says about the stream it belongs to.
  struct SequenceNote {
    enum class Kind { in_order, gap, reset } kind = Kind::in_order;
    std::uint64_t previous = 0;  // the last sequence seen before (gap, reset)
    std::uint64_t missing = 0;   // gap: events missing between previous and this one
  };

  struct Counters {
    std::atomic<std::uint64_t> received{0};
    std::atomic<std::uint64_t> malformed{0};
    std::atomic<std::uint64_t> echo_suppressed{0};
    std::atomic<std::uint64_t> lost{0};             // gaps in received sequences
    std::atomic<std::uint64_t> sequence_resets{0};  // implausible jumps, not counted as lost
    std::atomic<std::uint64_t> redeliveries_suppressed{0};  // I2
  };

  Inbound(const BridgeConfig& config, const TransportCapabilities& capabilities, std::chrono::microseconds idle_spin,
          std::size_t batch);

  // ---- transport threads
  // Takes the delivery into the queue without waiting. False when refused (full, or out of
  // memory: `why` says so); the caller naks and counts it.
  bool offer(Delivery&& delivery, std::string_view& why);

  // ---- dispatcher thread
  // Waits with no deadline for a delivery, close() or wake().
  bool pop_batch(Batch& out, std::size_t max) { return queue_.pop_batch(out, max, Clock::time_point::max()); }
  // Deliveries of a popped batch handled (dispatched, suppressed or dropped), for I3.
  void handled(std::size_t count) { handled_.fetch_add(count); }
  // I2: true when `id` (non-empty) was delivered within the window; counts the suppression.
  bool suppress_redelivery(const std::string& id);
  // Records `id` as delivered (after it was handed to the listeners).
  void remember_delivered(const std::string& id);
  // Loss accounting per (producer instance, subject); counts lost and resets.
  SequenceNote note_sequence(const Envelope& envelope, const std::string& subject);
  bool suppressing() const noexcept { return suppressing_; }
  PayloadReadGuess& payload_reads() noexcept { return payload_reads_; }

  // ---- shutdown / fork (dispatcher parked or gone)
  void close() { queue_.close(); }
  // Makes the dispatcher, waiting for deliveries, look at a pause request (fork) now.
  void wake() { queue_.wake(); }
  Batch take_all() { return queue_.take_all(); }
  // In a forked child: forget the parent's queue and streams, zero the counters.
  void reset();

  // ---- any thread
  std::uint64_t taken() const { return taken_.load(); }
  std::uint64_t handled() const { return handled_.load(); }
  std::size_t size() const { return queue_.size(); }
  std::size_t capacity() const noexcept { return queue_.capacity(); }
  std::size_t bytes() const { return queue_.bytes(); }
  std::size_t max_bytes() const noexcept { return queue_.max_bytes(); }
  Counters& counters() noexcept { return counters_; }
  const Counters& counters() const noexcept { return counters_; }
  void reset_counters();
  // health()["redelivery"]: active, window_ms, window_count.
  nlohmann::json redelivery_health() const;

 private:
  Queue queue_;
  Counters counters_;
  // Deliveries taken into the queue, and those handled since: equal when every delivery handed
  // over so far was handled (Bridge::wait_delivered). Sequentially consistent (see run_dispatcher).
  std::atomic<std::uint64_t> taken_{0};
  std::atomic<std::uint64_t> handled_{0};

  // Dispatcher thread only. The last sequence seen per (producer instance, subject); bounded:
  // when full it starts over (a gap spanning that moment goes uncounted).
  std::unordered_map<std::string, std::uint64_t> last_sequence_;
  std::string sequence_key_;  // the lookup key, reused
  static constexpr std::size_t kMaxSequenceStreams = 65536;

  const bool suppressing_;  // may_redeliver(capabilities) and window_count > 0
  DeliveredIds delivered_;  // dispatcher thread only
  PayloadReadGuess payload_reads_;  // dispatcher thread only
};

}  // namespace notifications::bridge_internal
