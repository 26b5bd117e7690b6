#include "notifications/fork.hpp"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "notifications/errors.hpp"
#include "process/fork_registry.hpp"
#include "process/log.hpp"
#include "process/process.hpp"
#include "process/thread_safety.hpp"

namespace notifications {

namespace {

struct Handler {
  std::function<void()> prepare;
  std::function<void(bool)> after;
};

// A started transport and the fork generation it belongs to: an entry inherited by a child forked
// without after_fork() names a transport of the parent's (maybe destroyed since) and is skipped.
struct TransportEntry {
  detail::ForkTransport transport;
  std::uint64_t generation;
};

// Lock order: mutex, then each Bridge's lifecycle lock, then transports_mutex, then the lifecycle
// lock of each registered transport. TransportBase::start() takes transports_mutex inside its own
// lifecycle lock, but only for a transport not registered yet, which the registry never locks.
struct Registry {
  detail::Mutex mutex;
  std::vector<std::weak_ptr<detail::ForkParticipant>> participants NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<Handler> handlers NOTIFICATIONS_GUARDED_BY(mutex);
  detail::Mutex transports_mutex;
  std::vector<TransportEntry> transports NOTIFICATIONS_GUARDED_BY(transports_mutex);
  // Between prepare_fork() and after_fork(), used only by the thread that forks, which holds
  // mutex from one to the other (both are outside the analysis, see there):
  std::vector<std::shared_ptr<detail::ForkParticipant>> prepared;
  std::vector<detail::ForkTransport> prepared_transports;
  bool is_prepared = false;
  std::uint64_t prepared_generation = 0;  // fork_generation() at prepare_fork(): which process
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

void register_fork_transport(const ForkTransport& transport) {
  install_fork_hook();
  Registry& r = registry();
  const std::uint64_t generation = fork_generation();
  detail::MutexLock lock(r.transports_mutex);
  std::erase_if(r.transports, [&](const TransportEntry& e) { return e.generation != generation; });
  r.transports.push_back(TransportEntry{transport, generation});
}

void unregister_fork_transport(const void* self) {
  Registry& r = registry();
  detail::MutexLock lock(r.transports_mutex);
  std::erase_if(r.transports, [&](const TransportEntry& e) { return e.transport.self == self; });
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
  detail::install_fork_hook();  // after_fork() tells the child by its fork generation
  r.mutex.lock();  // held until after_fork(): no participant comes or goes across the fork
  if (r.is_prepared) {
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
  // Held until after_fork() too: no transport starts or stops across the fork.
  r.transports_mutex.lock();
  const std::uint64_t generation = detail::fork_generation();
  std::vector<detail::ForkTransport> transports;
  for (const TransportEntry& e : r.transports) {
    if (e.generation == generation) transports.push_back(e.transport);
  }
  for (const detail::ForkTransport& t : transports) t.prepare(t.self, deadline);
  for (const Handler& h : r.handlers) {
    if (h.prepare) h.prepare();
  }
  r.prepared = std::move(prepared);
  r.prepared_transports = std::move(transports);
  r.prepared_generation = generation;
  r.is_prepared = true;
}

// Not analysed: it releases r.mutex and r.transports_mutex, which prepare_fork() returned
// holding, and reads is_prepared before it knows whether this thread holds them (is_prepared is
// true only between prepare_fork() and after_fork(), where the calling thread holds the locks;
// after_fork() without prepare_fork() finds false, the contract of notifications/fork.hpp).
void after_fork() NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
  Registry& r = registry();
  if (!r.is_prepared) return;  // read by the thread that called prepare_fork(), which holds the lock
  const std::uint64_t generation = detail::fork_generation();
  const bool in_child = generation != r.prepared_generation;
  r.is_prepared = false;
  for (const Handler& h : r.handlers) {
    if (h.after) h.after(in_child);
  }
  auto prepared = std::move(r.prepared);
  r.prepared.clear();
  for (auto& p : prepared) p->after_fork(in_child);
  auto transports = std::move(r.prepared_transports);
  r.prepared_transports.clear();
  for (const detail::ForkTransport& t : transports) t.after(t.self, in_child);  // a Bridge's: resumed already
  if (in_child) {
    for (TransportEntry& e : r.transports) {
      if (e.generation == r.prepared_generation) e.generation = generation;  // this process's now
    }
  }
  r.transports_mutex.unlock();
  r.mutex.unlock();
  detail::log(detail::LogLevel::debug,
              "notifications: after_fork in the {}: {} bridge(s) and {} transport(s) resumed",
              in_child ? "child" : "parent", prepared.size(), transports.size());
}

}  // namespace notifications
