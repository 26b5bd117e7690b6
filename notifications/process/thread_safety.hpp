// Private: clang thread-safety annotations and the annotated mutex the core's locks use, so that
// a clang build with -Wthread-safety (CMake option NOTIFICATIONS_THREAD_SAFETY_ANALYSIS) proves
// at compile time that every member declared NOTIFICATIONS_GUARDED_BY(m) is touched only with m
// held, and every function declared NOTIFICATIONS_REQUIRES(m) is called only with m held.
// libstdc++'s std::mutex carries no annotations, hence the wrapper. Under another compiler the
// macros expand to nothing and the classes are plain std::mutex / std::lock_guard /
// std::unique_lock.
//
// Thread-safety: Mutex and SharedMutex are a std::mutex and a std::shared_mutex (lock from any
// thread; unlock on the thread that holds it; not recursive). The lock classes (MutexLock,
// MutexUnlock, UniqueMutexLock, SharedMutexReadLock, SharedMutexWriteLock) are, like std::lock_guard and
// std::unique_lock, used by the one thread that created them.
//
// Never a timed mutex here: ThreadSanitizer does not intercept pthread_mutex_clocklock; poll
// try_lock() instead where a bounded wait for the lock is needed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define NOTIFICATIONS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define NOTIFICATIONS_THREAD_ANNOTATION(x)
#endif

// A class whose objects are locks (Mutex below).
#define NOTIFICATIONS_CAPABILITY(name) NOTIFICATIONS_THREAD_ANNOTATION(capability(name))
// A RAII class that holds a capability from its construction to its destruction.
#define NOTIFICATIONS_SCOPED_CAPABILITY NOTIFICATIONS_THREAD_ANNOTATION(scoped_lockable)
// The member is read and written only with the capability held.
#define NOTIFICATIONS_GUARDED_BY(x) NOTIFICATIONS_THREAD_ANNOTATION(guarded_by(x))
// The object the pointer member points to is read and written only with the capability held.
#define NOTIFICATIONS_PT_GUARDED_BY(x) NOTIFICATIONS_THREAD_ANNOTATION(pt_guarded_by(x))
// The caller must hold the capabilities.
#define NOTIFICATIONS_REQUIRES(...) NOTIFICATIONS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
// The caller must hold the capabilities, at least shared.
#define NOTIFICATIONS_REQUIRES_SHARED(...) NOTIFICATIONS_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
// The function acquires the capabilities (none named: the object itself) and returns holding them.
#define NOTIFICATIONS_ACQUIRE(...) NOTIFICATIONS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
// The same, shared (a reader of a SharedMutex).
#define NOTIFICATIONS_ACQUIRE_SHARED(...) NOTIFICATIONS_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
// The function releases capabilities the caller held.
#define NOTIFICATIONS_RELEASE(...) NOTIFICATIONS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define NOTIFICATIONS_RELEASE_SHARED(...) NOTIFICATIONS_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
// Releases a capability held either way (the destructor of a scoped capability).
#define NOTIFICATIONS_RELEASE_GENERIC(...) NOTIFICATIONS_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
// The function acquires the capabilities when it returns the first argument.
#define NOTIFICATIONS_TRY_ACQUIRE(...) NOTIFICATIONS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
// The same, shared (a reader of a SharedMutex).
#define NOTIFICATIONS_TRY_ACQUIRE_SHARED(...) NOTIFICATIONS_THREAD_ANNOTATION(try_acquire_shared_capability(__VA_ARGS__))
// The caller must not hold the capabilities (the function takes them itself).
#define NOTIFICATIONS_EXCLUDES(...) NOTIFICATIONS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// The function returns a reference to the capability named.
#define NOTIFICATIONS_RETURN_CAPABILITY(x) NOTIFICATIONS_THREAD_ANNOTATION(lock_returned(x))
// Turns the analysis off for one function. Every use says why the function is correct anyway.
#define NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS NOTIFICATIONS_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace notifications::detail {

// A std::mutex the analysis knows about. Lock it through MutexLock or UniqueMutexLock; call
// lock()/unlock() directly only where a lock's scope is not a block (prepare_fork/after_fork).
class NOTIFICATIONS_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() NOTIFICATIONS_ACQUIRE() { mutex_.lock(); }
  void unlock() NOTIFICATIONS_RELEASE() { mutex_.unlock(); }
  bool try_lock() NOTIFICATIONS_TRY_ACQUIRE(true) { return mutex_.try_lock(); }

  // The std::mutex itself, for std::condition_variable (UniqueMutexLock uses it). Locking it
  // directly bypasses the analysis.
  std::mutex& native() noexcept NOTIFICATIONS_RETURN_CAPABILITY(this) { return mutex_; }

 private:
  std::mutex mutex_;
};

