#include "notifications/bridge.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "notifications/bounded_queue.hpp"
#include "notifications/describe.hpp"
#include "notifications/envelope.hpp"
#include "notifications/fork_registry.hpp"
#include "notifications/notifications.hpp"
#include "notifications/ids.hpp"
#include "notifications/outgoing_event.hpp"
#include "notifications/subject.hpp"

namespace notifications {

namespace {

using Clock = std::chrono::steady_clock;

// Why an event or message was not delivered. Each has a counter in health()["counters"]["dropped"].
enum class Drop {
  queue_full,          // outbound queue full (drop_newest, or block timed out)
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

constexpr const char* kDropNames[] = {
    "queue_full",        "queue_evicted",     "after_shutdown",    "invalid_subject",
    "encode_failed",     "publish_rejected",  "retries_exhausted", "shutdown_deadline",
    "inbound_full",      "dispatch_failed",
};
static_assert(std::size(kDropNames) == static_cast<std::size_t>(Drop::count_));

std::string truncated(std::string_view text, std::size_t limit = 200) {
  if (text.size() <= limit) return std::string(text);
  return std::string(text.substr(0, limit)) + "... (" + std::to_string(text.size()) + " bytes)";
}

enum class State { created, running, stopping, stopped };

const char* state_name(State state) {
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
constexpr std::chrono::microseconds kIdleSpin{50};

}  // namespace

struct Bridge::Impl : std::enable_shared_from_this<Bridge::Impl>, detail::ForkParticipant {
  Impl(Notifier& n, std::shared_ptr<Transport> t, BridgeConfig c, BridgeHooks h)
      : notifier(n),
        transport(std::move(t)),
        config(std::move(c)),
        hooks(std::move(h)),
        outbound(config.queue_capacity, kIdleSpin),
        inbound(config.queue_capacity, kIdleSpin) {
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

  bool past_deadline() const {
    const std::int64_t ns = deadline_ns.load(std::memory_order_acquire);
    return ns != 0 && Clock::now().time_since_epoch().count() >= ns;
  }

  void set_error(std::string text) {
    std::lock_guard lock(error_mutex);
    last_error = std::move(text);
  }

  // True at most once a second per kind (a Drop, or kLossKind) and name: rate-limited logging.
  static constexpr int kLossKind = -1;
  bool should_log(int kind, std::string_view name) {
    std::lock_guard lock(error_mutex);
    const auto now = Clock::now();
    if (drop_logged.size() > 1024) drop_logged.clear();
    auto [it, inserted] = drop_logged.try_emplace({kind, std::string(name)}, now);
    if (inserted || now - it->second >= std::chrono::seconds(1)) {
      it->second = now;
      return true;
    }
    return false;
  }

  void log_loss(const std::string& subject, std::uint64_t missing) {
    if (!should_log(kLossKind, subject)) return;
    spdlog::warn("notifications bridge: {} event(s) on \"{}\" never arrived (a gap in the sender's "
                 "sequence); total lost: {}",
                 missing, truncated(subject, 120), counters.lost.load());
  }

  // Counts `count` drops and logs them, at most once a second per reason and name.
  void drop(Drop reason, std::string_view name, std::uint64_t count = 1, std::string_view why = {}) {
    if (count == 0) return;
    counters.dropped[static_cast<std::size_t>(reason)].fetch_add(count, std::memory_order_relaxed);
    if (should_log(static_cast<int>(reason), name)) {
      spdlog::warn("notifications bridge: dropped {} event(s) \"{}\" ({}{}{}); total for this reason: {}",
                   count, truncated(name, 120), kDropNames[static_cast<int>(reason)],
                   why.empty() ? "" : ": ", truncated(why),
                   counters.dropped[static_cast<std::size_t>(reason)].load());
    }
    signal_progress();
  }

  void note_sent(std::uint64_t count) {
    counters.sent.fetch_add(count, std::memory_order_relaxed);
    signal_progress();
  }

  // Wakes flush() and a sender waiting out a backoff. Taking the mutex orders the change before
  // the waiters' predicate checks, so no wake-up is lost.
  void signal_progress() {
    { std::lock_guard lock(progress_mutex); }
    progress.notify_all();
  }

  std::uint64_t settled() const {
    std::uint64_t total = counters.sent.load();
    for (std::size_t i = 0; i < static_cast<std::size_t>(Drop::count_); ++i) {
      const auto reason = static_cast<Drop>(i);
      if (reason == Drop::queue_full || reason == Drop::after_shutdown ||
          reason == Drop::inbound_full || reason == Drop::dispatch_failed) {
        continue;  // never accepted into the outbound queue, or inbound
      }
      total += counters.dropped[i].load();
    }
    return total;
  }

  // ---- outbound -----------------------------------------------------------------------------

  // Runs on instrumenting threads: copies the event into the queue and returns.
  void forward(std::size_t pattern_index, const Event& event) {
    if (event.remote()) return;  // remote events are never forwarded again
    // With several forward patterns, the first matching one forwards the event.
    for (std::size_t i = 0; i < pattern_index; ++i) {
      if (forward_patterns[i].matches(event.name())) return;
    }
    if (!accepting.load(std::memory_order_acquire)) {
      drop(Drop::after_shutdown, event.name());
      return;
    }
    detail::OutgoingEvent outgoing;
    try {
      outgoing = detail::outgoing_from_event(event);
    } catch (const std::exception& e) {
      drop(Drop::encode_failed, event.name(), 1, e.what());
      return;
    }
    using Queue = detail::BoundedQueue<detail::OutgoingEvent>;
    std::optional<detail::OutgoingEvent> evicted;
    switch (outbound.push(std::move(outgoing), config.overflow, config.block_timeout, &evicted)) {
      case Queue::Push::accepted:
        counters.accepted.fetch_add(1, std::memory_order_relaxed);
        break;
      case Queue::Push::accepted_dropped_oldest:
        counters.accepted.fetch_add(1, std::memory_order_relaxed);
        drop(Drop::queue_evicted, evicted ? std::string_view(evicted->name) : std::string_view("?"));
        break;
      case Queue::Push::dropped_newest:
        drop(Drop::queue_full, event.name());
        break;
      case Queue::Push::closed:
        drop(Drop::after_shutdown, event.name());
        break;
    }
  }

  std::vector<Pattern> forward_patterns;

  std::chrono::milliseconds backoff(int attempt, std::mt19937& rng) const {
    double wait = static_cast<double>(config.retry.initial.count());
    for (int i = 1; i < attempt && wait < static_cast<double>(config.retry.max.count()); ++i) {
      wait *= config.retry.multiplier;
    }
    wait = std::min(wait, static_cast<double>(config.retry.max.count()));
    std::uniform_real_distribution<double> jitter(1.0 - config.retry.jitter, 1.0 + config.retry.jitter);
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::max(1.0, wait * jitter(rng))));
  }

