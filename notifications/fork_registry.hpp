// Private: what takes part in prepare_fork() / after_fork() (notifications/fork.hpp).
//
// Thread-safety: register_fork_participant may be called from any thread.
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
};

// Participants are held weakly: one that is gone is skipped.
void register_fork_participant(std::weak_ptr<ForkParticipant> participant);

}  // namespace notifications::detail
