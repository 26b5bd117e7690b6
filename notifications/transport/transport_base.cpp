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
//      stop() drains: publish() returns "transport stopped", unsubscribe() closes the handler's
//      wrapper (7) and calls no hook, instead of deadlocking.
//   5. do_flush runs only while `started`, without a lock; it may overlap do_stop (which must wake
//      it) and is the one hook that may.
//   6. stop() from `created` moves to `stopped` without calling any hook. A second stop() waits
//      until the first one has finished, so "stop returned" always means "stopped".
//   7. The handler a hook receives is a wrapper: once unsubscribe() or stop() has closed it, it
//      returns without calling the user's handler (a delivery with settle() is nak'ed, so an
//      acknowledging transport redelivers it). A hook may keep calling it at any time.
//
// How state_ is read without the lifecycle mutex: it is only ever accessed through
// std::atomic_ref and holds a packed word: bits 0-1 are the phase (created, started, stopping,
// stopped), the bits above count publish() calls that passed the state check and have not
// returned yet. One compare-and-swap both checks the phase and registers the call, so stop()
// can switch the phase and then wait for the count to reach zero.
#include "notifications/transport.hpp"

#include <atomic>
#include <cctype>
#include <cstdint>
#include <exception>
#include <string>
#include <thread>

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

// ---- handler calls in progress (promise 10) -----------------------------------------------------

// One subscription's handler calls in progress, and whether it is closed: bit 0 of `word` is
// "closed", the bits above count calls (kOneHandlerCall each). 32 bits so that wait() is a futex.
// `discarded` (shared by a transport's subscriptions, and outliving it if a transport thread
// calls late) counts deliveries that arrived after closing.
struct detail::HandlerCalls {
  std::atomic<std::uint32_t> word{0};
  std::shared_ptr<std::atomic<std::uint64_t>> discarded;
};

