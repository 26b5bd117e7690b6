// Private: the state of a Bridge and its operations, shared by the files that implement them:
//   bridge.cpp           lifecycle (start, shutdown, flush, health), fork, drop accounting
//   bridge_outbound.cpp  instrumenting threads -> outbound queue -> sender thread -> transport
//   bridge_inbound.cpp   transport callback -> inbound queue -> dispatcher thread -> notifier
//
// Thread-safety: each member says which thread runs it or which lock guards it; counters are
// atomics read from any thread.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <span>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "notifications/bounded_queue.hpp"
#include "notifications/thread_name.hpp"
#include "notifications/bridge.hpp"
#include "notifications/describe.hpp"
#include "notifications/envelope.hpp"
#include "notifications/fork_registry.hpp"
#include "notifications/notifications.hpp"
#include "notifications/ids.hpp"
#include "notifications/log.hpp"
#include "notifications/process.hpp"
#include "notifications/outgoing_event.hpp"
#include "notifications/subject.hpp"

namespace notifications {

namespace bridge_internal {

using Clock = std::chrono::steady_clock;

// Why an event or message was not delivered. Each has a counter in health()["counters"]["dropped"].
enum class Drop {
  queue_full,          // outbound queue full (drop_newest, or block timed out), or no memory for it
  queue_evicted,       // removed to make room (drop_oldest)
  after_shutdown,      // instrumented after shutdown() began
  invalid_subject,     // the event name cannot be a subject
  encode_failed,       // the payload could not be encoded
  publish_rejected,    // the transport refused it permanently
  retries_exhausted,   // retry.max_attempts reached
  shutdown_deadline,   // still queued or retrying when shutdown's deadline passed
  inbound_full,        // inbound queue full: the transport's delivery was refused
  dispatch_failed,     // a local listener threw in strict mode while delivering a remote event
  count_,
};

inline constexpr const char* kDropNames[] = {
    "queue_full",        "queue_evicted",     "after_shutdown",    "invalid_subject",
    "encode_failed",     "publish_rejected",  "retries_exhausted", "shutdown_deadline",
    "inbound_full",      "dispatch_failed",
};
static_assert(std::size(kDropNames) == static_cast<std::size_t>(Drop::count_));

inline std::string truncated(std::string_view text, std::size_t limit = 200) {
  if (text.size() <= limit) return std::string(text);
  return std::string(text.substr(0, limit)) + "... (" + std::to_string(text.size()) + " bytes)";
}

enum class State { created, running, stopping, stopped };

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

struct Bridge::Impl : std::enable_shared_from_this<Bridge::Impl>, detail::ForkParticipant {
  using Clock = bridge_internal::Clock;
  using Drop = bridge_internal::Drop;
  using State = bridge_internal::State;

  Impl(Notifier& n, std::shared_ptr<Transport> t, BridgeConfig c, BridgeHooks h)
      : notifier(n),
        transport(std::move(t)),
        config(std::move(c)),
        hooks(std::move(h)),
        outbound(config.queue_capacity, bridge_internal::kIdleSpin,
                 std::min<std::size_t>(config.batch_size, kDispatchBatch)),
        inbound(config.queue_capacity, bridge_internal::kIdleSpin, kDispatchBatch) {
    if (hooks.instance_id.empty()) hooks.instance_id = detail::random_uuid();
  }

  Notifier& notifier;
  const std::shared_ptr<Transport> transport;
  const BridgeConfig config;
  BridgeHooks hooks;

  detail::BoundedQueue<detail::OutgoingEvent> outbound;
  detail::BoundedQueue<Delivery> inbound;

  std::mutex lifecycle;  // serialises start() and shutdown()
  std::atomic<State> state{State::created};
  std::atomic<bool> accepting{false};
  std::vector<Subscription> forwarders;           // guarded by lifecycle
  std::vector<std::uint64_t> remote_subscriptions;  // guarded by lifecycle
  std::thread sender;
  std::thread dispatcher;

  // Fork support: prepare_fork() asks the sender and dispatcher to park outside every lock.
  struct Pause {
    std::mutex mutex;
    std::condition_variable changed;
    bool requested = false;  // guarded by mutex
    int parked = 0;          // guarded by mutex
  };
  std::atomic<bool> pause_requested{false};
  std::unique_ptr<Pause> pause = std::make_unique<Pause>();  // replaced in a forked child
  bool prepared_for_fork = false;  // guarded by lifecycle, which prepare_fork keeps locked
  std::atomic<bool> registered_for_fork{false};
  pid_t owner_pid = 0;  // the process that started the threads; guarded by lifecycle
  std::atomic<std::thread::id> dispatcher_id{};
  std::optional<ShutdownReport> report;  // guarded by lifecycle
  std::atomic<std::int64_t> deadline_ns{0};  // shutdown deadline (steady clock), 0 = none

