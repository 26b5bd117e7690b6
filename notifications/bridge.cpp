// Bridge: lifecycle, fork, drop accounting and health (see bridge_impl.hpp for the other parts).
#include "notifications/bridge_impl.hpp"

namespace notifications {

using namespace bridge_internal;

bool Bridge::Impl::past_deadline() const {
  const std::int64_t ns = deadline_ns.load(std::memory_order_acquire);
  return ns != 0 && Clock::now().time_since_epoch().count() >= ns;
}

void Bridge::Impl::set_error(std::string text) {
  std::lock_guard lock(error_mutex);
  last_error = std::move(text);
}

bool Bridge::Impl::should_log(int kind, std::string_view name) {
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

void Bridge::Impl::log_loss(const std::string& subject, std::uint64_t missing) {
  if (!should_log(kLossKind, subject)) return;
  detail::log(detail::LogLevel::warn, "notifications bridge: {} event(s) on \"{}\" never arrived (a gap in the sender's "
               "sequence); total lost: {}",
               missing, truncated(subject, 120), counters.lost.load());
}

void Bridge::Impl::drop(Drop reason, std::string_view name, std::uint64_t count, std::string_view why) {
  if (count == 0) return;
  counters.dropped[static_cast<std::size_t>(reason)].fetch_add(count, std::memory_order_relaxed);
  if (should_log(static_cast<int>(reason), name)) {
    detail::log(detail::LogLevel::warn, "notifications bridge: dropped {} event(s) \"{}\" ({}{}{}); total for this reason: {}",
                 count, truncated(name, 120), kDropNames[static_cast<int>(reason)],
                 why.empty() ? "" : ": ", truncated(why),
                 counters.dropped[static_cast<std::size_t>(reason)].load());
  }
  signal_progress();
}

void Bridge::Impl::note_sent(std::uint64_t count) {
  counters.sent.fetch_add(count, std::memory_order_relaxed);
  signal_progress();
}

void Bridge::Impl::signal_progress() {
  { std::lock_guard lock(progress_mutex); }
  progress.notify_all();
}

std::uint64_t Bridge::Impl::settled() const {
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

void Bridge::Impl::start() {
  std::lock_guard lock(lifecycle);
  if (state.load() == State::running) return;
  if (state.load() != State::created) {
    throw TransportError("bridge: start() after shutdown(); create a new Bridge");
  }
  transport->start();
  std::weak_ptr<Impl> weak = shared_from_this();
  for (const std::string& pattern : config.subscribe) {
    DeliveryOptions options(config.group);
    // The envelope body carries everything the dispatcher reads; a dead-letter hook sees the
    // message as it arrived, headers included.
    options.headers = static_cast<bool>(hooks.dead_letter);
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
  detail::log(detail::LogLevel::debug, "notifications bridge: started (transport {}, app \"{}\", instance {})",
               transport->kind(), config.app, hooks.instance_id);
}

void Bridge::Impl::park_if_requested() {
  if (!pause_requested.load(std::memory_order_acquire)) return;
  Pause& p = *pause;
  std::unique_lock lock(p.mutex);
  if (!p.requested) return;
  ++p.parked;
  p.changed.notify_all();
  p.changed.wait(lock, [&] { return !p.requested; });
  --p.parked;
}

void Bridge::Impl::set_pause(bool requested) {
  {
    std::lock_guard lock(pause->mutex);
    pause->requested = requested;
  }
  pause_requested.store(requested, std::memory_order_release);
  pause->changed.notify_all();
}

bool Bridge::Impl::prepare_fork(Clock::time_point deadline) {
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

void Bridge::Impl::after_fork(bool in_child) {
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

ShutdownReport Bridge::Impl::abandon_in_forked_child() {
  accepting.store(false, std::memory_order_release);
  state.store(State::stopped);
  new std::thread(std::move(sender));      // leaked on purpose: never joined
  new std::thread(std::move(dispatcher));  // leaked on purpose: never joined
  const std::string detail =
      "forked child without notifications::prepare_fork()/after_fork(): the bridge was abandoned; "
      "its queue belongs to the parent";
  detail::log(detail::LogLevel::error, "notifications bridge: {}", detail);
  report = ShutdownReport{false, 0, 0, detail};
  return *report;
}

void Bridge::Impl::reset_counters() {
  for (auto* counter : {&counters.accepted, &counters.sent, &counters.failed, &counters.retried,
                        &counters.received, &counters.malformed, &counters.echo_suppressed, &counters.lost}) {
    counter->store(0);
  }
  for (auto& counter : counters.dropped) counter.store(0);
}

void Bridge::Impl::shut_down_at_exit(Clock::time_point deadline, const char* why) {
  {
    std::lock_guard lock(lifecycle);
    if (report || state.load() != State::running) return;
  }
  detail::log(detail::LogLevel::warn,
              "notifications bridge \"{}\": shutdown() was not called and {}; shutting down now "
              "(within {} ms)",
              config.app, why,
              std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
  shutdown(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
}

ShutdownReport Bridge::Impl::shutdown(std::chrono::milliseconds timeout) {
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
  for (const auto& event : outbound.take_all()) drop(Drop::shutdown_deadline, event.name());
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
    std::unique_lock lock(progress_mutex);
    if (!progress.wait_until(lock, deadline, [&] { return settled() >= counters.accepted.load(); })) {
      return false;
    }
  }
  return transport->flush(deadline);
}

nlohmann::json Bridge::Impl::health() const {
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
  detail::install_exit_hooks();
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
