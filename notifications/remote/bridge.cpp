// Bridge: lifecycle, fork, drop accounting and health (see bridge_impl.hpp for the other parts).
#include "remote/bridge_impl.hpp"

namespace notifications {

using namespace bridge_internal;
using detail::MutexLock;
using detail::UniqueMutexLock;

bool Bridge::Impl::past_deadline() const {
  const std::int64_t ns = deadline_ns.load(std::memory_order_acquire);
  return ns != 0 && Clock::now().time_since_epoch().count() >= ns;
}

void Bridge::Impl::set_error(std::string text) {
  MutexLock lock(error_mutex);
  last_error = std::move(text);
}

bool Bridge::Impl::should_log(int kind, std::string_view key, std::uint64_t* suppressed) {
  MutexLock lock(error_mutex);
  const auto now = Clock::now();
  if (drop_logged.size() > 1024) drop_logged.clear();
  auto [it, inserted] = drop_logged.try_emplace({kind, std::string(key)}, Logged{now, 0});
  if (inserted || now - it->second.at >= std::chrono::seconds(1)) {
    if (suppressed != nullptr) *suppressed = inserted ? 0 : it->second.suppressed;
    it->second = Logged{now, 0};
    return true;
  }
  ++it->second.suppressed;
  return false;
}

namespace {
std::string suppressed_note(std::uint64_t suppressed) {
  return suppressed == 0 ? std::string() : " (" + std::to_string(suppressed) + " similar line(s) suppressed)";
}
}  // namespace

void Bridge::Impl::log_loss(const std::string& subject, std::uint64_t missing) {
  std::uint64_t suppressed = 0;
  if (!should_log(kLossKind, subject, &suppressed)) return;
  detail::log(detail::LogLevel::warn,
              "notifications bridge: {} event(s) on \"{}\" never arrived (a gap in the sender's "
              "sequence); total lost: {}{}",
              missing, truncated(subject, 120), inbound.counters().lost.load(), suppressed_note(suppressed));
}

void Bridge::Impl::drop(Drop reason, std::string_view name, std::uint64_t count, std::string_view why) {
  if (count == 0) return;
  const auto index = static_cast<std::size_t>(reason);
  counters.dropped[index].fetch_add(count, std::memory_order_relaxed);
  // One line a second per reason, naming the event that got it through: a peer (or an outage)
  // cannot flood the log, and a suppressed line costs no lock.
  std::uint64_t suppressed = 0;
  if (drop_log_rate[index].allow(suppressed)) {
    detail::log(detail::LogLevel::warn,
                "notifications bridge: dropped {} event(s) \"{}\" ({}{}{}); total for this reason: {}{}",
                count, truncated(name, 120), kDropNames[index], why.empty() ? "" : ": ", truncated(why),
                counters.dropped[index].load(), suppressed_note(suppressed));
  }
  // flush() waits for accepted events to settle: only their drops can end its wait.
  if (counts_accepted(reason)) signal_progress();
}

void Bridge::Impl::refuse_in_forked_child() {
  counters.dropped[static_cast<std::size_t>(Drop::forked_child)].fetch_add(1, std::memory_order_relaxed);
  tell_forked_child_once();
}

void Bridge::Impl::tell_forked_child_once() {
  const std::uint64_t now = detail::fork_generation();
  if (fork_refusal_told.exchange(now, std::memory_order_relaxed) == now) return;
  // No spdlog here: its lock may have been held by another thread when fork() ran.
  detail::write_stderr_unlocked(
      "[notifications] bridge used in a forked child without notifications::prepare_fork() before "
      "fork() and notifications::after_fork() after it: its threads and connection belong to the "
      "parent; events are refused and counted (health: counters.dropped.forked_child)\n");
}

void Bridge::Impl::signal_progress() {
  { MutexLock lock(progress_mutex); }
  progress.notify_all();
}

std::uint64_t Bridge::Impl::settled() const {
  std::uint64_t total = outbound.counters().sent.load();
  for (std::size_t i = 0; i < static_cast<std::size_t>(Drop::count_); ++i) {
    if (counts_accepted(static_cast<Drop>(i))) total += counters.dropped[i].load();
  }
  return total;
}

bool Bridge::Impl::sleep_or_deadline(std::chrono::milliseconds duration) {
  const auto wake = Clock::now() + duration;
  UniqueMutexLock lock(progress_mutex);
  while (!past_deadline()) {
    // shutdown() sets the deadline and then signals progress: the wait is cut to it.
    const std::int64_t ns = deadline_ns.load(std::memory_order_acquire);
    auto until = wake;
    if (ns != 0) until = std::min(until, Clock::time_point(Clock::duration(ns)));
    if (Clock::now() >= until) break;
    while (!past_deadline() && deadline_ns.load(std::memory_order_acquire) == ns) {
      if (lock.wait_until(progress, until) == std::cv_status::timeout) break;
    }
  }
  return past_deadline();
}

void Bridge::Impl::run_sender() {
  detail::name_this_thread("ntf-sender");
  detail::mark_bus_thread();
  struct Done {  // tells shutdown() this thread returned, however it leaves
    Impl& impl;
    ~Done() {
      {
        MutexLock lock(impl.progress_mutex);
        impl.sender_done = true;
      }
      impl.progress.notify_all();
    }
  } done{*this};
  outbound.run();
}

void Bridge::Impl::start() {
  MutexLock lock(lifecycle);
  if (state.load() == State::running) return;
  if (state.load() != State::created) {
    throw TransportError("bridge: start() after shutdown(); create a new Bridge");
  }
  transport->start();
  std::weak_ptr<Impl> weak = shared_from_this();
  for (const std::string& pattern : config.subscribe) {
    DeliveryOptions options(config.group);
    options.start = config.start;
    // The envelope body carries everything the dispatcher reads; a dead-letter hook sees the
    // message as it arrived, headers included; redelivery suppression needs Message::id, which
    // some transports carry as a header (NATS).
    options.headers = static_cast<bool>(hooks.dead_letter) || inbound.suppressing();
    remote_subscriptions.push_back(transport->subscribe(
        config.prefix + "." + pattern, options, [weak](Delivery&& delivery) {
          if (auto self = weak.lock()) {
            self->receive(std::move(delivery));
          } else if (delivery.settle) {
            delivery.settle(Settle::nak);
          }
        }));
  }
  generation.store(detail::fork_generation(), std::memory_order_relaxed);
  // Both threads keep the Impl alive: shutdown() may run on the dispatcher, and leaves either
  // behind when it does not return by the deadline.
  sender = std::thread([self = shared_from_this()] { self->run_sender(); });
  dispatcher = std::thread([self = shared_from_this()] { self->run_dispatcher(); });
  outbound.start_accepting();
  for (std::size_t i = 0; i < outbound.patterns().size(); ++i) {
    forwarders.push_back(notifier.subscribe(outbound.patterns()[i], [weak, i](const Event& event) {
      if (auto self = weak.lock()) self->outbound.forward(i, event);
    }));
  }
  state.store(State::running);
  // After `running`: a subscribe_durable() racing with start() starts its handler itself.
  start_durables();
  detail::log(detail::LogLevel::debug, "notifications bridge: started (transport {}, app \"{}\", instance {})",
               transport->kind(), config.app, hooks.instance_id);
}

void Bridge::Impl::linger(std::chrono::microseconds duration) {
  const auto until = Clock::now() + duration;
  UniqueMutexLock lock(progress_mutex);
  // shutdown() sets the deadline and set_pause(true) the request, each then signals progress.
  while (deadline_ns.load(std::memory_order_acquire) == 0 && !pause_requested.load(std::memory_order_acquire)) {
    if (lock.wait_until(progress, until) == std::cv_status::timeout) break;
  }
}

void Bridge::Impl::park_if_requested() {
  if (!pause_requested.load(std::memory_order_acquire)) return;
  Pause& p = *pause;
  UniqueMutexLock lock(p.mutex);
  if (!p.requested) return;
  ++p.parked;
  p.changed.notify_all();
  while (p.requested) lock.wait(p.changed);
  --p.parked;
}

void Bridge::Impl::set_pause(bool requested) {
  {
    MutexLock lock(pause->mutex);
    pause->requested = requested;
  }
  pause_requested.store(requested, std::memory_order_release);
  pause->changed.notify_all();
  if (requested) {  // both wait for work with no timer: ask them to look
    inbound.wake();
    outbound.wake();
    signal_progress();  // a lingering sender
  }
}

// Not analysed: it returns holding `lifecycle` (for after_fork()), which the ForkParticipant
// interface cannot name; the path that gives up releases it.
bool Bridge::Impl::prepare_fork(Clock::time_point deadline) NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
  lifecycle.lock();
  prepared_for_fork = state.load() == State::running;
  if (!prepared_for_fork) return true;  // nothing runs: nothing to park
  set_pause(true);
  bool parked = false;
  {
    Pause& p = *pause;
    UniqueMutexLock lock(p.mutex);
    while (p.parked != 2) {
      if (lock.wait_until(p.changed, deadline) == std::cv_status::timeout) break;
    }
    parked = p.parked == 2;
  }
  if (parked && !outbound.prepare_fork(deadline)) parked = false;  // the outbox's own thread
  if (!parked) {
    set_pause(false);
    prepared_for_fork = false;
    lifecycle.unlock();
    return false;
  }
  transport->prepare_fork(deadline);
  return true;
}

