// Private: what takes part in prepare_fork() / after_fork() (notifications/fork.hpp) and in the
// shutdown the exit hooks run (notifications/process.hpp): every started Bridge.
//
// Thread-safety: every function may be called from any thread.
#pragma once

#include <chrono>
#include <memory>

namespace notifications::detail {

class ForkParticipant {
 public:
  virtual ~ForkParticipant() = default;
  // Parks and closes what cannot cross fork(). False when it could not within the deadline
  // (then it runs on, as if never asked).
  virtual bool prepare_fork(std::chrono::steady_clock::time_point deadline) = 0;
  // Called once after each successful prepare_fork(), in the parent and in the child.
  virtual void after_fork(bool in_child) = 0;
  // The process is exiting (or terminating) and shutdown() was not called: warns, then shuts
  // down by `deadline`. Does nothing when already shut down or when started in another process
  // (a forked child).
  virtual void shut_down_at_exit(std::chrono::steady_clock::time_point deadline, const char* why) = 0;
};

// Participants are held weakly: one that is gone is skipped.
void register_fork_participant(std::weak_ptr<ForkParticipant> participant);

// Calls shut_down_at_exit on every participant still alive. Gives up at `deadline` when another
// thread holds the registry (a prepare_fork() in progress on a thread that is gone).
void shut_down_participants_at_exit(std::chrono::steady_clock::time_point deadline, const char* why);

}  // namespace notifications::detail
