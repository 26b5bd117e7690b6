// Private: this process as the bus sees it (which fork generation it is), and the hooks the
// library installs into the ways a process forks and ends.
//
// Fork: a pthread_atfork child handler, installed before anything that fork() must not copy is
// made, increments the fork generation and reseeds the random state behind ids in every child,
// whether or not notifications::prepare_fork()/after_fork() were called. Anything started in
// one generation (a Bridge's threads, a client connection) compares generations to tell that it
// is now in a child where its threads do not exist.
//
// Exit: once a Bridge has started, std::exit (from any thread, or a return from main) and
// std::terminate (an exception escaping main) first shut down every Bridge still running in this
// process, all within kExitDeadline, warning that shutdown() was not called; then the logger,
// which the library keeps alive beyond spdlog's own objects, is flushed (process/log.hpp).
// _exit, quick_exit and signals that kill the process run no hook (see shutdown_on_signals in
// notifications/signals.hpp for SIGTERM and SIGINT).
//
// Thread-safety: every function may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>

namespace notifications::detail {

inline constexpr std::chrono::milliseconds kExitDeadline{2000};

// 0 in the process that loaded the library; one more in each child than in its parent.
std::uint64_t fork_generation() noexcept;

// Installs the fork hook once. Idempotent, cheap after the first call.
void install_fork_hook() noexcept;

// Installs the exit and terminate hooks once (and the fork hook). Called by Bridge::start().
void install_exit_hooks() noexcept;

// Threads the bus runs call this once: the terminate hook does not wait for the bus's own threads
// when std::terminate is called on one of them.
void mark_bus_thread() noexcept;
bool on_bus_thread() noexcept;

// Implemented by ids.cpp: new random state for ids, in a child right after fork(). Runs in the
// pthread_atfork child handler, where only the forking thread exists.
void reseed_ids_after_fork() noexcept;

}  // namespace notifications::detail
