// Private: the state of a Bridge and its operations, shared by the files that implement them:
//   bridge.cpp           lifecycle (start, shutdown, flush, health), fork, drop accounting
//   bridge_outbound.cpp  the outbound half (class Outbound, bridge_outbound.hpp): instrumenting
//                        threads -> outbox -> sender thread -> transport
//   bridge_inbound.cpp   transport callback -> inbound queue -> dispatcher thread -> notifier
//                        (the inbound part's state: class Inbound, remote/bridge_inbound.hpp)
//
// Thread-safety: each member says which thread runs it or which lock guards it (the locks are
// annotated: a clang build with NOTIFICATIONS_THREAD_SAFETY_ANALYSIS checks them); counters are
// atomics read from any thread.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "transport/bounded_queue.hpp"
#include "process/thread_name.hpp"
#include "notifications/bridge.hpp"
#include "process/describe.hpp"
#include "notifications/envelope.hpp"
#include "process/fork_registry.hpp"
#include "notifications/notifications.hpp"
#include "process/ids.hpp"
#include "process/log.hpp"
#include "process/process.hpp"
#include "process/thread_safety.hpp"
#include "remote/bridge_inbound.hpp"
#include "remote/bridge_outbound.hpp"
#include "remote/durable_consumer.hpp"
#include "remote/observer_slot.hpp"
#include "remote/outgoing_event.hpp"
#include "notifications/subject.hpp"

namespace notifications {

namespace bridge_internal {

using Clock = std::chrono::steady_clock;

// Why an event or message was not delivered. Each has a counter in health()["counters"]["dropped"].
enum class Drop {
  queue_full,          // outbound queue full by count or bytes (drop_newest, block timed out or
                       // saturated), or no memory for it
  queue_evicted,       // removed to make room (drop_oldest)
  after_shutdown,      // instrumented after shutdown() began
  invalid_subject,     // the event name cannot be a subject
  encode_failed,       // the payload could not be encoded
  publish_rejected,    // the transport refused it permanently
  retries_exhausted,   // retry.max_attempts reached
  shutdown_deadline,   // still queued or retrying when shutdown's deadline passed
  inbound_full,        // inbound queue full: the transport's delivery was refused
  dispatch_failed,     // a local listener threw in strict mode while delivering a remote event
  too_large,           // larger than the transport can carry (Transport::max_message_bytes)
  forked_child,        // instrumented in a forked child that did not call after_fork()
  inbound_deadline,    // received, not yet delivered when shutdown's deadline passed
  outbox_failed,       // the outbox could not store it (a durable outbox's file refused the write)
  count_,
};

inline constexpr const char* kDropNames[] = {
    "queue_full",        "queue_evicted",     "after_shutdown",    "invalid_subject",
    "encode_failed",     "publish_rejected",  "retries_exhausted", "shutdown_deadline",
    "inbound_full",      "dispatch_failed",   "too_large",         "forked_child",
    "inbound_deadline",  "outbox_failed",
};

// True for reasons that count outbound events after they were accepted (accepted = sent +
// these, once settled).
inline constexpr bool counts_accepted(Drop reason) {
  switch (reason) {
    case Drop::queue_evicted:
    case Drop::invalid_subject:
    case Drop::encode_failed:
    case Drop::publish_rejected:
    case Drop::retries_exhausted:
    case Drop::shutdown_deadline:
    case Drop::too_large:
      return true;
    default:
      return false;
  }
}

// True for reasons that count received messages that were not delivered to listeners.
inline constexpr bool counts_inbound(Drop reason) {
  return reason == Drop::inbound_full || reason == Drop::inbound_deadline;
}
static_assert(std::size(kDropNames) == static_cast<std::size_t>(Drop::count_));

// For logs and last_error: cut, with every byte outside printable ASCII escaped (names, subjects
// and bodies may come from the wire).
inline std::string truncated(std::string_view text, std::size_t limit = 200) { return detail::wire_text(text, limit); }

// Sequence jumps larger than this (forward or back) are taken as a producer reset or a forged
// sequence, logged, and not counted as loss.
inline constexpr std::uint64_t kMaxPlausibleGap = std::uint64_t{1} << 22;

// At most one log line a second for one reason, without a lock: a drop or a malformed message
// costs two atomic operations when its line is suppressed. Counts what it suppressed.
class LogRate {
 public:
  // True when a line may be written now; `suppressed` receives the lines refused since the last.
  bool allow(std::uint64_t& suppressed) noexcept {
    const std::int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    std::int64_t last = last_ns_.load(std::memory_order_relaxed);
    if ((last != 0 && now - last < kInterval) || !last_ns_.compare_exchange_strong(last, now)) {
      suppressed_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  static constexpr std::int64_t kInterval =
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::seconds(1)).count();
  std::atomic<std::int64_t> last_ns_{0};
  std::atomic<std::uint64_t> suppressed_{0};
};

enum class State { created, running, stopping, stopped };

// How long shutdown() waits past its deadline for the sender or the dispatcher to return before
// leaving it behind (it holds a reference to the bridge's state, so nothing it touches is freed).
inline constexpr std::chrono::milliseconds kJoinGrace{100};

// How often, at most, the sender asks the transport to confirm what it sent (a flush), while
// something sent is unconfirmed and no event waits; also that flush's time limit.
inline constexpr std::chrono::milliseconds kConfirmInterval{200};

inline const char* state_name(State state) {
  switch (state) {
    case State::created:
      return "created";
    case State::running:
      return "running";
    case State::stopping:
      return "stopping";
    case State::stopped:
      return "stopped";
  }
  return "unknown";
}

// How long the sender and the dispatcher poll their empty queue before blocking (see BoundedQueue).
inline constexpr std::chrono::microseconds kIdleSpin{50};

}  // namespace bridge_internal

struct Bridge::Impl : std::enable_shared_from_this<Bridge::Impl>, detail::ForkParticipant, bridge_internal::OutboundHost {
  using Clock = bridge_internal::Clock;
  using Drop = bridge_internal::Drop;
  using State = bridge_internal::State;