  // Waits `duration`, or less when shutdown's deadline comes first. True when the deadline passed.
  bool sleep_or_deadline(std::chrono::milliseconds duration) {
    auto until = Clock::now() + duration;
    const std::int64_t ns = deadline_ns.load(std::memory_order_acquire);
    if (ns != 0) until = std::min(until, Clock::time_point(Clock::duration(ns)));
    std::unique_lock lock(progress_mutex);
    progress.wait_until(lock, until, [&] { return past_deadline(); });
    return past_deadline();
  }

  // Publishes `messages` in order, retrying transient failures. Everything ends as sent or
  // dropped (counted, by name).
  void publish_in_order(std::span<const Message> messages, const std::vector<std::string>& names,
                        std::mt19937& rng) {
    std::size_t offset = 0;
    int attempt = 0;
    auto drop_rest = [&](Drop reason, std::string_view why) {
      for (std::size_t i = offset; i < messages.size(); ++i) drop(reason, names[i], 1, why);
      offset = messages.size();
    };
    while (offset < messages.size()) {
      const PublishResult result = transport->publish(messages.subspan(offset));
      const std::size_t published = std::min(result.published, messages.size() - offset);
      offset += published;
      note_sent(published);
      if (offset == messages.size()) break;
      if (published > 0) attempt = 0;  // progress: back off from the start again
      counters.failed.fetch_add(1, std::memory_order_relaxed);
      set_error(result.error);
      if (!result.transient) {
        drop_rest(Drop::publish_rejected, result.error);
        break;
      }
      ++attempt;
      if (config.retry.max_attempts > 0 && attempt >= config.retry.max_attempts) {
        drop_rest(Drop::retries_exhausted, result.error);
        break;
      }
      if (past_deadline() || sleep_or_deadline(backoff(attempt, rng))) {
        drop_rest(Drop::shutdown_deadline, result.error);
        break;
      }
      counters.retried.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void run_sender() {
    std::mt19937 rng(std::random_device{}());
    std::vector<detail::OutgoingEvent> batch;
    // Messages and names are overwritten in place batch after batch: their buffers are reused.
    std::vector<Message> messages;
    std::vector<std::string> names;
    // By event name: its subject (validated once) and the last sequence number sent on it.
    struct Stream {
      std::string subject;
      std::uint64_t sequence = 0;
    };
    std::unordered_map<std::string, Stream> streams;
    batch.reserve(config.batch_size);
    while (true) {
      park_if_requested();
      batch.clear();
      if (!outbound.pop_batch(batch, config.batch_size, Clock::now() + std::chrono::milliseconds(100))) {
        break;  // closed and empty
      }
      if (batch.empty()) continue;
      if (past_deadline()) {
        for (const auto& event : batch) drop(Drop::shutdown_deadline, event.name);
        continue;
      }
      std::size_t count = 0;
      for (const auto& event : batch) {
        auto stream = streams.find(event.name);
        if (stream == streams.end()) {
          try {
            stream = streams.emplace(event.name, Stream{subject_for(config.prefix, event.name), 0}).first;
          } catch (const std::exception& e) {
            drop(Drop::invalid_subject, event.name, 1, e.what());
            continue;
          }
        }
        if (count == messages.size()) {
          messages.emplace_back();
          names.emplace_back();
        }
        try {
          detail::encode_outgoing(event, config.app, hooks.instance_id, stream->second.sequence + 1,
                                  stream->second.subject, messages[count]);
        } catch (const std::exception& e) {
          drop(Drop::encode_failed, event.name, 1, e.what());
          continue;
        }
        ++stream->second.sequence;
        names[count].assign(event.name);
        ++count;
      }
      publish_in_order(std::span<const Message>(messages).first(count), names, rng);
    }
    // Anything left (deadline passed while retrying, then closed) is counted.
    for (const auto& event : outbound.take_all()) drop(Drop::shutdown_deadline, event.name);
  }

  // ---- inbound ------------------------------------------------------------------------------

  // Runs on a transport thread: only enqueues.
  void receive(Delivery&& delivery) {
    auto settle = delivery.settle;
    const auto result = inbound.push(std::move(delivery), OverflowPolicy::drop_newest,
                                     std::chrono::milliseconds(0));
    if (result == detail::BoundedQueue<Delivery>::Push::accepted) return;
    // Not taken: let a transport with acknowledgements redeliver it later.
    if (settle) settle(Settle::nak);
    drop(Drop::inbound_full, "(inbound message)");
  }

  void dead_letter(const Message& message, const std::string& reason) {
    counters.malformed.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("notifications bridge: malformed message on \"{}\": {}; body: {}",
                 truncated(message.subject, 120), truncated(reason), truncated(message.body, 120));
    if (!hooks.dead_letter) return;
    try {
      hooks.dead_letter(message, reason);
    } catch (...) {
      set_error("dead-letter hook threw: " + detail::describe_exception(std::current_exception()));
    }
  }

  // Dispatcher thread only. The last sequence seen per (producer instance, subject); bounded:
  // when full it starts over (a gap spanning that moment goes uncounted).
  std::unordered_map<std::string, std::uint64_t> last_sequence;
  static constexpr std::size_t kMaxSequenceStreams = 65536;

  void note_sequence(const Envelope& envelope, const std::string& subject) {
    std::string key = envelope.producer_instance;
    key.push_back('\0');
    key += subject;
    if (last_sequence.size() >= kMaxSequenceStreams && last_sequence.count(key) == 0) last_sequence.clear();
    std::uint64_t& last = last_sequence[key];
    if (last != 0 && envelope.sequence > last + 1) {
      const std::uint64_t missing = envelope.sequence - last - 1;
      counters.lost.fetch_add(missing, std::memory_order_relaxed);
      set_error(std::to_string(missing) + " event(s) lost on \"" + subject + "\" from " + envelope.producer +
                " (sequence " + std::to_string(last) + " then " + std::to_string(envelope.sequence) + ")");
      log_loss(subject, missing);
    }
    if (envelope.sequence > last) last = envelope.sequence;
  }

  void dispatch(Delivery& delivery) {
    DecodeResult decoded = decode_envelope(delivery.message.body);
    if (!decoded) {
      dead_letter(delivery.message, decoded.error);
      if (delivery.settle) delivery.settle(Settle::term);
      return;
    }
    if (decoded.envelope->producer_instance == hooks.instance_id) {
      counters.echo_suppressed.fetch_add(1, std::memory_order_relaxed);
      if (delivery.settle) delivery.settle(Settle::ack);
      return;
    }
    counters.received.fetch_add(1, std::memory_order_relaxed);
    if (config.group.empty() && decoded.envelope->sequence != 0) {
      note_sequence(*decoded.envelope, delivery.message.subject);
    }
    const std::string name = decoded.envelope->name;
    try {
      notifier.publish(event_from_envelope(std::move(*decoded.envelope), transport->kind()));
    } catch (...) {
      // Strict-mode listener errors or an invalid name: the event was delivered to every
      // listener that did not throw.
      drop(Drop::dispatch_failed, name, 1, detail::describe_exception(std::current_exception()));
    }
    if (delivery.settle) delivery.settle(Settle::ack);
  }

  void run_dispatcher() {
    dispatcher_id.store(std::this_thread::get_id());
    std::vector<Delivery> batch;
    while (true) {
      park_if_requested();
      batch.clear();
      if (!inbound.pop_batch(batch, 64, Clock::now() + std::chrono::milliseconds(100))) break;
      for (Delivery& delivery : batch) {
        if (past_deadline()) {  // shutdown's deadline passed: count the rest, deliver no more
          drop(Drop::shutdown_deadline, "(inbound message)");
          if (delivery.settle) delivery.settle(Settle::nak);
          continue;
        }
        dispatch(delivery);
      }
    }
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  void start() {
    std::lock_guard lock(lifecycle);
    if (state.load() == State::running) return;
    if (state.load() != State::created) {
      throw TransportError("bridge: start() after shutdown(); create a new Bridge");
    }
    transport->start();
    std::weak_ptr<Impl> weak = shared_from_this();
    for (const std::string& pattern : config.subscribe) {
      DeliveryOptions options(config.group);
      options.headers = false;  // the envelope body carries everything the dispatcher reads
      remote_subscriptions.push_back(transport->subscribe(
          config.prefix + "." + pattern, options, [weak](Delivery&& delivery) {
            if (auto self = weak.lock()) {
              self->receive(std::move(delivery));
            } else if (delivery.settle) {
              delivery.settle(Settle::nak);
            }
          }));
    }
    sender = std::thread([this] { run_sender(); });  // joined by shutdown(), which ~Bridge calls
    // The dispatcher keeps the Impl alive: shutdown() may run on it and not wait for it.
    dispatcher = std::thread([self = shared_from_this()] { self->run_dispatcher(); });
    accepting.store(true, std::memory_order_release);
    for (std::size_t i = 0; i < forward_patterns.size(); ++i) {
      forwarders.push_back(notifier.subscribe(forward_patterns[i], [weak, i](const Event& event) {
        if (auto self = weak.lock()) self->forward(i, event);
      }));
    }
    owner_pid = getpid();
    state.store(State::running);
    spdlog::debug("notifications bridge: started (transport {}, app \"{}\", instance {})",
                 transport->kind(), config.app, hooks.instance_id);
  }

  // ---- fork ----------------------------------------------------------------------------------

  // Sender and dispatcher threads: waits here, holding no other lock, while a fork is prepared.
  void park_if_requested() {
    if (!pause_requested.load(std::memory_order_acquire)) return;
    Pause& p = *pause;
    std::unique_lock lock(p.mutex);
    if (!p.requested) return;
    ++p.parked;
    p.changed.notify_all();
    p.changed.wait(lock, [&] { return !p.requested; });
    --p.parked;
  }

  void set_pause(bool requested) {
    {
      std::lock_guard lock(pause->mutex);
      pause->requested = requested;
    }
    pause_requested.store(requested, std::memory_order_release);
    pause->changed.notify_all();
  }

  // Locks `lifecycle` until after_fork(). False (and unlocked) when the threads did not park in
  // time; then they run on.
  bool prepare_fork(Clock::time_point deadline) override {
    lifecycle.lock();
    prepared_for_fork = state.load() == State::running;
    if (!prepared_for_fork) return true;  // nothing runs: nothing to park
    set_pause(true);
    bool parked = false;
    {
      std::unique_lock lock(pause->mutex);
      parked = pause->changed.wait_until(lock, deadline, [&] { return pause->parked == 2; });
    }
    if (!parked) {
      set_pause(false);
      prepared_for_fork = false;
      lifecycle.unlock();
      return false;
    }
    transport->prepare_fork(deadline);
    return true;
  }

  void after_fork(bool in_child) override {
    if (prepared_for_fork) {
      prepared_for_fork = false;
      if (in_child) {
        // The parked threads do not exist here: forget them without joining, and start afresh.
        new std::thread(std::move(sender));      // leaked on purpose: never joined
        new std::thread(std::move(dispatcher));  // leaked on purpose: never joined
        (void)pause.release();                   // still counts the parent's waiters: leaked
        pause = std::make_unique<Pause>();
        pause_requested.store(false, std::memory_order_release);
        hooks.instance_id = detail::random_uuid();
        owner_pid = getpid();
        outbound.take_all();  // the parent's events: the parent sends them
        inbound.take_all();
        reset_counters();
        transport->after_fork(true);
        sender = std::thread([this] { run_sender(); });
        dispatcher = std::thread([self = shared_from_this()] { self->run_dispatcher(); });
      } else {
        transport->after_fork(false);
        set_pause(false);
      }
    }
    lifecycle.unlock();
  }

  // In a child forked without prepare_fork()/after_fork(): the sender and dispatcher threads do
  // not exist here, and a client library must not be touched. Stops forwarding, leaves the rest.
  ShutdownReport abandon_in_forked_child() {
    accepting.store(false, std::memory_order_release);
    state.store(State::stopped);
    new std::thread(std::move(sender));      // leaked on purpose: never joined
    new std::thread(std::move(dispatcher));  // leaked on purpose: never joined
    const std::string detail =
        "forked child without notifications::prepare_fork()/after_fork(): the bridge was abandoned; "
        "its queue belongs to the parent";
    spdlog::error("notifications bridge: {}", detail);
    report = ShutdownReport{false, 0, 0, detail};
    return *report;
  }

  void reset_counters() {
    for (auto* counter : {&counters.accepted, &counters.sent, &counters.failed, &counters.retried,
                          &counters.received, &counters.malformed, &counters.echo_suppressed, &counters.lost}) {
      counter->store(0);
    }
    for (auto& counter : counters.dropped) counter.store(0);
  }

  ShutdownReport shutdown(std::chrono::milliseconds timeout) {
    std::lock_guard lock(lifecycle);
    if (report) return *report;
    if (state.load() == State::running && owner_pid != getpid()) return abandon_in_forked_child();
    const auto deadline = Clock::now() + timeout;
    const bool was_running = state.load() == State::running;
    state.store(State::stopping);
    deadline_ns.store(deadline.time_since_epoch().count(), std::memory_order_release);

    // 1. Stop accepting: later events are refused and counted (the forward listeners stay
    // subscribed until the Bridge is destroyed, to count them).
    accepting.store(false, std::memory_order_release);
    // 2. Drain the outbound queue through the sender (it gives up at the deadline).
    outbound.close();
    signal_progress();
    if (sender.joinable()) sender.join();
    for (const auto& event : outbound.take_all()) drop(Drop::shutdown_deadline, event.name);
    // 3. Flush the transport, 4. let its subscriptions hand over what they hold (into the
    // inbound queue), and close it.
    const bool flushed = was_running ? transport->flush(deadline) : true;
    transport->stop(deadline);
    remote_subscriptions.clear();
    // 5. Deliver what was received, then stop the dispatcher. On the dispatcher thread itself
    // (shutdown from a remote-event listener) it stops after the current listener returns.
    inbound.close();
    if (dispatcher.joinable()) {
      if (dispatcher_id.load() == std::this_thread::get_id()) {
        dispatcher.detach();  // it owns a reference to this Impl and exits once the queue is empty
      } else {
        dispatcher.join();
      }
    }
    state.store(State::stopped);

    ShutdownReport result;
    result.sent = counters.sent.load();
    const std::uint64_t accepted = counters.accepted.load();
    const std::uint64_t settled_now = settled();
    result.undelivered = accepted > result.sent ? accepted - result.sent : 0;
    result.clean = flushed && result.undelivered == 0 && settled_now >= accepted;
    result.detail = "accepted " + std::to_string(accepted) + ", sent " + std::to_string(result.sent) +
                    ", undelivered " + std::to_string(result.undelivered) +
                    (flushed ? "" : ", transport flush timed out");
    if (result.clean) {
      spdlog::info("notifications bridge: shut down: {}", result.detail);
    } else {
      spdlog::warn("notifications bridge: shut down with losses: {}", result.detail);
    }
    report = result;
    return result;
  }

  bool flush(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    {
      std::unique_lock lock(progress_mutex);
      if (!progress.wait_until(lock, deadline, [&] { return settled() >= counters.accepted.load(); })) {
        return false;
      }
    }
    return transport->flush(deadline);
  }

  nlohmann::json health() const {
    nlohmann::json dropped = nlohmann::json::object();
    for (std::size_t i = 0; i < static_cast<std::size_t>(Drop::count_); ++i) {
      dropped[kDropNames[i]] = counters.dropped[i].load();
    }
    nlohmann::json transport_health;
    try {
      transport_health = transport->health();
    } catch (const std::exception& e) {
      transport_health = {{"error", e.what()}};
    }
    std::string error;
    {
      std::lock_guard lock(error_mutex);
      error = last_error;
    }
    return {
        {"state", state_name(state.load())},
        {"instance_id", hooks.instance_id},
        {"app", config.app},
        {"url", redact_url(config.url)},
        {"transport", std::move(transport_health)},
        {"queue", {{"depth", outbound.size()}, {"capacity", outbound.capacity()},
                   {"overflow", to_string(config.overflow)}}},
        {"inbound_queue", {{"depth", inbound.size()}, {"capacity", inbound.capacity()}}},
        {"counters",
         {{"accepted", counters.accepted.load()},
          {"sent", counters.sent.load()},
          {"failed", counters.failed.load()},
          {"retried", counters.retried.load()},
          {"received", counters.received.load()},
          {"malformed", counters.malformed.load()},
          {"echo_suppressed", counters.echo_suppressed.load()},
          {"lost", counters.lost.load()},
          {"dropped", std::move(dropped)}}},
        {"last_error", error},
    };
  }
};

Bridge::Bridge(Notifier& notifier, std::shared_ptr<Transport> transport, BridgeConfig config,
               BridgeHooks hooks) {
  if (!transport) throw ConfigError("bridge: transport is null");
  config.validate();
  impl_ = std::make_shared<Impl>(notifier, std::move(transport), std::move(config), std::move(hooks));
  for (const std::string& pattern : impl_->config.forward) impl_->forward_patterns.emplace_back(pattern);
}

Bridge::~Bridge() {
  try {
    shutdown(std::chrono::seconds(5));
  } catch (...) {
    // A destructor must not throw; shutdown() already logged what it could not do.
  }
  std::lock_guard lock(impl_->lifecycle);
  impl_->forwarders.clear();
}

void Bridge::start() {
  impl_->start();
  // Outside the lifecycle lock: prepare_fork() takes the registry's lock, then each lifecycle.
  if (!impl_->registered_for_fork.exchange(true)) detail::register_fork_participant(impl_);
}
bool Bridge::flush(std::chrono::milliseconds timeout) { return impl_->flush(timeout); }
ShutdownReport Bridge::shutdown(std::chrono::milliseconds timeout) { return impl_->shutdown(timeout); }
nlohmann::json Bridge::health() const { return impl_->health(); }
const std::string& Bridge::instance_id() const noexcept { return impl_->hooks.instance_id; }
const BridgeConfig& Bridge::config() const noexcept { return impl_->config; }

// ---- configure() --------------------------------------------------------------------------------

namespace {
std::mutex default_bridge_mutex;
std::shared_ptr<Bridge> default_bridge;  // guarded by default_bridge_mutex
}  // namespace

std::shared_ptr<Bridge> configure() { return configure(config_from_environment()); }

std::shared_ptr<Bridge> configure(BridgeConfig config) {
  config.validate();
  TransportConfig transport_config{config.url, config.transport};
  auto bridge = std::make_shared<Bridge>(default_notifier(), make_transport(transport_config),
                                         std::move(config));
  bridge->start();
  std::shared_ptr<Bridge> previous;
  {
    std::lock_guard lock(default_bridge_mutex);
    previous = std::exchange(default_bridge, bridge);
  }
  if (previous) previous->shutdown();
  return bridge;
}

ShutdownReport shutdown(std::chrono::milliseconds timeout) {
  std::shared_ptr<Bridge> bridge;
  {
    std::lock_guard lock(default_bridge_mutex);
    bridge = std::move(default_bridge);
  }
  if (!bridge) return ShutdownReport{true, 0, 0, "no bridge configured"};
  return bridge->shutdown(timeout);
}

}  // namespace notifications
