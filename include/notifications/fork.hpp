// Pre-fork servers (a parent that sets the bus up, then forks workers, as Unicorn and Puma do).
//
// Threads and client-library connections do not survive fork(): the child has only the thread
// that forked, and cnats must never be used across a fork. So, around each fork():
//
//   notifications::prepare_fork();   // parent, right before fork()
//   pid_t pid = fork();
//   notifications::after_fork();     // both processes, right after
//
// prepare_fork() parks the sender and dispatcher threads of every running Bridge (they hold no
// lock while parked), has each transport close what cannot cross the fork (NATS: drains and
// closes its connection, keeping the subscriptions to restore), then runs the handlers that
// transport libraries registered (NATS: closes the cnats library so that its threads are gone).
// Events instrumented meanwhile wait in the Bridges' queues.
//
// after_fork() tells parent from child by process id. In the parent each Bridge reconnects and
// resumes, then sends what waited. In the child each Bridge becomes a fresh participant: a new
// instance id, fresh counters, its own connection and threads; what the parent's queues held at
// the fork belongs to the parent (which sends it) and is discarded in the child. A Bridge created
// after prepare_fork() waits for after_fork() to start or shut down.
//
// While the connection is closed, events that other processes publish are not received by the
// parent (core NATS keeps nothing for absent subscribers); forking at start-up, as pre-fork
// servers do, keeps that window to the time of one reconnect.
//
// Every started transport takes part, with or without a Bridge (TransportBase registers it).
// NATS closes and reopens its connection. memory:// and mock:// park their delivery threads and
// restart them in both processes; each process then has its own copy of the in-process brokers,
// and the child discards (counted as discarded) what its subscriptions held at the fork, which
// the parent delivers.
//
// Thread-safety: call both from the thread that forks, with no other thread instrumenting into
// a full queue (a thread blocked on a full queue keeps its lock across the fork). Not reentrant.
#pragma once

#include <chrono>
#include <functional>

namespace notifications {

// Throws Error when a Bridge's threads could not be parked within `timeout`; then nothing was
// prepared (the Bridges already parked are resumed).
void prepare_fork(std::chrono::milliseconds timeout = std::chrono::seconds(5));
// Does nothing when prepare_fork() was not called. Reconnecting happens in the background (a
// transport that cannot reach its server keeps trying, as after an outage); never throws.
void after_fork();

// For transport libraries: `prepare` runs after every Bridge was prepared, `after(in_child)` before
// any Bridge resumes. Registered once, for the life of the process.
void register_fork_handler(std::function<void()> prepare, std::function<void(bool in_child)> after);

}  // namespace notifications
