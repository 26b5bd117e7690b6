#include "notifications/fork.hpp"

#include <unistd.h>

#include <thread>
#include <utility>
#include <vector>


#include "notifications/errors.hpp"
#include "process/fork_registry.hpp"
#include "process/log.hpp"
#include "process/thread_safety.hpp"

namespace notifications {

namespace {

struct Handler {
  std::function<void()> prepare;
  std::function<void(bool)> after;
};

struct Registry {
  detail::Mutex mutex;
  std::vector<std::weak_ptr<detail::ForkParticipant>> participants NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<Handler> handlers NOTIFICATIONS_GUARDED_BY(mutex);
  // Written by prepare_fork(), read and cleared by after_fork(), on the thread that forks, which
  // holds mutex from one to the other.
  std::vector<std::shared_ptr<detail::ForkParticipant>> prepared NOTIFICATIONS_GUARDED_BY(mutex);
  // Also read by after_fork() before it knows whether it holds mutex: see there.
  pid_t prepared_in = 0;
};

Registry& registry() {
  static Registry* instance = new Registry;  // never destroyed: usable from static destructors
  return *instance;
}

}  // namespace

namespace detail {
void register_fork_participant(std::weak_ptr<ForkParticipant> participant) {
  Registry& r = registry();
  detail::MutexLock lock(r.mutex);
  std::erase_if(r.participants, [](const auto& p) { return p.expired(); });
  r.participants.push_back(std::move(participant));
}

void shut_down_participants_at_exit(std::chrono::steady_clock::time_point deadline, const char* why) {
  Registry& r = registry();
  std::vector<std::shared_ptr<ForkParticipant>> alive;
  {
    // Polled with try_lock rather than a timed lock: ThreadSanitizer does not see
    // pthread_mutex_clocklock, which std::timed_mutex uses.
    while (!r.mutex.try_lock()) {
      if (std::chrono::steady_clock::now() >= deadline) return;  // held by a thread that is gone
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    detail::MutexLock lock(r.mutex, std::adopt_lock);
    for (const auto& weak : r.participants) {
      if (auto participant = weak.lock()) alive.push_back(std::move(participant));
    }
  }
  for (auto& participant : alive) participant->shut_down_at_exit(deadline, why);
}
}  // namespace detail

void register_fork_handler(std::function<void()> prepare, std::function<void(bool)> after) {
  Registry& r = registry();
  detail::MutexLock lock(r.mutex);
  r.handlers.push_back(Handler{std::move(prepare), std::move(after)});
}

// Not analysed: it returns holding r.mutex (for after_fork()), which its public declaration
// cannot name. Every path that throws releases it first.
void prepare_fork(std::chrono::milliseconds timeout) NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
  Registry& r = registry();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  r.mutex.lock();  // held until after_fork(): no participant comes or goes across the fork
  if (r.prepared_in != 0) {
    r.mutex.unlock();
    throw Error("fork", "prepare_fork() called twice without after_fork()");
  }
  std::vector<std::shared_ptr<detail::ForkParticipant>> prepared;
  for (const auto& weak : r.participants) {
    auto participant = weak.lock();
    if (!participant) continue;
    if (!participant->prepare_fork(deadline)) {
      for (auto& p : prepared) p->after_fork(false);
      r.mutex.unlock();
      throw Error("fork", "prepare_fork: a bridge's threads did not park within " +
                              std::to_string(timeout.count()) + " ms; nothing was prepared");
    }
    prepared.push_back(std::move(participant));
  }
  for (const Handler& h : r.handlers) {
    if (h.prepare) h.prepare();
  }
  r.prepared = std::move(prepared);
  r.prepared_in = getpid();
}

// Not analysed: it releases the r.mutex that prepare_fork() returned holding, and reads
// prepared_in before it knows whether this thread holds it (prepared_in is nonzero only between
// prepare_fork() and after_fork(), where the calling thread holds the lock; after_fork() without
// prepare_fork() finds 0, the contract of notifications/fork.hpp).
void after_fork() NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
  Registry& r = registry();
  if (r.prepared_in == 0) return;  // read by the thread that called prepare_fork(), which holds the lock
  const bool in_child = getpid() != r.prepared_in;
  r.prepared_in = 0;
  for (const Handler& h : r.handlers) {
    if (h.after) h.after(in_child);
  }
  auto prepared = std::move(r.prepared);
  r.prepared.clear();
  for (auto& p : prepared) p->after_fork(in_child);
  r.mutex.unlock();
  detail::log(detail::LogLevel::debug, "notifications: after_fork in the {}: {} bridge(s) resumed",
              in_child ? "child" : "parent", prepared.size());
}

}  // namespace notifications