  Impl(Notifier& n, std::shared_ptr<Transport> t, BridgeConfig c, BridgeHooks h)
      : notifier(n),
        transport(std::move(t)),
        config(std::move(c)),
        hooks(std::move(h)),
        observer(bridge_internal::make_observer_slot(hooks.observer)),
        outbound(*this, config, transport, hooks.instance_id, hooks.outbox),
        inbound(config, transport->capabilities(), bridge_internal::kIdleSpin, kDispatchBatch),
        keep_notifier_state(n.handle("notifications.bridge")) {
    if (hooks.instance_id.empty()) hooks.instance_id = detail::random_uuid();
    outbound.set_observer(observer.get());
  }

  Notifier& notifier;
  const std::shared_ptr<Transport> transport;
  const BridgeConfig config;
  BridgeHooks hooks;
  // hooks.observer with its error count; null without one (the hot paths test this pointer).
  const std::shared_ptr<bridge_internal::ObserverSlot> observer;

  bridge_internal::Outbound outbound;  // the outbox, the forward patterns, the outbound counters
  // The inbound part: queue, loss accounting, redelivery suppression, inbound counters.
  bridge_internal::Inbound inbound;
  // Keeps the notifier's shared state alive for a dispatcher left inside a listener past
  // shutdown's deadline (the Notifier object itself must outlive shutdown()).
  const Handle keep_notifier_state;

  // The fork generation (detail::fork_generation) the threads were started in; a different one
  // means this is a forked child where they do not exist.
  std::atomic<std::uint64_t> generation{detail::fork_generation()};
  std::atomic<std::uint64_t> fork_refusal_told{~std::uint64_t{0}};  // generation told in
  std::atomic<bool> abandoned{false};  // a forked child gave the bridge up
  bool in_forked_child() const noexcept override {
    return detail::fork_generation() != generation.load(std::memory_order_relaxed);
  }
  // Counts a refusal in a forked child and says so once per process, without taking any lock.
  void refuse_in_forked_child() override;
  void tell_forked_child_once();

  // Progress, for flush(): every accepted event ends as sent or dropped. Also wakes the waits
  // for the sender's and the dispatcher's exits (shutdown) and for wait_delivered().
  detail::Mutex progress_mutex;
  std::condition_variable progress;  // on progress_mutex.native()

