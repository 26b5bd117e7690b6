// Private: the subscriber registry behind a Notifier.
//
// Thread-safety: NotifierState::mutex guards every field marked NOTIFICATIONS_GUARDED_BY(mutex)
// and Subscriber::excluded (a member of another object: stated, not checked by the analysis).
// ListenerSet objects are immutable once published and shared by reference count;
// Subscriber::active is atomic and read without the lock during dispatch.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "notifications/notifier.hpp"
#include "notifications/pattern.hpp"
#include "process/fork_held_lock.hpp"
#include "process/thread_safety.hpp"

namespace notifications::detail {

struct Subscriber {
  // The fields dispatch reads on every call come first, so that they share one or two cache
  // lines. `active` is cleared (release) when unsubscribed; dispatch checks it (acquire) before
  // every call.
  std::atomic<bool> active{true};
  EventListener on_event;   // Event shape: called once, after the block
  std::function<void(const Event&)> on_start;   // start/finish shape
  std::function<void(const Event&)> on_finish;  // start/finish shape
  std::uint64_t id = 0;
  Pattern pattern;  // Pattern::all() when subscribed without a pattern
  bool cpu_time = false;
  // Names excluded by Notifier::unsubscribe(name); always empty for Pattern::all().
  std::vector<std::string> excluded;  // guarded by NotifierState::mutex (not checked)

  explicit Subscriber(Pattern p) : pattern(std::move(p)) {}
  bool start_finish_shape() const noexcept { return static_cast<bool>(on_start); }
  // Requires NotifierState::mutex (not checked: the analysis cannot name it from here).
  bool receives(std::string_view name) const;
};

// The subscribers of one event name at one generation of the registry. Immutable.
struct ListenerSet {
  std::vector<std::shared_ptr<Subscriber>> subscribers;  // in subscription order
  bool needs_cpu_time = false;
  bool has_start = false;
};

// Tests only: when set, called by a thread that resolves a name while it holds
// NotifierState::mutex (to fork while another thread holds it).
inline std::atomic<void (*)()> registry_locked_test_hook{nullptr};

struct NotifierState {
  explicit NotifierState(NotifierOptions options);

  Mutex mutex;
  // Held across fork(): a child forked without prepare_fork() can still instrument and subscribe
  // (process/fork_held_lock.hpp). Nothing runs user code while holding `mutex`.
  ForkHeldLock fork_held{mutex};
  std::vector<std::shared_ptr<Subscriber>> subscribers NOTIFICATIONS_GUARDED_BY(mutex);
  // Listener sets resolved at memo_generation, by name; bounded by name_cache_capacity.
  std::unordered_map<std::string, std::shared_ptr<const ListenerSet>> memo NOTIFICATIONS_GUARDED_BY(mutex);
  std::uint64_t memo_generation NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::uint64_t next_id NOTIFICATIONS_GUARDED_BY(mutex) = 1;
  std::shared_ptr<const ErrorHandler> error_handler NOTIFICATIONS_GUARDED_BY(mutex);
  const std::size_t name_cache_capacity;

  std::atomic<bool> strict{false};
  std::atomic<std::uint64_t> subscriber_errors{0};
  std::atomic<std::uint64_t> error_handler_failures{0};
};

// Reports one subscriber failure to the notifier's error handler; never throws.
void report_failure(NotifierCore& core, const SubscriberFailure& failure) noexcept;

}  // namespace notifications::detail