namespace {

constexpr std::uint32_t kClosed = 1;
constexpr std::uint32_t kOneHandlerCall = 2;

// The handler calls running on this thread, innermost first: a handler that unsubscribes its
// own subscription (or one whose handler is further down this thread's stack) must not wait for
// itself.
struct HandlerFrame {
  const detail::HandlerCalls* calls;
  HandlerFrame* below;
};
thread_local HandlerFrame* top_handler_frame = nullptr;

std::uint32_t calls_on_this_thread(const detail::HandlerCalls& calls) {
  std::uint32_t n = 0;
  for (const HandlerFrame* f = top_handler_frame; f != nullptr; f = f->below) {
    if (f->calls == &calls) ++n;
  }
  return n;
}

// Registers a call unless closed (one CAS checks and counts).
bool enter_handler(detail::HandlerCalls& calls) {
  std::uint32_t w = calls.word.load(std::memory_order_acquire);
  do {
    if ((w & kClosed) != 0) return false;
  } while (!calls.word.compare_exchange_weak(w, w + kOneHandlerCall, std::memory_order_acq_rel,
                                             std::memory_order_acquire));
  return true;
}

void leave_handler(detail::HandlerCalls& calls) {
  const std::uint32_t w = calls.word.fetch_sub(kOneHandlerCall, std::memory_order_acq_rel) - kOneHandlerCall;
  if ((w & kClosed) != 0) calls.word.notify_all();  // a closer may be waiting for this call
}

DeliveryHandler wrap_handler(std::shared_ptr<detail::HandlerCalls> calls, DeliveryHandler handler) {
  return [calls = std::move(calls), handler = std::move(handler)](Delivery&& delivery) {
    if (!enter_handler(*calls)) {
      calls->discarded->fetch_add(1, std::memory_order_relaxed);
      if (delivery.settle) {
        try {
          delivery.settle(Settle::nak);  // handed back: an acknowledging transport redelivers it
        } catch (...) {  // the transport is closing; its redelivery timer covers it
        }
      }
      return;
    }
    struct Leave {
      HandlerFrame frame;
      detail::HandlerCalls& calls;
      ~Leave() {
        top_handler_frame = frame.below;
        leave_handler(calls);
      }
    } leave{HandlerFrame{calls.get(), top_handler_frame}, *calls};
    top_handler_frame = &leave.frame;
    handler(std::move(delivery));
  };
}

// Waits until no call of the closed `calls` runs on another thread: with no deadline when
// `deadline` is nullptr. Returns the calls still running elsewhere (0 unless the deadline passed).
std::uint32_t wait_for_other_threads(const detail::HandlerCalls& calls, const Deadline* deadline) {
  const std::uint32_t own = calls_on_this_thread(calls);
  for (std::uint32_t w = calls.word.load(std::memory_order_acquire); w / kOneHandlerCall > own;
       w = calls.word.load(std::memory_order_acquire)) {
    if (deadline == nullptr) {
      calls.word.wait(w, std::memory_order_acquire);
    } else if (std::chrono::steady_clock::now() >= *deadline) {
      return w / kOneHandlerCall - own;
    } else {
      // Rare (stop() while a handler runs) and bounded by the deadline: a short sleep, no timed
      // futex, which std::atomic does not offer.
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  return 0;
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
  if (in_child) {
    // The threads that were inside handlers at fork() do not exist here: only this thread's
    // calls are running. Otherwise unsubscribe() and stop() would wait for calls that never end.
    const auto keep_own = [](detail::HandlerCalls& calls) {
      const std::uint32_t w = calls.word.load(std::memory_order_acquire);
      calls.word.store((w & kClosed) + calls_on_this_thread(calls) * kOneHandlerCall, std::memory_order_release);
    };
    for (auto& [id, calls] : handler_calls_) keep_own(*calls);
    for (auto& [id, calls] : closed_handler_calls_) keep_own(*calls);
  }
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
  auto calls = std::make_shared<detail::HandlerCalls>();
  calls->discarded = discarded_after_close_;
  do_subscribe(id, pattern, options, wrap_handler(calls, std::move(handler)));
  handler_calls_[id] = std::move(calls);
  ++next_subscription_;  // only after success, so ids stay dense
  return id;
}

void TransportBase::unsubscribe(std::uint64_t id) {
  if (in_forked_child()) return;
  std::shared_ptr<detail::HandlerCalls> calls;
  {
    std::lock_guard lock(lifecycle_);
    forget_finished_handlers();
    if (const auto it = handler_calls_.find(id); it != handler_calls_.end()) {
      // Also while stopping: the caller may free what the handler captured.
      calls = it->second;
      calls->word.fetch_or(kClosed, std::memory_order_acq_rel);
      closed_handler_calls_.emplace(id, std::move(it->second));
      handler_calls_.erase(it);
    } else if (const auto closed = closed_handler_calls_.find(id); closed != closed_handler_calls_.end()) {
      calls = closed->second;  // closed before, a call still running then: wait for it too
    }
    if (phase(StateRef(state_).load(std::memory_order_acquire)) == kStarted) do_unsubscribe(id);
  }
  // Without the lifecycle mutex: the call we wait for may subscribe or unsubscribe.
  if (calls) (void)wait_for_other_threads(*calls, nullptr);
}

void TransportBase::forget_finished_handlers() {
  for (auto it = closed_handler_calls_.begin(); it != closed_handler_calls_.end();) {
    if (it->second->word.load(std::memory_order_acquire) / kOneHandlerCall == 0) {
      it = closed_handler_calls_.erase(it);  // closed, and no call runs: nothing left to wait for
    } else {
      ++it;
    }
  }
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
    close_handlers(deadline);
    set_phase(ref, kStopped);
    throw;
  }
  close_handlers(deadline);
  set_phase(ref, kStopped);
}

void TransportBase::close_handlers(Deadline deadline) {
  // Every handler, also those unsubscribed earlier whose call may still run (one that
  // unsubscribed itself and went on, or one past an earlier deadline): kept, so that a later
  // unsubscribe() of the same id waits for it too.
  std::vector<std::shared_ptr<detail::HandlerCalls>> all;
  {
    std::lock_guard lock(lifecycle_);
    for (auto& [id, calls] : handler_calls_) {
      calls->word.fetch_or(kClosed, std::memory_order_acq_rel);
      closed_handler_calls_.emplace(id, std::move(calls));
    }
    handler_calls_.clear();
    for (const auto& [id, calls] : closed_handler_calls_) all.push_back(calls);
  }
  std::uint64_t running = 0;
  for (auto& calls : all) running += wait_for_other_threads(*calls, &deadline);
  {
    std::lock_guard lock(lifecycle_);
    forget_finished_handlers();
  }
  if (running != 0) {
    handlers_running_at_stop_.fetch_add(running, std::memory_order_relaxed);
    detail::log(detail::LogLevel::warn,
                "notifications {}: {} handler call(s) still running at stop's deadline; they finish on their "
                "own threads, and nothing calls a handler again",
                kind(), running);
  }
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
  if (const auto running = handlers_running_at_stop_.load(std::memory_order_relaxed); running != 0) {
    out["handlers_running_at_stop"] = running;
  }
  if (const auto discarded = discarded_after_close_->load(std::memory_order_relaxed); discarded != 0) {
    out["discarded_after_unsubscribe"] = discarded;
  }
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