// Not analysed: it releases `lifecycle`, which prepare_fork() left locked (the fork registry calls
// the one after the other on the thread that forks; the interface cannot name the lock), and it
// touches what lifecycle guards with it held that way.
void Bridge::Impl::after_fork(bool in_child) NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
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
      generation.store(detail::fork_generation(), std::memory_order_relaxed);
      outbound.reset_in_forked_child();  // the parent's events: the parent sends them
      inbound.reset();
      reset_counters();
      {
        MutexLock lock(progress_mutex);
        sender_done = false;
        dispatcher_done = false;
      }
      transport->after_fork(true);
      sender = std::thread([self = shared_from_this()] { self->run_sender(); });
      dispatcher = std::thread([self = shared_from_this()] { self->run_dispatcher(); });
    } else {
      transport->after_fork(false);
      outbound.after_fork_in_parent();
      set_pause(false);
    }
  }
  lifecycle.unlock();
}

// Not analysed: it moves `sender` and `dispatcher` (guarded by lifecycle) without the lock.
// No lock: any of them may have been held by a thread that does not exist in this process. The
// exchange on `abandoned` lets one call only take the threads; a forked child that did not call
// after_fork() has no sender or dispatcher, and start() refuses after the first shutdown().
ShutdownReport Bridge::Impl::abandon_in_forked_child() NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
  outbound.stop_accepting();
  if (!abandoned.exchange(true)) {
    new std::thread(std::move(sender));      // leaked on purpose: never joined
    new std::thread(std::move(dispatcher));  // leaked on purpose: never joined
    tell_forked_child_once();
  }
  ShutdownReport abandoned_report;
  abandoned_report.clean = false;
  abandoned_report.detail =
      "forked child without notifications::prepare_fork()/after_fork(): the bridge was abandoned; "
      "its queue belongs to the parent";
  return abandoned_report;
}

