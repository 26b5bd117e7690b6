// The one launcher of child processes for the tests and the benchmarks:
// - run_child: runs a program to completion within a bound, stdout and stderr captured (the tests
//   that crash, exit, fork or signal processes);
// - child_arguments: what a test binary run again as a child was told (its --<flag>=A,B,...);
// - spawn_child: starts a program in the background (nats-server, the nats.js interop peer), to
//   be stopped by its PID; wait_for_child reaps it (or a child made by fork()) within a bound;
//   reap_children_while reaps several while the parent keeps doing something;
// - write_report_line: how a child that may be SIGKILLed reports to its parent through a file.
//
// Thread-safety: every function may be called from any thread; each call owns its child.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

namespace test_support {

// Appends `line` and a newline to `fd` with one write(2): a child SIGKILLed at any moment has
// written the line whole, or not at all (a reader takes complete lines only).
inline void write_report_line(int fd, const std::string& line) {
  const std::string text = line + "\n";
  (void)!::write(fd, text.data(), text.size());
}

struct ChildResult {
  bool timed_out = false;  // killed (SIGKILL) after the bound: a hang
  bool exited = false;     // ended by exit/return, with `exit_code`
  int exit_code = -1;
  int signal = 0;          // the signal that ended it, when not exited
  std::string output;      // stdout and stderr, interleaved

