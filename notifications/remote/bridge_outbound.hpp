// Private: the outbound half of a Bridge: forward listener (instrumenting threads) -> outbox ->
// sender (take, encode, publish, settle) -> transport. It owns the outbox, the forward patterns,
// whether events are accepted, the saturation flag and the outbound counters; it reaches the rest
// of the bridge only through OutboundHost (drop accounting, errors, the shutdown deadline, fork
// pauses), and the rest of the bridge reaches it only through the members below.
//
// Thread-safety: forward(), counters(), accepting and the health readers from any thread;
// run() on the sender thread only; start_accepting(), stop_accepting(), close(), drain(),
// confirm() and reset_in_forked_child() from the bridge's lifecycle (start, shutdown, flush,
// fork), never while another thread runs reset_in_forked_child().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/config.hpp"
#include "notifications/event.hpp"
#include "notifications/outbox.hpp"
#include "notifications/pattern.hpp"
#include "notifications/transport.hpp"
#include "remote/payload_redaction.hpp"

namespace notifications::bridge_internal {

enum class Drop;
struct ObserverSlot;

// What the outbound half uses of the rest of the bridge. Implemented by Bridge::Impl; every
// member may be called from any thread.
class OutboundHost {
 public:
  // Counts `count` events dropped for `reason` and logs them (rate-limited).
  virtual void drop(Drop reason, std::string_view name, std::uint64_t count = 1, std::string_view why = {}) = 0;
  virtual void set_error(std::string text) = 0;
  // Wakes flush() (a settled event may end its wait) and a sender waiting out a backoff.
  virtual void signal_progress() = 0;
  virtual bool past_deadline() const = 0;
  // Waits `duration`, or less when shutdown's deadline comes first. True when the deadline passed.
  virtual bool sleep_or_deadline(std::chrono::milliseconds duration) = 0;
  // Sender thread: waits here, holding no lock, while a fork is prepared.
  virtual void park_if_requested() = 0;
  // Sender thread: waits `duration` outside the outbox (an instrumenting thread's push wakes
  // nobody meanwhile), or less when shutdown begins or a fork's pause is requested.
  virtual void linger(std::chrono::microseconds duration) = 0;
  // True in a child forked without prepare_fork()/after_fork(); refuse_in_forked_child() counts a
  // refused event there without taking any lock.
  virtual bool in_forked_child() const noexcept = 0;
  virtual void refuse_in_forked_child() = 0;

 protected:
  ~OutboundHost() = default;
};

class Outbound {
 public:
  struct Counters {
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> sent{0};       // confirmed by the transport's publish()
    std::atomic<std::uint64_t> confirmed{0};  // covered by a successful transport flush
    std::atomic<std::uint64_t> blocked{0};    // instrument calls that waited on a full outbox
    std::atomic<std::uint64_t> failed{0};     // publish calls that did not accept everything
    std::atomic<std::uint64_t> retried{0};
    // Events a durable outbox held from an earlier run when this bridge was made (also counted
    // in accepted).
    std::atomic<std::uint64_t> replayed{0};
  };

  // `outbox` null: make_memory_outbox from config's queue bounds. `instance_id` is read by the
  // sender for every batch (after a fork, the bridge changes it while the sender is parked).
  Outbound(OutboundHost& host, const BridgeConfig& config, std::shared_ptr<Transport> transport,
           const std::string& instance_id, std::shared_ptr<Outbox> outbox);
  Outbound(const Outbound&) = delete;
  Outbound& operator=(const Outbound&) = delete;

  // Instrumenting threads: queues the event (payload serialised) under the overflow policy, or
  // counts why not. `pattern_index`: which of config.forward matched (the first matching one
  // forwards).
  void forward(std::size_t pattern_index, const Event& event);
  const std::vector<Pattern>& patterns() const noexcept { return patterns_; }

  void start_accepting() noexcept { accepting_.store(true, std::memory_order_release); }
  void stop_accepting() noexcept { accepting_.store(false, std::memory_order_release); }

