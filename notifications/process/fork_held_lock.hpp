// Private: locks that fork() never copies while held.
//
// A child forked without notifications::prepare_fork() (a plain fork(), a library's or a test
// framework's) inherits every lock exactly as another thread held it at that instant, and that
// thread does not exist in the child: a lock it held stays held for ever there. The library's
// short locks that a child still needs (a Notifier's registry, which instrument() takes on a
// per-thread cache miss, subscribe() and unsubscribe() always) are therefore registered here:
// a pthread_atfork prepare handler takes every registered lock before fork() copies the process,
// and the parent and child handlers release them, so the child finds each one free and the data
// behind it consistent.
//
// Contract for a registered mutex: it is held only briefly, never while user code runs, never
// while waiting for anything but memory, and the thread holding it never calls fork() nor
// registers or unregisters a lock. fork() then waits at most for those short sections to end.
// Locks held across user callbacks or I/O (a logger's sink, a queue a blocked producer waits on)
// must not be registered: their users take the forked-child paths instead (a Bridge refuses
// without a lock, logging in a child skips the logger).
//
// Thread-safety: ForkHeldLock may be constructed and destroyed on any thread, concurrently with
// fork() on another (both wait for the other to finish).
#pragma once

#include "process/thread_safety.hpp"

namespace notifications::detail {

// Registers `mutex` from construction to destruction. Declare it right after the mutex it
// registers, so that it is destroyed first.
class ForkHeldLock {
 public:
  explicit ForkHeldLock(Mutex& mutex);
  ~ForkHeldLock();
  ForkHeldLock(const ForkHeldLock&) = delete;
  ForkHeldLock& operator=(const ForkHeldLock&) = delete;

 private:
  friend struct ForkHeldLocks;
  Mutex& mutex_;
  ForkHeldLock* previous_ = nullptr;  // intrusive list: registering never allocates
  ForkHeldLock* next_ = nullptr;
};

}  // namespace notifications::detail