void Bridge::Impl::shut_down_at_exit(Clock::time_point deadline, const char* why) {
  if (in_forked_child()) return;  // started in the parent, which shuts it down
  {
    MutexLock lock(lifecycle);
    if (report || state.load() != State::running) return;
  }
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  detail::log(detail::LogLevel::warn,
              "notifications bridge \"{}\": shutdown() was not called and {}; shutting down now "
              "(within {} ms)",
              config.app, why, left.count());
  shutdown(std::max(left, std::chrono::milliseconds(0)));
}

void Bridge::Impl::reset_counters() {
  // The outbound counters: Outbound::reset_in_forked_child().
  inbound.reset_counters();
  for (auto& counter : counters.dropped) counter.store(0);
}

bool Bridge::Impl::finish_thread(std::thread& thread, Worker worker, Clock::time_point until) {
  if (!thread.joinable()) return true;
  {
    UniqueMutexLock lock(progress_mutex);
    while (!worker_done(worker)) {
      if (lock.wait_until(progress, until) == std::cv_status::timeout) break;
    }
    if (!worker_done(worker)) {
      thread.detach();  // it holds a reference to this Impl: nothing it touches is freed
      return false;
    }
  }
  thread.join();
  return true;
}

ShutdownReport Bridge::Impl::shutdown(std::chrono::milliseconds timeout) {
  // Before any lock: in a forked child each may have been held by a thread that is gone.
  if (state.load() != State::created && in_forked_child()) return abandon_in_forked_child();
  MutexLock lock(lifecycle);
  if (report) return *report;
  const auto deadline = Clock::now() + timeout;
  const bool was_running = state.load() == State::running;
  state.store(State::stopping);
  deadline_ns.store(deadline.time_since_epoch().count(), std::memory_order_release);

  // 0. Durable handlers: no new deliveries, the running calls finish (what they instrument is
  // still forwarded), what waits goes back to the transport.
  ShutdownReport durable_part;
  stop_durables(deadline, durable_part);
  // 1. Stop accepting: later events are refused and counted (the forward listeners stay
  // subscribed until the Bridge is destroyed, to count them).
  outbound.stop_accepting();
  // 2. Drain the outbound queue through the sender (it gives up at the deadline; a sender stuck
  // in the transport is left behind kJoinGrace after it).
  outbound.close();
  signal_progress();
  const bool sender_returned = finish_thread(sender, Worker::sender, deadline + kJoinGrace);
  outbound.drop_remaining();
  // 3. Flush the transport (what it confirms is counted as confirmed), 4. let its subscriptions
  // hand over what they hold (into the inbound queue), and close it.
  const bool flushed = was_running && sender_returned ? outbound.confirm(deadline) : !was_running;
  transport->stop(deadline);
  remote_subscriptions.clear();
  // 5. Deliver what was received, then stop the dispatcher. On the dispatcher thread itself
  // (shutdown from a remote-event listener) it stops after the current listener returns; a
  // dispatcher inside a listener past the deadline is left behind, and what it still held counted.
  inbound.close();
  bool dispatcher_returned = true;
  std::uint64_t left_with_dispatcher = 0;
  if (dispatcher.joinable()) {
    if (dispatcher_id.load() == std::this_thread::get_id()) {
      dispatcher.detach();  // it owns a reference to this Impl and exits once the queue is empty
    } else {
      dispatcher_returned = finish_thread(dispatcher, Worker::dispatcher, deadline + kJoinGrace);
    }
  }
  if (!dispatcher_returned) {
    std::uint64_t left = 0;
    for (auto& delivery : inbound.take_all()) {
      if (delivery.settle) delivery.settle(Settle::nak);
      ++left;
    }
    drop(Drop::inbound_deadline, "(inbound message)", left);
    left_with_dispatcher = dispatcher_backlog.load();
    detail::log(detail::LogLevel::warn,
                "notifications bridge: a listener of remote events was still running at shutdown's "
                "deadline; the dispatcher is left to finish it ({} received event(s) not delivered)",
                left_with_dispatcher);
  }
  state.store(State::stopped);

  ShutdownReport result = durable_part;
  result.sent = outbound.counters().sent.load();
  result.confirmed = outbound.counters().confirmed.load();
  const std::uint64_t accepted = outbound.counters().accepted.load();
  result.kept = outbound.kept();
  result.undelivered = accepted > result.confirmed + result.kept ? accepted - result.confirmed - result.kept : 0;
  result.inbound_undelivered =
      counters.dropped[static_cast<std::size_t>(Drop::inbound_deadline)].load() + left_with_dispatcher;
  result.clean = flushed && result.undelivered == 0 && result.inbound_undelivered == 0 &&
                 result.durable_unfinished == 0 && sender_returned && dispatcher_returned;
  result.detail = "accepted " + std::to_string(accepted) + ", sent " + std::to_string(result.sent) +
                  ", confirmed " + std::to_string(result.confirmed) +
                  (outbound.persistent() ? ", kept in the outbox for the next start " + std::to_string(result.kept) : "") +
                  ", undelivered " +
                  std::to_string(result.undelivered) + ", received " + std::to_string(inbound.counters().received.load()) +
                  ", received but not delivered " + std::to_string(result.inbound_undelivered) +
                  (result.durable_returned + result.durable_unfinished == 0
                       ? ""
                       : ", durable handlers: " + std::to_string(result.durable_returned) +
                             " given back to the transport, " + std::to_string(result.durable_unfinished) +
                             " unfinished") +
                  (flushed || !sender_returned ? "" : ", transport flush failed or timed out") +
                  (sender_returned ? "" : ", sender still inside the transport at the deadline");
  if (result.clean) {
    detail::log(detail::LogLevel::info, "notifications bridge: shut down: {}", result.detail);
  } else {
    detail::log(detail::LogLevel::warn, "notifications bridge: shut down with losses: {}", result.detail);
  }
  report = result;
  return result;
}

