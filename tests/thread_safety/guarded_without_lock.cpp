// Compile-only check of clang's thread-safety analysis (tests/thread_safety/CMakeLists.txt): built
// as is, add() writes a member guarded by a Mutex without holding it, and the build must fail;
// built with NOTIFICATIONS_TSA_TAKE_LOCK=1, add() takes the lock first, and the build must pass
// (the control: the failure above comes from the analysis, not from a broken setup).
#include "process/thread_safety.hpp"

namespace {

class Counter {
 public:
  void add(int n) {
#if NOTIFICATIONS_TSA_TAKE_LOCK
    notifications::detail::MutexLock lock(mutex_);
#endif
    value_ += n;
  }

 private:
  notifications::detail::Mutex mutex_;
  int value_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
};

}  // namespace

void notifications_tsa_check_use_counter() {
  Counter counter;
  counter.add(1);
}
