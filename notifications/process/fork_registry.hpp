// Private: what takes part in prepare_fork() / after_fork() (notifications/fork.hpp) and in the
// shutdown the exit hooks run (notifications/process.hpp): every started Bridge, and for fork
// every started transport (TransportBase registers itself).
//
// Order: prepare_fork() prepares every Bridge (each parks its threads, then prepares its own
// transport), then every registered transport (one a Bridge prepared already returns at once),
// then the handlers of transport libraries; after_fork() runs the handlers, then the Bridges
// (each resumes its own transport), then the other transports. A transport is thus prepared only
// once the Bridge above it is parked, and resumed before the Bridge's threads run again.
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

// A started transport: prepared and resumed around fork() until unregistered. Registering
// installs the fork hook (process/process.hpp). Both wait while prepare_fork() holds the registry
// (a transport started or stopped meanwhile waits for after_fork()). The registry holds the
// pointer only: unregister before the transport is destroyed (TransportBase::stop() does).
// The registry calls a transport through these (process/ sits below the transport layer and does
// not know the Transport class): `self` is the transport, and its key for unregistering.
struct ForkTransport {
  void* self = nullptr;
  void (*prepare)(void* self, std::chrono::steady_clock::time_point deadline) = nullptr;  // never throws
  void (*after)(void* self, bool in_child) = nullptr;
};
void register_fork_transport(const ForkTransport& transport);
void unregister_fork_transport(const void* self);

// Calls shut_down_at_exit on every participant still alive. Gives up at `deadline` when another
// thread holds the registry (a prepare_fork() in progress on a thread that is gone).
void shut_down_participants_at_exit(std::chrono::steady_clock::time_point deadline, const char* why);

}  // namespace notifications::detail