bool Bridge::Impl::flush(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  {
    UniqueMutexLock lock(progress_mutex);
    while (settled() < outbound.counters().accepted.load()) {
      if (lock.wait_until(progress, deadline) == std::cv_status::timeout) break;
    }
    if (settled() < outbound.counters().accepted.load()) return false;
  }
  return outbound.confirm(deadline);
}

bool Bridge::Impl::wait_delivered(std::chrono::milliseconds timeout) {
  const std::uint64_t target = inbound.taken();
  wait_delivered_waiters.fetch_add(1);
  bool done = false;
  {
    UniqueMutexLock lock(progress_mutex);
    const auto until = Clock::now() + timeout;
    while (inbound.handled() < target) {
      if (lock.wait_until(progress, until) == std::cv_status::timeout) break;
    }
    done = inbound.handled() >= target;
  }
  wait_delivered_waiters.fetch_sub(1);
  return done;
}

nlohmann::json Bridge::Impl::counters_json() const {
  nlohmann::json dropped = nlohmann::json::object();
  for (std::size_t i = 0; i < static_cast<std::size_t>(Drop::count_); ++i) {
    dropped[kDropNames[i]] = counters.dropped[i].load();
  }
  const auto& out = outbound.counters();
  return {{"accepted", out.accepted.load()},
          {"sent", out.sent.load()},
          {"confirmed", out.confirmed.load()},
          {"blocked", out.blocked.load()},
          {"failed", out.failed.load()},
          {"retried", out.retried.load()},
          {"replayed", out.replayed.load()},
          {"received", inbound.counters().received.load()},
          {"malformed", inbound.counters().malformed.load()},
          {"echo_suppressed", inbound.counters().echo_suppressed.load()},
          {"lost", inbound.counters().lost.load()},
          {"sequence_resets", inbound.counters().sequence_resets.load()},
          {"redeliveries_suppressed", inbound.counters().redeliveries_suppressed.load()},
          {"observer_errors", observer ? observer->errors.load() : 0},
          {"dropped", std::move(dropped)}};
}