  // Sender and dispatcher exits, for shutdown's bounded waits.
  bool sender_done NOTIFICATIONS_GUARDED_BY(progress_mutex) = false;
  bool dispatcher_done NOTIFICATIONS_GUARDED_BY(progress_mutex) = false;
  std::atomic<std::uint64_t> dispatcher_backlog{0};  // popped, not yet returned from its listeners
  std::atomic<int> wait_delivered_waiters{0};

  detail::Mutex lifecycle;  // serialises start() and shutdown()
  std::atomic<State> state{State::created};
  std::vector<Subscription> forwarders NOTIFICATIONS_GUARDED_BY(lifecycle);
  std::vector<std::uint64_t> remote_subscriptions NOTIFICATIONS_GUARDED_BY(lifecycle);
  // Started by start(), joined or left behind by shutdown(), replaced by after_fork() in a child;
  // abandon_in_forked_child() takes them without the lock (see there).
  std::thread sender NOTIFICATIONS_GUARDED_BY(lifecycle);
  std::thread dispatcher NOTIFICATIONS_GUARDED_BY(lifecycle);

  // Fork support: prepare_fork() asks the sender and dispatcher to park outside every lock.
  struct Pause {
    detail::Mutex mutex;
    std::condition_variable changed;  // on mutex.native()
    bool requested NOTIFICATIONS_GUARDED_BY(mutex) = false;
    int parked NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  };
  std::atomic<bool> pause_requested{false};
  // Not guarded: replaced only by after_fork() in a forked child, before the threads that read it
  // (sender, dispatcher) are started there; the parent's stays alive (leaked) for its waiters.
  std::unique_ptr<Pause> pause = std::make_unique<Pause>();
  // Set and read only by prepare_fork() and after_fork(), which hold lifecycle from one to the other.
  bool prepared_for_fork NOTIFICATIONS_GUARDED_BY(lifecycle) = false;
  std::atomic<bool> registered_for_fork{false};
  std::atomic<std::thread::id> dispatcher_id{};
  std::optional<ShutdownReport> report NOTIFICATIONS_GUARDED_BY(lifecycle);

  // Durable handlers (remote/bridge_durable.cpp): registered by subscribe_durable(), started by
  // start(), stopped first by shutdown(). Their own lock, so health() never waits for shutdown.
  mutable detail::Mutex durable_mutex;
  std::vector<std::shared_ptr<bridge_internal::DurableConsumer>> durables NOTIFICATIONS_GUARDED_BY(durable_mutex);
  std::shared_ptr<DurableStore> default_durable_store NOTIFICATIONS_GUARDED_BY(durable_mutex);
  void subscribe_durable(const std::string& name, const std::string& pattern, DurableHandler handler,
                         DurableOptions options) NOTIFICATIONS_EXCLUDES(durable_mutex);
  std::shared_ptr<bridge_internal::DurableConsumer> durable(const std::string& name) const
      NOTIFICATIONS_EXCLUDES(durable_mutex);
  void start_durables() NOTIFICATIONS_EXCLUDES(durable_mutex);
  // Adds what the handlers gave back and left unfinished to `report`.
  void stop_durables(Clock::time_point deadline, ShutdownReport& report) NOTIFICATIONS_EXCLUDES(durable_mutex);
  nlohmann::json durable_health() const NOTIFICATIONS_EXCLUDES(durable_mutex);
  std::atomic<std::int64_t> deadline_ns{0};  // shutdown deadline (steady clock), 0 = none

  struct Counters {
    // The outbound counters are the Outbound part's, the inbound ones the Inbound part's.
    std::atomic<std::uint64_t> dropped[static_cast<std::size_t>(Drop::count_)]{};
  } counters;

  mutable detail::Mutex error_mutex;
  std::string last_error NOTIFICATIONS_GUARDED_BY(error_mutex);
  struct Logged {
    Clock::time_point at;
    std::uint64_t suppressed = 0;
  };
  std::map<std::pair<int, std::string>, Logged> drop_logged NOTIFICATIONS_GUARDED_BY(error_mutex);

  // ---- helpers ------------------------------------------------------------------------------

  bool past_deadline() const override;

  void set_error(std::string text) override NOTIFICATIONS_EXCLUDES(error_mutex);

