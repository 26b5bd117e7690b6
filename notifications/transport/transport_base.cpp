// TransportBase: lifecycle checks and locking around a transport's hooks.
//
// Contracts TransportBase gives the hooks of a transport:
//   1. do_start runs once, under the lifecycle mutex, and only from `created`. When it throws, the
//      transport stays `created` and start() may be called again.
//   2. do_subscribe / do_unsubscribe run under the lifecycle mutex and only while `started`:
//      subscribe() before start() or after stop() throws TransportError (it is refused, not
//      queued); unsubscribe() then is a no-op. Patterns and group names are validated here first,
//      and DeliveryOptions the transport's capabilities() cannot honour are refused here
//      (TransportError naming the option), so no do_subscribe sees an option it must ignore.
//   3. do_publish runs without any lock of the base, possibly on several threads at once, and only
//      while `started`. Before start it returns {0, transient=false, "transport not started"},
//      after stop {0, transient=false, "transport stopped"}; it never throws.
//   4. do_stop runs once, only if do_start succeeded, with no lock of the base held, after every
//      publish() that saw `started` has returned; no do_publish, do_subscribe or do_unsubscribe
//      runs during or after it. A handler may therefore call publish() or unsubscribe() while
//      stop() drains: they return "transport stopped" / do nothing instead of deadlocking.
//   5. do_flush runs only while `started`, without a lock; it may overlap do_stop (which must wake
//      it) and is the one hook that may.
//   6. stop() from `created` moves to `stopped` without calling any hook. A second stop() waits
//      until the first one has finished, so "stop returned" always means "stopped".
//
// How state_ is read without the lifecycle mutex: it is only ever accessed through
// std::atomic_ref and holds a packed word: bits 0-1 are the phase (created, started, stopping,
// stopped), the bits above count publish() calls that passed the state check and have not
// returned yet. One compare-and-swap both checks the phase and registers the call, so stop()
// can switch the phase and then wait for the count to reach zero.
#include "notifications/transport.hpp"

#include <atomic>
#include <cctype>
#include <exception>
#include <string>

#include "notifications/subject.hpp"
#include "process/fork_registry.hpp"
#include "process/log.hpp"
#include "process/process.hpp"

namespace notifications {

namespace {

// ---- the packed state word -------------------------------------------------------------------

constexpr int kCreated = 0;
constexpr int kStarted = 1;
constexpr int kStopping = 2;  // do_stop is running; state() reports `stopped`
constexpr int kStopped = 3;
constexpr int kPhaseMask = 3;
constexpr int kOneCall = 4;  // one publish() in flight

using StateRef = std::atomic_ref<TransportBase::State>;
static_assert(StateRef::required_alignment <= alignof(TransportBase::State));

int word(TransportBase::State s) { return static_cast<int>(s); }
TransportBase::State make_word(int w) { return static_cast<TransportBase::State>(w); }
int phase(TransportBase::State s) { return word(s) & kPhaseMask; }
int calls(TransportBase::State s) { return word(s) / kOneCall; }

// Replaces the phase bits, keeping the count of publish() calls in flight.
void set_phase(StateRef ref, int new_phase) {
  TransportBase::State w = ref.load(std::memory_order_acquire);
  while (!ref.compare_exchange_weak(w, make_word((word(w) & ~kPhaseMask) | new_phase),
                                    std::memory_order_acq_rel, std::memory_order_acquire)) {
  }
  ref.notify_all();
}

// Blocks while `done(word)` is false. Wakes on every change of the word.
template <class Pred>
void wait_word(StateRef ref, Pred done) {
  for (TransportBase::State w = ref.load(std::memory_order_acquire); !done(w);
       w = ref.load(std::memory_order_acquire)) {
    ref.wait(w, std::memory_order_acquire);
  }
}

const char* phase_name(int p) {
  switch (p) {
    case kCreated: return "created";
    case kStarted: return "started";
    case kStopping: return "stopping";
    default: return "stopped";
  }
}

// Why `group` cannot name a delivery group, or "" when it can.
std::string group_problem(std::string_view group) {
  if (group.size() > kMaxSubjectBytes) {
    return "longer than " + std::to_string(kMaxSubjectBytes) + " bytes";
  }
  for (const char c : group) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) == 0 && c != '_' && c != '-' && c != '.') {
      return std::string("has '") + c + "' (allowed: letters, digits, '_', '-', '.')";
    }
  }
  return {};
}

}  // namespace

// ---- TransportBase -----------------------------------------------------------------------------

TransportBase::~TransportBase() {
  // In a forked child the registry's entry is the parent's generation's: never used, and its lock
  // may have been held by a thread that is gone.
  if (fork_registered_.load() && !in_forked_child()) detail::unregister_fork_transport(this);
}