nlohmann::json Bridge::Impl::health() const {
  if (state.load() != State::created && in_forked_child()) {
    // Atomics only: the transport, the queues' and the error locks may be held by threads that
    // do not exist in this process.
    return {{"state", "forked_child"},
            {"instance_id", hooks.instance_id},
            {"app", config.app},
            {"detail",
             "this process was forked without notifications::prepare_fork()/after_fork(): the bridge "
             "refuses events (counters.dropped.forked_child)"},
            {"queue", outbound.queue_health(true)},
            {"counters", counters_json()}};
  }
  nlohmann::json transport_health;
  try {
    transport_health = transport->health();
  } catch (const std::exception& e) {
    transport_health = {{"error", e.what()}};
  }
  std::string error;
  {
    MutexLock lock(error_mutex);
    error = last_error;
  }
  nlohmann::json out = {
      {"state", state_name(state.load())},
      {"instance_id", hooks.instance_id},
      {"app", config.app},
      {"url", redact_url(config.url)},
      {"transport", std::move(transport_health)},
      {"queue", outbound.queue_health(false)},
      {"inbound_queue", {{"depth", inbound.size()}, {"capacity", inbound.capacity()},
                         {"bytes", inbound.bytes()}, {"max_bytes", inbound.max_bytes()}}},
      {"redelivery", inbound.redelivery_health()},
      {"counters", counters_json()},
      {"last_error", error},
  };
  if (nlohmann::json durable = durable_health(); !durable.empty()) out["durable"] = std::move(durable);
  return out;
}

Bridge::Bridge(Notifier& notifier, std::shared_ptr<Transport> transport, BridgeConfig config,
               BridgeHooks hooks) {
  if (!transport) throw ConfigError("bridge: transport is null");
  config.validate();
  impl_ = std::make_shared<Impl>(notifier, std::move(transport), std::move(config), std::move(hooks));
}

Bridge::~Bridge() {
  try {
    shutdown(std::chrono::seconds(5));
  } catch (...) {
    // A destructor must not throw; shutdown() already logged what it could not do.
  }
  // In a forked child the forward listeners stay (unsubscribing takes the notifier's lock, which
  // a thread that is gone may have held); they find the bridge refusing.
  if (impl_->state.load() != Impl::State::created && impl_->in_forked_child()) return;
  MutexLock lock(impl_->lifecycle);
  impl_->forwarders.clear();
}

void Bridge::start() {
  detail::install_exit_hooks();
  impl_->start();
  // Outside the lifecycle lock: prepare_fork() takes the registry's lock, then each lifecycle.
  if (!impl_->registered_for_fork.exchange(true)) detail::register_fork_participant(impl_);
}
bool Bridge::flush(std::chrono::milliseconds timeout) { return impl_->flush(timeout); }
bool Bridge::wait_delivered(std::chrono::milliseconds timeout) { return impl_->wait_delivered(timeout); }
ShutdownReport Bridge::shutdown(std::chrono::milliseconds timeout) { return impl_->shutdown(timeout); }
nlohmann::json Bridge::health() const { return impl_->health(); }
const std::string& Bridge::instance_id() const noexcept { return impl_->hooks.instance_id; }
const BridgeConfig& Bridge::config() const noexcept { return impl_->config; }

std::unique_ptr<Bridge> make_bridge(Notifier& notifier, BridgeConfig config, BridgeHooks hooks) {
  config.validate();
  std::shared_ptr<Transport> transport = make_transport(TransportConfig{config.url, config.transport});
  return std::make_unique<Bridge>(notifier, std::move(transport), std::move(config), std::move(hooks));
}

}  // namespace notifications
