#include "process/process.hpp"

#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>

#include "process/fork_registry.hpp"
#include "process/log.hpp"

namespace notifications::detail {

namespace {

std::atomic<std::uint64_t> generation{0};
thread_local bool bus_thread = false;
std::terminate_handler previous_terminate = nullptr;  // written once, before the hook is set
std::atomic<bool> exit_shutdown_ran{false};

void on_fork_child() {
  generation.fetch_add(1, std::memory_order_relaxed);
  reseed_ids_after_fork();
}

void shut_down_before_exit(const char* why) {
  if (exit_shutdown_ran.exchange(true)) return;
  shut_down_participants_at_exit(std::chrono::steady_clock::now() + kExitDeadline, why);
}

void on_exit() {
  shut_down_before_exit("the process is exiting");
  begin_exit_logging();
}

[[noreturn]] void on_terminate() {
  // std::terminate on a bus thread would wait for itself: only the others are worth a try, and
  // the hook cannot tell which bridge owns this thread, so it goes straight on.
  if (!on_bus_thread()) shut_down_before_exit("std::terminate was called (an uncaught exception?)");
  if (previous_terminate != nullptr) previous_terminate();
  std::abort();
}

}  // namespace

std::uint64_t fork_generation() noexcept { return generation.load(std::memory_order_relaxed); }

void install_fork_hook() noexcept {
  static const bool installed = [] {
    pthread_atfork(nullptr, nullptr, on_fork_child);
    return true;
  }();
  (void)installed;
}

void install_exit_hooks() noexcept {
  install_fork_hook();
  static std::once_flag once;
  std::call_once(once, [] {
    // Logging is touched first, so that spdlog's objects exist before the hook is registered:
    // exit runs the hook before it destroys them.
    log_enabled(LogLevel::error);
    std::atexit(on_exit);
    previous_terminate = std::get_terminate();
    std::set_terminate(on_terminate);
  });
}

void mark_bus_thread() noexcept { bus_thread = true; }
bool on_bus_thread() noexcept { return bus_thread; }

}  // namespace notifications::detail