  // The sender thread's body: returns once the outbox is closed and nothing is left to take
  // (what remains after the deadline is counted as dropped).
  void run();

  // Shutdown: refuses later events (counted as after_shutdown); what is queued stays for the
  // sender to drain.
  void close();
  // How long the sender's next take() may wait (see run()).
  Deadline take_until(Deadline last_confirm) const;
  // Makes the sender, waiting for events, look at a pause request (fork) now.
  void wake() { outbox_->wake(); }
  // Counts what was still waiting (not in flight) as dropped at shutdown's deadline.
  void drop_remaining();
  // Asks the transport to flush; on success everything sent before the call is confirmed.
  bool confirm(Deadline deadline);
  // Around a fork, after the sender parked: the outbox parks its own thread, if it has one (false
  // at `deadline`), and resumes it in the parent.
  bool prepare_fork(Deadline deadline) { return outbox_->prepare_fork(deadline); }
  void after_fork_in_parent() { outbox_->after_fork_in_parent(); }
  // In a child forked with prepare_fork()/after_fork(): forgets the parent's events and counters.
  void reset_in_forked_child();

  const Counters& counters() const noexcept { return counters_; }
  // Before start(): the sender tells `observer` (owned by the bridge; null: none) of each event
  // it published.
  void set_observer(ObserverSlot* observer) noexcept { observer_ = observer; }
  // health()["queue"]["lag_ms"]: the age of the oldest event accepted and not yet sent, from the
  // end of its instrumented block (time plus duration, system clock; 0 when none waits). Tracked
  // by the sender: the first unpublished item of the batch it holds, or of the one it released
  // for a retry; 0 once a batch was all settled or a take found nothing, so between two batches
  // under load it may read 0 for a moment.
  std::chrono::milliseconds lag() const noexcept;
  // Events a durable outbox kept for the next start when drop_remaining() ran (0: none, or not
  // durable).
  std::uint64_t kept() const noexcept { return kept_.load(); }
  bool persistent() const noexcept { return outbox_->persistent(); }
  // health()["queue"]; `forked_child`: without taking any lock (only depth and capacity).
  nlohmann::json queue_health(bool forked_child) const;

 private:
  class Sender;
  static constexpr std::size_t kSegmentItems = 1024;      // the memory outbox's segment, at most
  static constexpr std::size_t kKeptBodyBytes = 64 * 1024;  // a reused message body keeps at most this
  static constexpr std::chrono::seconds kConfirmTimeout{2};  // a flush confirming a durable outbox's batch
  static constexpr std::chrono::seconds kMaxLinger{10};  // whatever write_delay a transport claims

  std::chrono::milliseconds backoff(int attempt, std::mt19937& rng) const;
  void note_sent(std::uint64_t count);
  // confirmed = max(confirmed, to): everything sent up to `to` is known confirmed.
  void raise_confirmed(std::uint64_t to);

  OutboundHost& host_;
  const BridgeConfig& config_;
  const std::shared_ptr<Transport> transport_;
  const std::string& instance_id_;
  const std::shared_ptr<Outbox> outbox_;
  const std::size_t outbox_capacity_;  // for health() in a forked child, where stats() may block
  std::vector<Pattern> patterns_;
  const detail::Redactor redactor_;  // config_.redact
  std::atomic<bool> accepting_{false};
  // Block policy: set when a push waited its whole block_timeout; until the transport accepts
  // something again, pushes do not wait (the outbox refuses the newest instead).
  std::atomic<bool> saturated_{false};
  // A durable outbox over a transport that is not persistent: settle only after a flush.
  const bool confirm_before_settle_;
  // A quarter of the transport's write_delay, at most kMaxLinger (see run()); zero: the sender
  // never lingers.
  const std::chrono::microseconds linger_;
  std::atomic<std::uint64_t> kept_{0};
  Counters counters_;
  ObserverSlot* observer_ = nullptr;
  // When the oldest unsent item the sender holds ended (system clock ticks since its epoch); 0: none.
  std::atomic<std::int64_t> oldest_unsent_{0};
};

}  // namespace notifications::bridge_internal
