#include "notifications/signals.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <string>
#include <thread>

#include "notifications/bridge.hpp"
#include "notifications/errors.hpp"
#include "process/log.hpp"
#include "process/process.hpp"
#include "process/thread_name.hpp"
#include "process/thread_safety.hpp"

namespace notifications {

namespace {

constexpr int kMaxSignal = 65;

// Written before the handlers are installed, read by them: plain arrays of POD.
struct sigaction previous_actions[kMaxSignal];
int wake_pipe[2] = {-1, -1};
std::atomic<bool> installed{false};

bool is_function(const struct sigaction& action) {
  if (action.sa_flags & SA_SIGINFO) return action.sa_sigaction != nullptr;
  return action.sa_handler != SIG_DFL && action.sa_handler != SIG_IGN;
}

// Async-signal-safe: a write(2) and the previous handler.
void on_signal(int signal, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] const ssize_t written = ::write(wake_pipe[1], &byte, 1);
  errno = saved_errno;
  if (signal <= 0 || signal >= kMaxSignal) return;
  const struct sigaction& previous = previous_actions[signal];
  if (previous.sa_flags & SA_SIGINFO) {
    if (previous.sa_sigaction != nullptr) previous.sa_sigaction(signal, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signal);
  }
}

void run_watcher(std::chrono::milliseconds deadline) {
  detail::name_this_thread("ntf-signals");
  detail::mark_bus_thread();
  unsigned char byte = 0;
  while (true) {
    const ssize_t n = ::read(wake_pipe[0], &byte, 1);
    if (n == 1) break;
    if (n < 0 && errno == EINTR) continue;
    return;  // the pipe is gone: nothing more to watch
  }
  const int signal = byte;
  detail::log(detail::LogLevel::info, "notifications: signal {} received; shutting the bridge down (within {} ms)",
              signal, deadline.count());
  const ShutdownReport report = notifications::shutdown(deadline);
  (void)report;  // shutdown() logs its report
  if (signal <= 0 || signal >= kMaxSignal) return;
  const struct sigaction& previous = previous_actions[signal];
  if (!is_function(previous) && previous.sa_handler == SIG_DFL) {
    // The signal's own effect, as if this library had never been there: usually the end of the
    // process, with the signal as its status.
    sigaction(signal, &previous, nullptr);
    ::raise(signal);
  } else if (!is_function(previous)) {
    sigaction(signal, &previous, nullptr);  // ignored before: ignored again
  }
}

}  // namespace

bool shutdown_on_signals(SignalShutdownOptions options) {
  static detail::Mutex mutex;  // one installation at a time; `installed` says whether it happened
  detail::MutexLock lock(mutex);
  if (installed.load()) return false;
  if (options.signals.empty()) options.signals = {SIGTERM, SIGINT};
  for (const int signal : options.signals) {
    if (signal <= 0 || signal >= kMaxSignal || signal == SIGKILL || signal == SIGSTOP) {
      throw Error("signals", "shutdown_on_signals: signal " + std::to_string(signal) + " cannot be handled");
    }
  }
  if (::pipe2(wake_pipe, O_CLOEXEC) != 0) {
    throw Error("signals", std::string("shutdown_on_signals: pipe2 failed: ") + std::strerror(errno));
  }
  for (const int signal : options.signals) {
    struct sigaction action {};
    action.sa_sigaction = on_signal;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(signal, &action, &previous_actions[signal]) != 0) {
      throw Error("signals", "shutdown_on_signals: cannot install a handler for signal " + std::to_string(signal) +
                                 ": " + std::strerror(errno));
    }
  }
  std::thread(run_watcher, options.deadline).detach();  // lives as long as the process
  installed.store(true);
  return true;
}

}  // namespace notifications
