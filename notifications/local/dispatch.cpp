// ActiveEvent: building one event, calling its listeners, and routing their failures.
#include <time.h>

#include <chrono>
#include <set>
#include <utility>

#include "process/log.hpp"

#include "process/describe.hpp"
#include "process/fork_held_lock.hpp"
#include "notifications/errors.hpp"
#include "local/event_access.hpp"
#include "process/ids.hpp"
#include "local/registry.hpp"
#include "local/thread_cache.hpp"

namespace notifications::detail {

namespace {

std::int64_t thread_cpu_ns() noexcept {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

// The default error handler: one log line per (subscription, event name), at most
// kLinesPerSecond lines a second overall. Every failure is counted by the caller regardless.
// Its lock is held across fork() (process/fork_held_lock.hpp), so it never logs while holding it.
class DefaultErrorLog {
 public:
  void log(const SubscriberFailure& failure) NOTIFICATIONS_EXCLUDES(mutex_) {
    std::uint64_t suppressed_before = 0;
    {
      MutexLock lock(mutex_);
      if (!seen_.emplace(failure.subscription_id, std::string(failure.event_name)).second) return;
      if (seen_.size() > kMaxKeys) seen_.clear();  // bound memory; repeats may log again later
      const auto now = std::chrono::steady_clock::now();
      if (now - window_start_ >= std::chrono::seconds(1)) {
        suppressed_before = std::exchange(suppressed_, 0);
        window_start_ = now;
        lines_ = 0;
      }
      if (lines_ >= kLinesPerSecond) {
        ++suppressed_;
        return;
      }
      ++lines_;
    }
    if (suppressed_before > 0) {
      detail::log(LogLevel::warn, "notifications: {} further subscriber failure reports suppressed", suppressed_before);
    }
    detail::log(LogLevel::error,
        "notifications: subscriber {} (pattern \"{}\") failed in {} for event \"{}\": {} "
        "(reported once per subscriber and event name)",
        failure.subscription_id, wire_text(failure.pattern), failure.phase, wire_text(failure.event_name),
        wire_text(failure.message, 500));
  }

 private:
  static constexpr std::size_t kMaxKeys = 4096;
  static constexpr int kLinesPerSecond = 10;
  Mutex mutex_;
  ForkHeldLock fork_held_{mutex_};
  std::set<std::pair<std::uint64_t, std::string>> seen_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::chrono::steady_clock::time_point window_start_ NOTIFICATIONS_GUARDED_BY(mutex_){};
  int lines_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::uint64_t suppressed_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
};

// Appends `error` to `errors`, or, when it is a SubscriberErrors (thrown by an event that a
// listener instrumented), its members instead: as in Rails, one aggregate holds every exception
// and none holds another aggregate.
void append_flattened(std::vector<std::exception_ptr>& errors, const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const SubscriberErrors& nested) {
    errors.insert(errors.end(), nested.errors().begin(), nested.errors().end());
  } catch (...) {
    errors.push_back(error);
  }
}

DefaultErrorLog& default_error_log() {
  static DefaultErrorLog* const log = new DefaultErrorLog();  // outlives static destructors
  return *log;
}

}  // namespace

void report_failure(NotifierCore& core, const SubscriberFailure& failure) noexcept {
  std::shared_ptr<const ErrorHandler> handler;
  {
    MutexLock lock(core.state->mutex);
    handler = core.state->error_handler;
  }
  try {
    if (handler) {
      (*handler)(failure);
    } else {
      default_error_log().log(failure);
    }
  } catch (...) {
    core.state->error_handler_failures.fetch_add(1, std::memory_order_relaxed);
  }
}

struct ActiveEvent::Failures {
  struct Kept {
    std::size_t index;
    const char* phase;
    std::exception_ptr error;
  };
  std::vector<Kept> errors;                      // strict mode: rethrown after dispatch
  std::vector<std::uint64_t> started_beyond_64;  // bit set of start listeners 64..n
};

ActiveEvent::ActiveEvent(NotifierCore& core, const ListenerSet& set, std::string_view name,
                         nlohmann::json& payload, const SourceLocation& where)
    : core_(core), set_(set), cache_(thread_cache()) {
  ++cache_.dispatch_depth;
  EventAccess::begin(event_, name, payload, where);
  if (cache_.captured) EventAccess::set_context(event_, cache_.captured);  // the thread's context and tags
  if (set_.needs_cpu_time) cpu_start_ns_ = thread_cpu_ns();  // after the wall clock: see complete()
  if (set_.has_start) start_listeners();
}

ActiveEvent::ActiveEvent(NotifierCore& core, const ListenerSet& set, Event&& prebuilt)
    : core_(core), set_(set), cache_(thread_cache()), event_(std::move(prebuilt)) {
  ++cache_.dispatch_depth;
  if (set_.has_start) start_listeners();
}

void ActiveEvent::start_listeners() {
  const auto& subscribers = set_.subscribers;
  for (std::size_t i = 0; i < subscribers.size(); ++i) {
    Subscriber& subscriber = *subscribers[i];
    if (!subscriber.start_finish_shape() || !subscriber.active.load(std::memory_order_acquire)) {
      continue;
    }
    if (i < 64) {
      started_ |= std::uint64_t{1} << i;
    } else {
      if (!failures_) failures_ = std::make_unique<Failures>();
      auto& bits = failures_->started_beyond_64;
      bits.resize(std::max(bits.size(), (i - 64) / 64 + 1));
      bits[(i - 64) / 64] |= std::uint64_t{1} << ((i - 64) % 64);
    }
    try {
      subscriber.on_start(event_);
    } catch (...) {
      record(i, "start", std::current_exception());
    }
  }
}

ActiveEvent::~ActiveEvent() { --cache_.dispatch_depth; }

void ActiveEvent::record(std::size_t index, const char* phase, std::exception_ptr error) noexcept {
  NotifierState& state = *core_.state;
  state.subscriber_errors.fetch_add(1, std::memory_order_relaxed);
  try {
    if (state.strict.load(std::memory_order_relaxed)) {
      if (!failures_) failures_ = std::make_unique<Failures>();
      failures_->errors.push_back({index, phase, error});
      return;
    }
  } catch (...) {
    // Out of memory while keeping the error: fall through and report it instead.
  }
  report(index, phase, error, "");
}

void ActiveEvent::report(std::size_t index, const char* phase, const std::exception_ptr& error,
                         const char* note) noexcept {
  const Subscriber& subscriber = *set_.subscribers[index];
  SubscriberFailure failure{event_.name(), subscriber.id, subscriber.pattern.text(), phase, error,
                            {}};
  try {
    failure.message = describe_exception(error) + note;
  } catch (...) {
  }
  report_failure(core_, failure);
}

// Inlined into finish() (every event) and fail(): one call per event instead of two.
[[gnu::always_inline]] inline void ActiveEvent::complete(bool instant) {
  // The CPU clock is read inside the wall-clock pair (start: wall, then CPU; here: CPU, then
  // wall), so the CPU time measured never spans more than the duration. An instant event spans
  // no time and so used no CPU time.
  if (instant) {
    if (cpu_start_ns_ >= 0) EventAccess::set_cpu_time(event_, std::chrono::nanoseconds(0));
  } else {
    if (cpu_start_ns_ >= 0) {
      EventAccess::set_cpu_time(event_, std::chrono::nanoseconds(thread_cpu_ns() - cpu_start_ns_));
    }
    EventAccess::end(event_);
  }
  const auto& subscribers = set_.subscribers;
  if (!set_.has_start) {  // Event-shape listeners only: no start bits to consult
    // The bounds are read once (the set is immutable), not reloaded after every listener call.
    const std::shared_ptr<Subscriber>* const first = subscribers.data();
    const std::shared_ptr<Subscriber>* const last = first + subscribers.size();
    for (const std::shared_ptr<Subscriber>* it = first; it != last; ++it) {
      Subscriber& subscriber = **it;
      if (!subscriber.active.load(std::memory_order_acquire)) continue;
      try {
        subscriber.on_event(event_);
      } catch (...) {
        record(static_cast<std::size_t>(it - first), "finish", std::current_exception());
      }
    }
    return;
  }
  for (std::size_t i = 0; i < subscribers.size(); ++i) {
    Subscriber& subscriber = *subscribers[i];
    if (subscriber.start_finish_shape()) {
      const bool started =
          i < 64 ? (started_ >> i) & 1
                 : failures_ && (i - 64) / 64 < failures_->started_beyond_64.size() &&
                       (failures_->started_beyond_64[(i - 64) / 64] >> ((i - 64) % 64)) & 1;
      if (!started) continue;  // finish pairs with start, even if unsubscribed since
      try {
        subscriber.on_finish(event_);
      } catch (...) {
        record(i, "finish", std::current_exception());
      }
    } else if (subscriber.active.load(std::memory_order_acquire)) {
      try {
        subscriber.on_event(event_);
      } catch (...) {
        record(i, "finish", std::current_exception());
      }
    }
  }
}

void ActiveEvent::finish(bool instant) {
  complete(instant);
  if (!failures_ || failures_->errors.empty()) return;
  std::vector<std::exception_ptr> errors;
  for (const auto& kept : failures_->errors) append_flattened(errors, kept.error);
  failures_->errors.clear();
  if (errors.size() == 1) std::rethrow_exception(errors.front());
  throw SubscriberErrors(std::string(event_.name()), std::move(errors));
}

void ActiveEvent::fail() noexcept {
  try {
    ExceptionInfo info{current_exception_type(), exception_message(std::current_exception()),
                       std::current_exception()};
    nlohmann::json& payload = EventAccess::payload(event_);
    if (payload.is_null() || payload.is_object()) {
      payload["exception"] = nlohmann::json::array({info.type, info.message});
    }
    EventAccess::set_exception(event_, std::move(info));
  } catch (...) {
    // Could not record the details (out of memory): the event is still finished below.
  }
  complete(/*instant=*/false);  // never throws: every listener call is guarded
  // The block's exception wins: strict-mode subscriber errors are reported, not thrown.
  if (!failures_ || failures_->errors.empty()) return;
  for (const auto& kept : failures_->errors) {
    report(kept.index, kept.phase, kept.error, " (while the block's own exception propagated)");
  }
}

}  // namespace notifications::detail