void TransportBase::start() {
  // Registered before the lifecycle lock is taken, never under it: prepare_fork() holds the
  // registry's lock while it takes the lifecycle locks of registered transports. A transport
  // registered but not started yet is harmless there: its prepare_fork() runs no hook unless
  // started. During prepare_fork()..after_fork() this waits.
  const bool registered_here = !fork_registered_.exchange(true);
  if (registered_here) {
    detail::register_fork_transport(detail::ForkTransport{
        this,
        [](void* self, Deadline deadline) { static_cast<TransportBase*>(self)->prepare_fork(deadline); },
        [](void* self, bool in_child) { static_cast<TransportBase*>(self)->after_fork(in_child); },
    });
  }
  try {
    std::lock_guard lock(lifecycle_);
    StateRef ref(state_);
    const int p = phase(ref.load(std::memory_order_acquire));
    if (p == kStarted) return;
    if (p != kCreated) throw TransportError(kind() + ": start() after stop(); create a new transport");
    // Before anything fork() must not copy exists: a child forked from here on knows it is one
    // (promise 8), with or without a Bridge.
    detail::install_fork_hook();
    do_start();  // throws: stays created
    generation_ = detail::fork_generation();
    set_phase(ref, kStarted);
  } catch (...) {
    // Outside the lifecycle lock, as above. A later start() registers again.
    if (registered_here && fork_registered_.exchange(false)) detail::unregister_fork_transport(this);
    throw;
  }
}

void TransportBase::prepare_fork(Deadline deadline) {
  if (fork_prepared_) return;  // a Bridge prepared it already
  lifecycle_.lock();           // until after_fork()
  fork_prepared_ = true;
  if (phase(StateRef(state_).load(std::memory_order_acquire)) != kStarted) return;
  try {
    do_prepare_fork(deadline);
  } catch (const std::exception& e) {  // the contract says it does not throw: run on unprepared
    detail::log(detail::LogLevel::error, "notifications {}: prepare_fork: {}", kind(), e.what());
  }
}

bool TransportBase::in_forked_child() const {
  // const member: atomic_ref needs a non-const object; the load does not modify it.
  const int p = phase(StateRef(const_cast<State&>(state_)).load(std::memory_order_acquire));
  return p != kCreated && generation_ != detail::fork_generation();
}

void TransportBase::after_fork(bool in_child) {
  if (!fork_prepared_) return;  // done already, or never prepared
  fork_prepared_ = false;
  std::unique_lock lock(lifecycle_, std::adopt_lock);  // taken by prepare_fork()
  if (phase(StateRef(state_).load(std::memory_order_acquire)) != kStarted) return;
  if (in_child) generation_ = detail::fork_generation();  // the threads are parked: no reader
  try {
    do_after_fork(in_child);
  } catch (const std::exception& e) {  // after_fork() never throws (notifications/fork.hpp)
    detail::log(detail::LogLevel::error, "notifications {}: after_fork: {}", kind(), e.what());
  }
}