  std::string describe() const {
    std::string how = timed_out ? "timed out (killed)"
                      : exited  ? "exited " + std::to_string(exit_code)
                                : "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
    return how + "; output:\n" + output;
  }
};

// How a waitpid() status says the child ended.
inline void record_status(int status, ChildResult& result) {
  if (WIFEXITED(status)) {
    result.exited = true;
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
}

// `args[0]` is the program's path. `env` entries ("KEY=value") are added to this process's
// environment (a KEY set here too is replaced). Kills the child with SIGKILL after `bound`.
inline ChildResult run_child(const std::vector<std::string>& args, const std::vector<std::string>& env,
                             std::chrono::milliseconds bound) {
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string key = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const std::string& extra : env) replaced = replaced || extra.substr(0, extra.find('=')) == key;
    if (!replaced) environment.push_back(entry);
  }
  environment.insert(environment.end(), env.begin(), env.end());
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : environment) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  if (spawned != 0) {
    ::close(pipe_fds[0]);
    throw std::runtime_error("posix_spawn " + args[0] + ": " + std::strerror(spawned));
  }

  ChildResult result;
  const auto give_up = std::chrono::steady_clock::now() + bound;
  char buffer[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(give_up - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    pollfd fd{pipe_fds[0], POLLIN, 0};
    const int ready = ::poll(&fd, 1, static_cast<int>(std::min<long long>(left.count(), 200)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (n <= 0) break;  // every copy of the write end is closed: the child (and its children) ended
    if (result.output.size() < 4 * 1024 * 1024) result.output.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(pipe_fds[0]);
  if (result.timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  // Bounded too: output closed means the child is ending; a zombie is reaped at once.
  for (int i = 0; i < 1000; ++i) {
    const pid_t done = ::waitpid(pid, &status, result.timed_out ? 0 : WNOHANG);
    if (done == pid) break;
    if (i == 999) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      result.timed_out = true;
    }
    ::usleep(10'000);
  }
  record_status(status, result);
  return result;
}

// A child started by spawn_child. `stdout_fd` and `stderr_fd` are the read ends of its output
// pipes (close-on-exec; the caller closes them), or -1 when the output goes to a log file.
struct SpawnedChild {
  pid_t pid = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
};

// Starts `args` (args[0] an absolute path) in the background with stdin from /dev/null and
// stdout and stderr appended to `log_path`, or, when `log_path` is empty, on two pipes. The child
// inherits no other descriptor (a client library's sockets must not outlive the parent's use of
// them) and gets SIGKILL when the thread that started it exits. Throws std::runtime_error naming
// what failed; a failed exec shows as exit code 127.
inline SpawnedChild spawn_child(const std::vector<std::string>& args, const std::string& log_path = {}) {
  if (args.empty() || args[0].empty() || args[0][0] != '/') {
    throw std::runtime_error("spawn_child: args[0] must be an absolute path");
  }
  const auto fail = [](const std::string& what, const std::vector<int>& fds) {
    const int saved = errno;
    for (const int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
    throw std::runtime_error("spawn_child: " + what + ": " + std::strerror(saved));
  };
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int out[2] = {-1, -1};
  int err[2] = {-1, -1};
  if (log_path.empty()) {
    if (::pipe2(out, O_CLOEXEC) != 0) fail("pipe2", {});
    if (::pipe2(err, O_CLOEXEC) != 0) fail("pipe2", {out[0], out[1]});
  } else {
    out[1] = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (out[1] < 0) fail("open " + log_path, {});
    err[1] = out[1];
  }
  const auto ours = [&] {
    std::vector<int> fds{out[0], out[1], err[0]};
    if (err[1] != out[1]) fds.push_back(err[1]);
    return fds;
  };
  const int null_in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_in < 0) fail("open /dev/null", ours());
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  const int max_fd = static_cast<int>(std::min<rlim_t>(files.rlim_cur, 65536));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // the child: async-signal-safe calls only, then exec
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    ::dup2(null_in, 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    if (::syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
      for (int fd = 3; fd < max_fd; ++fd) ::close(fd);
    }
    ::execv(argv[0], argv.data());
    static const char message[] = "spawn_child: exec failed\n";
    (void)!::write(2, message, sizeof message - 1);
    ::_exit(127);
  }
  std::vector<int> fds = ours();
  fds.push_back(null_in);
  if (pid < 0) fail("fork", fds);
  ::close(null_in);
  ::close(out[1]);
  if (err[1] != out[1]) ::close(err[1]);
  return SpawnedChild{pid, out[0], err[0]};
}

// Waits for a child made by fork() or spawn_child(), at most `bound`; then kills it (SIGKILL) and reports a hang.
inline ChildResult wait_for_child(pid_t pid, std::chrono::milliseconds bound) {
  ChildResult result;
  const auto give_up = std::chrono::steady_clock::now() + bound;
  int status = 0;
  while (true) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (std::chrono::steady_clock::now() >= give_up) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      result.timed_out = true;
      return result;
    }
    ::usleep(5'000);
  }
  record_status(status, result);
  return result;
}

// Children made by fork(): calls `tick` about every `interval` until each of `pids` exited or
// `bound` passed. Returns the exit codes (128 + signal for a killed one) in the order the children
// ended; the ones still running at the bound are killed (SIGKILL), reaped and counted in `hung`.
inline std::vector<int> reap_children_while(const std::vector<pid_t>& pids, std::chrono::milliseconds bound,
                                            std::chrono::milliseconds interval, const std::function<void()>& tick,
                                            std::size_t& hung) {
  std::set<pid_t> running(pids.begin(), pids.end());
  std::vector<int> codes;
  const auto give_up = std::chrono::steady_clock::now() + bound;
  while (!running.empty() && std::chrono::steady_clock::now() < give_up) {
    tick();
    ::usleep(static_cast<useconds_t>(std::chrono::duration_cast<std::chrono::microseconds>(interval).count()));
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      if (::waitpid(*it, &status, WNOHANG) == *it) {
        codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        it = running.erase(it);
      } else {
        ++it;
      }
    }
  }
  hung = running.size();
  for (pid_t pid : running) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  return codes;
}

// A test binary run again as a child: the value of its argument "--<flag>=VALUE", read from
// /proc/self/cmdline (gtest_main keeps argv to itself), split at commas; empty in the parent.
inline std::vector<std::string> child_arguments(const std::string& flag) {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string prefix = "--" + flag + "=";
  std::string arg;
  while (std::getline(in, arg, '\0')) {
    if (arg.rfind(prefix, 0) != 0) continue;
    std::vector<std::string> parts;
    std::stringstream values(arg.substr(prefix.size()));
    std::string part;
    while (std::getline(values, part, ',')) parts.push_back(part);
    return parts;
  }
  return {};
}

}  // namespace test_support
