// Runs a program as a child process with its stdout and stderr captured, and waits for it within
// a bound: the one launcher for the tests that crash, exit, fork or signal processes.
//
// Thread-safety: run_child may be called from any thread; each call owns its child.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

namespace test_support {

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

// Waits for a child made by fork(), at most `bound`; then kills it (SIGKILL) and reports a hang.
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

}  // namespace test_support
