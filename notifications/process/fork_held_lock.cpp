#include "process/fork_held_lock.hpp"

#include <pthread.h>

namespace notifications::detail {

// The registered locks, as an intrusive list under its own mutex. Never destroyed: notifiers
// (the default one among them) may outlive static destructors.
struct ForkHeldLocks {
  Mutex mutex;
  ForkHeldLock* first NOTIFICATIONS_GUARDED_BY(mutex) = nullptr;

  static ForkHeldLocks& instance() {
    static ForkHeldLocks* const locks = [] {
      auto* made = new ForkHeldLocks();
      pthread_atfork(&ForkHeldLocks::before_fork, &ForkHeldLocks::after_fork,
                     &ForkHeldLocks::after_fork);
      return made;
    }();
    return *locks;
  }

  // The list's mutex, then every registered one, in list order. The lock spans two handlers,
  // which the analysis cannot follow; the contract in the header keeps it deadlock-free: no
  // holder of a registered lock waits for the list or for another registered lock.
  static void before_fork() NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
    ForkHeldLocks& locks = instance();
    locks.mutex.lock();
    for (ForkHeldLock* lock = locks.first; lock != nullptr; lock = lock->next_) lock->mutex_.lock();
  }

  // In the parent and in the child: the forking thread owns each lock taken before fork().
  static void after_fork() NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
    ForkHeldLocks& locks = instance();
    for (ForkHeldLock* lock = locks.first; lock != nullptr; lock = lock->next_) lock->mutex_.unlock();
    locks.mutex.unlock();
  }
};

ForkHeldLock::ForkHeldLock(Mutex& mutex) : mutex_(mutex) {
  ForkHeldLocks& locks = ForkHeldLocks::instance();
  MutexLock hold(locks.mutex);
  next_ = locks.first;
  if (next_ != nullptr) next_->previous_ = this;
  locks.first = this;
}

ForkHeldLock::~ForkHeldLock() {
  ForkHeldLocks& locks = ForkHeldLocks::instance();
  MutexLock hold(locks.mutex);
  if (previous_ != nullptr) {
    previous_->next_ = next_;
  } else {
    locks.first = next_;
  }
  if (next_ != nullptr) next_->previous_ = previous_;
}

}  // namespace notifications::detail