// A std::shared_mutex the analysis knows about: many readers (lock_shared) or one writer (lock).
class NOTIFICATIONS_CAPABILITY("shared mutex") SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void lock() NOTIFICATIONS_ACQUIRE() { mutex_.lock(); }
  void unlock() NOTIFICATIONS_RELEASE() { mutex_.unlock(); }
  bool try_lock() NOTIFICATIONS_TRY_ACQUIRE(true) { return mutex_.try_lock(); }
  void lock_shared() NOTIFICATIONS_ACQUIRE_SHARED() { mutex_.lock_shared(); }
  bool try_lock_shared() NOTIFICATIONS_TRY_ACQUIRE_SHARED(true) { return mutex_.try_lock_shared(); }
  void unlock_shared() NOTIFICATIONS_RELEASE_SHARED() { mutex_.unlock_shared(); }

 private:
  std::shared_mutex mutex_;
};

// Holds a SharedMutex shared (as a reader) from construction to destruction.
class NOTIFICATIONS_SCOPED_CAPABILITY SharedMutexReadLock {
 public:
  explicit SharedMutexReadLock(SharedMutex& mutex) NOTIFICATIONS_ACQUIRE_SHARED(mutex) : mutex_(mutex) {
    mutex_.lock_shared();
  }
  // Takes over `mutex`, which the caller holds shared (after a successful try_lock_shared()).
  SharedMutexReadLock(SharedMutex& mutex, std::adopt_lock_t) NOTIFICATIONS_REQUIRES_SHARED(mutex) : mutex_(mutex) {}
  ~SharedMutexReadLock() NOTIFICATIONS_RELEASE_GENERIC() { mutex_.unlock_shared(); }
  SharedMutexReadLock(const SharedMutexReadLock&) = delete;
  SharedMutexReadLock& operator=(const SharedMutexReadLock&) = delete;

 private:
  SharedMutex& mutex_;
};

// Holds a SharedMutex exclusively (as the writer) from construction to destruction.
class NOTIFICATIONS_SCOPED_CAPABILITY SharedMutexWriteLock {
 public:
  explicit SharedMutexWriteLock(SharedMutex& mutex) NOTIFICATIONS_ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  // Takes over `mutex`, which the caller holds (after a successful try_lock()).
  SharedMutexWriteLock(SharedMutex& mutex, std::adopt_lock_t) NOTIFICATIONS_REQUIRES(mutex) : mutex_(mutex) {}
  ~SharedMutexWriteLock() NOTIFICATIONS_RELEASE() { mutex_.unlock(); }
  SharedMutexWriteLock(const SharedMutexWriteLock&) = delete;
  SharedMutexWriteLock& operator=(const SharedMutexWriteLock&) = delete;

 private:
  SharedMutex& mutex_;
};

// Holds a Mutex from construction to destruction, as std::lock_guard does.
class NOTIFICATIONS_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) NOTIFICATIONS_ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  // Takes over `mutex`, which the caller holds (after a successful try_lock()).
  MutexLock(Mutex& mutex, std::adopt_lock_t) NOTIFICATIONS_REQUIRES(mutex) : mutex_(mutex) {}
  ~MutexLock() NOTIFICATIONS_RELEASE() { mutex_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mutex_;
};

// Releases a Mutex the caller holds from construction to destruction, and takes it again then
// (also when an exception leaves the scope): for calling out, such as a handler, in the middle
// of a locked section.
class NOTIFICATIONS_SCOPED_CAPABILITY MutexUnlock {
 public:
  explicit MutexUnlock(Mutex& mutex) NOTIFICATIONS_RELEASE(mutex) : mutex_(mutex) { mutex_.unlock(); }
  ~MutexUnlock() NOTIFICATIONS_RELEASE() { mutex_.lock(); }
  MutexUnlock(const MutexUnlock&) = delete;
  MutexUnlock& operator=(const MutexUnlock&) = delete;

 private:
  Mutex& mutex_;
};

// Holds a Mutex from construction to destruction, may release and take it again in between
// (unlock()/lock()), and waits on a std::condition_variable, as std::unique_lock does.
// The waits take no predicate: the caller loops on its condition in its own body, where the
// analysis sees the lock held (a predicate lambda is analysed on its own, without the lock).
class NOTIFICATIONS_SCOPED_CAPABILITY UniqueMutexLock {
 public:
  explicit UniqueMutexLock(Mutex& mutex) NOTIFICATIONS_ACQUIRE(mutex) : lock_(mutex.native()) {}
  ~UniqueMutexLock() NOTIFICATIONS_RELEASE() = default;
  UniqueMutexLock(const UniqueMutexLock&) = delete;
  UniqueMutexLock& operator=(const UniqueMutexLock&) = delete;

  void lock() NOTIFICATIONS_ACQUIRE() { lock_.lock(); }
  void unlock() NOTIFICATIONS_RELEASE() { lock_.unlock(); }

  // Releases the mutex while waiting, holds it again on return (also on a spurious wake-up).
  void wait(std::condition_variable& cv) { cv.wait(lock_); }
  template <class Clock, class Duration>
  std::cv_status wait_until(std::condition_variable& cv, const std::chrono::time_point<Clock, Duration>& until) {
    return cv.wait_until(lock_, until);
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace notifications::detail