  // Progress, for flush(): every accepted event ends as sent or dropped.
  std::mutex progress_mutex;
  std::condition_variable progress;

  struct Counters {
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> sent{0};
    std::atomic<std::uint64_t> failed{0};   // publish calls that did not accept everything
    std::atomic<std::uint64_t> retried{0};
    std::atomic<std::uint64_t> received{0};
    std::atomic<std::uint64_t> malformed{0};
    std::atomic<std::uint64_t> echo_suppressed{0};
    std::atomic<std::uint64_t> lost{0};  // gaps in received sequences
    std::atomic<std::uint64_t> dropped[static_cast<std::size_t>(Drop::count_)]{};
  } counters;

  mutable std::mutex error_mutex;
  std::string last_error;  // guarded by error_mutex
  std::map<std::pair<int, std::string>, Clock::time_point> drop_logged;  // guarded by error_mutex

  // ---- helpers ------------------------------------------------------------------------------

  bool past_deadline() const;

  void set_error(std::string text);

  // True at most once a second per kind (a Drop, or kLossKind) and name: rate-limited logging.
  static constexpr int kLossKind = -1;
  bool should_log(int kind, std::string_view name);

  void log_loss(const std::string& subject, std::uint64_t missing);

  // Counts `count` drops and logs them, at most once a second per reason and name.
  void drop(Drop reason, std::string_view name, std::uint64_t count = 1, std::string_view why = {});

  void note_sent(std::uint64_t count);

  // Wakes flush() and a sender waiting out a backoff. Taking the mutex orders the change before
  // the waiters' predicate checks, so no wake-up is lost.
  void signal_progress();

  std::uint64_t settled() const;

  // ---- outbound -----------------------------------------------------------------------------

  // Runs on instrumenting threads: queues the event (payload serialised) and returns.
  void forward(std::size_t pattern_index, const Event& event);

  std::vector<Pattern> forward_patterns;

  std::chrono::milliseconds backoff(int attempt, std::mt19937& rng) const;

  // Waits `duration`, or less when shutdown's deadline comes first. True when the deadline passed.
  bool sleep_or_deadline(std::chrono::milliseconds duration);

  // Publishes `messages` in order, retrying transient failures. Everything ends as sent or
  // dropped (counted, by name).
  void publish_in_order(std::span<const Message> messages, const std::vector<std::string>& names,
                        std::mt19937& rng);

  void run_sender();
  static constexpr std::size_t kKeptBodyBytes = 64 * 1024;  // a reused message body keeps at most this

  // ---- inbound ------------------------------------------------------------------------------

  // Runs on a transport thread: only enqueues.
  void receive(Delivery&& delivery);

  void dead_letter(const Message& message, const std::string& reason);

  // Dispatcher thread only. The last sequence seen per (producer instance, subject); bounded:
  // when full it starts over (a gap spanning that moment goes uncounted).
  std::unordered_map<std::string, std::uint64_t> last_sequence;
  std::string sequence_key;  // dispatcher thread only: the lookup key, reused
  static constexpr std::size_t kMaxSequenceStreams = 65536;
  static constexpr std::size_t kDispatchBatch = 1024;  // deliveries taken from the inbound queue at once

  void note_sequence(const Envelope& envelope, const std::string& subject);

  void dispatch(Delivery& delivery);

  void run_dispatcher();

  // ---- lifecycle ----------------------------------------------------------------------------

  void start();

  // ---- fork ----------------------------------------------------------------------------------

  // Sender and dispatcher threads: waits here, holding no other lock, while a fork is prepared.
  void park_if_requested();

  void set_pause(bool requested);

  // Locks `lifecycle` until after_fork(). False (and unlocked) when the threads did not park in
  // time; then they run on.
  bool prepare_fork(Clock::time_point deadline) override;

  void after_fork(bool in_child) override;

  void shut_down_at_exit(Clock::time_point deadline, const char* why) override;

  // In a child forked without prepare_fork()/after_fork(): the sender and dispatcher threads do
  // not exist here, and a client library must not be touched. Stops forwarding, leaves the rest.
  ShutdownReport abandon_in_forked_child();

  void reset_counters();

  ShutdownReport shutdown(std::chrono::milliseconds timeout);

  bool flush(std::chrono::milliseconds timeout);

  nlohmann::json health() const;
};

}  // namespace notifications