  // Rate-limited logging: true at most once a second per kind (a Drop, or one of the kinds below)
  // and key; `suppressed` receives how many calls were refused since the last true.
  static constexpr int kLossKind = -1;
  bool should_log(int kind, std::string_view key, std::uint64_t* suppressed = nullptr) NOTIFICATIONS_EXCLUDES(error_mutex);
  // One line a second per drop reason, for malformed messages, and for sequence resets.
  bridge_internal::LogRate drop_log_rate[static_cast<std::size_t>(Drop::count_)];
  bridge_internal::LogRate malformed_log_rate;
  bridge_internal::LogRate reset_log_rate;

  void log_loss(const std::string& subject, std::uint64_t missing);

  // Counts `count` drops and logs them, at most once a second per reason and name.
  void drop(Drop reason, std::string_view name, std::uint64_t count = 1, std::string_view why = {}) override;

  // Wakes flush() and a sender waiting out a backoff. Taking the mutex orders the change before
  // the waiters' predicate checks, so no wake-up is lost.
  void signal_progress() override NOTIFICATIONS_EXCLUDES(progress_mutex);

  std::uint64_t settled() const;

  // ---- outbound (the rest is in `outbound`) -------------------------------------------------

  bool sleep_or_deadline(std::chrono::milliseconds duration) override NOTIFICATIONS_EXCLUDES(progress_mutex);

  // The sender thread: runs outbound.run() and tells shutdown() when it returned.
  void run_sender();

  // ---- inbound ------------------------------------------------------------------------------

  // Runs on a transport thread: only enqueues.
  void receive(Delivery&& delivery);

  void dead_letter(const Message& message, const std::string& reason);

  static constexpr std::size_t kDispatchBatch = 1024;  // deliveries taken from the inbound queue at once

  // Counts, logs and records what inbound.note_sequence() found.
  void note_sequence(const Envelope& envelope, const std::string& subject);

  void dispatch(Delivery& delivery);

  // Empty when `name` (from an envelope) is what `subject` (where it arrived) carries under the
  // configured prefix and is a valid name; otherwise why not, naming the envelope field.
  std::string name_subject_problem(std::string_view name, std::string_view subject) const;

  void run_dispatcher();

  // ---- lifecycle ----------------------------------------------------------------------------

  void start() NOTIFICATIONS_EXCLUDES(lifecycle);

  // ---- fork ----------------------------------------------------------------------------------

  // Sender and dispatcher threads: waits here, holding no other lock, while a fork is prepared.
  void park_if_requested() override;
  void linger(std::chrono::microseconds duration) override NOTIFICATIONS_EXCLUDES(progress_mutex);

  void set_pause(bool requested);

  // Locks `lifecycle` until after_fork(). False (and unlocked) when the threads did not park in
  // time; then they run on. Both outside the analysis (see bridge.cpp).
  bool prepare_fork(Clock::time_point deadline) override NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS;

  void after_fork(bool in_child) override NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS;

  void shut_down_at_exit(Clock::time_point deadline, const char* why) override NOTIFICATIONS_EXCLUDES(lifecycle);

  // In a child forked without prepare_fork()/after_fork(): the sender and dispatcher threads do
  // not exist here, and a client library must not be touched. Stops forwarding, leaves the rest.
  ShutdownReport abandon_in_forked_child() NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS;

  void reset_counters();

  enum class Worker { sender, dispatcher };
  // Whether `worker` said it returned (sender_done, dispatcher_done).
  bool worker_done(Worker worker) const NOTIFICATIONS_REQUIRES(progress_mutex) {
    return worker == Worker::sender ? sender_done : dispatcher_done;
  }

  // Waits until `worker` (its thread, `thread`) returned or `until`; joins it, or detaches it and
  // returns false.
  bool finish_thread(std::thread& thread, Worker worker, Clock::time_point until) NOTIFICATIONS_EXCLUDES(progress_mutex);

  ShutdownReport shutdown(std::chrono::milliseconds timeout) NOTIFICATIONS_EXCLUDES(lifecycle);

  nlohmann::json counters_json() const;

  bool flush(std::chrono::milliseconds timeout) NOTIFICATIONS_EXCLUDES(progress_mutex);

  bool wait_delivered(std::chrono::milliseconds timeout) NOTIFICATIONS_EXCLUDES(progress_mutex);

  nlohmann::json health() const;
};

}  // namespace notifications