PublishResult TransportBase::publish(std::span<const Message> batch) {
  if (in_forked_child()) {
    return PublishResult{0, false, kind() + ": used in a forked child without notifications::after_fork()"};
  }
  StateRef ref(state_);
  // Register this call, but only while started (one CAS checks and counts).
  State w = ref.load(std::memory_order_acquire);
  do {
    const int p = phase(w);
    if (p == kCreated) return PublishResult{0, false, "transport not started"};
    if (p != kStarted) return PublishResult{0, false, "transport stopped"};
  } while (!ref.compare_exchange_weak(w, make_word(word(w) + kOneCall), std::memory_order_acq_rel,
                                      std::memory_order_acquire));

  PublishResult result;
  if (!batch.empty()) {
    try {
      result = do_publish(batch);
    } catch (const std::exception& e) {  // a hook broke its contract; publish() still never throws
      result = PublishResult{0, true, std::string("publish failed: ") + e.what()};
    } catch (...) {
      result = PublishResult{0, true, "publish failed: unknown exception"};
    }
  }

  w = ref.load(std::memory_order_acquire);
  while (!ref.compare_exchange_weak(w, make_word(word(w) - kOneCall), std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
  }
  if (phase(w) != kStarted) ref.notify_all();  // stop() may be waiting for this call
  return result;
}

std::string unsupported_delivery_option(const TransportCapabilities& capabilities, const DeliveryOptions& options) {
  if (!options.durable.empty() && !capabilities.durable_consumers) return "durable";
  if (options.start.kind != StartPosition::Kind::new_only && !capabilities.start_positions) return "start";
  if (options.ack_wait != std::chrono::milliseconds::zero() && !capabilities.acknowledgements) return "ack_wait";
  if (options.max_deliveries != 0 && !capabilities.acknowledgements) return "max_deliveries";
  if (options.ordered && !capabilities.ordered_delivery_option) return "ordered";
  return {};
}

std::uint64_t TransportBase::subscribe(const std::string& pattern, const DeliveryOptions& options,
                                       DeliveryHandler handler) {
  const std::string& group = options.group;
  if (const std::string problem = subject_pattern_problem(pattern); !problem.empty()) {
    throw TransportError("subscribe pattern \"" + pattern + "\": " + problem);
  }
  if (const std::string problem = group_problem(group); !problem.empty()) {
    throw TransportError("subscribe group \"" + group + "\": " + problem);
  }
  if (!handler) throw TransportError("subscribe \"" + pattern + "\": empty handler");
  if (const std::string option = unsupported_delivery_option(capabilities(), options); !option.empty()) {
    throw TransportError("subscribe \"" + pattern + "\": " + kind() + " transport cannot honour DeliveryOptions::" +
                         option + " (its capabilities do not include it); refused rather than ignored");
  }
  if (in_forked_child()) {
    throw TransportError("subscribe \"" + pattern + "\": " + kind() +
                         " transport used in a forked child without notifications::after_fork()");
  }

  std::lock_guard lock(lifecycle_);
  const int p = phase(StateRef(state_).load(std::memory_order_acquire));
  if (p == kCreated) {
    throw TransportError("subscribe \"" + pattern + "\": transport not started (call start() first)");
  }
  if (p != kStarted) throw TransportError("subscribe \"" + pattern + "\": transport stopped");
  const std::uint64_t id = next_subscription_;
  do_subscribe(id, pattern, options, std::move(handler));
  ++next_subscription_;  // only after success, so ids stay dense
  return id;
}

void TransportBase::unsubscribe(std::uint64_t id) {
  if (in_forked_child()) return;
  std::lock_guard lock(lifecycle_);
  if (phase(StateRef(state_).load(std::memory_order_acquire)) != kStarted) return;
  do_unsubscribe(id);
}

bool TransportBase::flush(Deadline deadline) {
  if (in_forked_child()) return false;
  if (phase(StateRef(state_).load(std::memory_order_acquire)) != kStarted) return true;
  return do_flush(deadline);
}

void TransportBase::stop(Deadline deadline) {
  StateRef ref(state_);
  if (in_forked_child()) {
    // No hook, no lock, no wait: a publish() in flight at fork() never returns in this process.
    ref.store(make_word(kStopped), std::memory_order_release);
    return;
  }
  // Before the lifecycle lock (prepare_fork() takes the registry's lock, then this one).
  if (fork_registered_.exchange(false)) detail::unregister_fork_transport(this);
  {
    std::unique_lock lock(lifecycle_);
    const int p = phase(ref.load(std::memory_order_acquire));
    if (p == kCreated) {
      set_phase(ref, kStopped);
      return;
    }
    if (p == kStarted) {
      set_phase(ref, kStopping);  // from here on publish() refuses and subscribe() throws
    } else {
      lock.unlock();
      wait_word(ref, [](State w) { return phase(w) == kStopped; });
      return;
    }
  }
  // Without the lifecycle mutex: a handler that calls unsubscribe() must not deadlock with us.
  wait_word(ref, [](State w) { return calls(w) == 0; });
  try {
    do_stop(deadline);
  } catch (...) {
    set_phase(ref, kStopped);
    throw;
  }
  set_phase(ref, kStopped);
}

nlohmann::json TransportBase::health() const {
  if (in_forked_child()) {
    return {{"kind", kind()},
            {"state", "forked_child"},
            {"detail", "forked without notifications::after_fork(): this process does not use the transport"}};
  }
  nlohmann::json out;
  try {
    out = do_health();
  } catch (const std::exception& e) {
    out = {{"error", e.what()}};
  }
  if (!out.is_object()) out = {{"details", std::move(out)}};
  out["kind"] = kind();
  // const member: atomic_ref needs a non-const object; the load does not modify it.
  out["state"] = phase_name(phase(StateRef(const_cast<State&>(state_)).load(std::memory_order_acquire)));
  return out;
}

TransportBase::State TransportBase::state() const {
  const int p = phase(StateRef(const_cast<State&>(state_)).load(std::memory_order_acquire));
  if (p == kCreated) return State::created;
  if (p == kStarted) return State::started;
  return State::stopped;
}

}  // namespace notifications
