// A pre-fork server over NATS: the parent sets the bus up, then forks workers with
// prepare_fork()/after_fork(); parent and children each publish and receive, round after round,
// and nothing hangs. Real fork() calls, a real nats-server.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "nats_server.hpp"
#include "scale.hpp"
#include "notifications/bridge.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/nats.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using test_support::wait_until;

constexpr int kRounds = 20 / (test_support::kScale == 1 ? 1 : 4);  // 5 in the sanitizer builds
constexpr int kChildren = 4;

n::BridgeConfig config(const std::string& app) {
  n::BridgeConfig c;
  c.app = app;
  c.prefix = "fork";
  c.forward = {"worker.>"};
  c.subscribe = {"worker.>"};
  return c;
}

// The remote events a process received, by payload.
struct Inbox {
  std::mutex mutex;
  std::vector<nlohmann::json> payloads;
  void add(const nlohmann::json& p) {
    std::lock_guard lock(mutex);
    payloads.push_back(p);
  }
  bool has(const std::string& from, int round) {
    std::lock_guard lock(mutex);
    for (const auto& p : payloads) {
      if (p.value("from", "") == from && p.value("round", -1) == round) return true;
    }
    return false;
  }
};

// In the child: publish "worker.child" until the parent's event of this round arrives (both
// directions then work), then shut down cleanly. Returns the exit code.
int run_child(n::Notifier& notifier, n::Bridge& bridge, Inbox& inbox, int round, int index) {
  const std::string me = "child-" + std::to_string(index);
  bool heard_parent = false;
  for (int i = 0; i < 400 && !heard_parent; ++i) {
    notifier.instrument("worker.child", {{"from", me}, {"round", round}});
    heard_parent = wait_until([&] { return inbox.has("parent", round); }, 25ms);
  }
  // The parent subscribed before it announced the round: from now on nothing is lost on the way.
  if (heard_parent) notifier.instrument("worker.child", {{"from", me}, {"round", round}, {"last", true}});
  const n::ShutdownReport report = bridge.shutdown(5s);
  if (!heard_parent) return 2;
  return report.clean ? 0 : 3;
}

TEST(NatsFork, ParentAndFourChildrenPublishAndReceiveForTwentyRounds) {
  test_support::NatsServer server;
  n::NatsOptions options;
  options.servers = {server.url()};
  options.reconnect_wait = 50ms;

  n::Notifier notifier;
  Inbox inbox;
  auto listener = notifier.subscribe("worker.>", [&](const n::Event& e) {
    if (e.remote()) inbox.add(e.payload());
  });
  n::Bridge bridge(notifier, n::make_nats_transport(options), config("prefork"));
  bridge.start();

  for (int round = 0; round < kRounds; ++round) {
    std::vector<pid_t> children;
    n::prepare_fork();
    for (int c = 0; c < kChildren; ++c) {
      const pid_t pid = fork();
      ASSERT_GE(pid, 0) << "fork failed";
      if (pid == 0) {
        n::after_fork();
        _exit(run_child(notifier, bridge, inbox, round, c));
      }
      children.push_back(pid);
    }
    n::after_fork();

    // The parent: announce the round until every child was heard from and has exited.
    std::set<pid_t> running(children.begin(), children.end());
    std::vector<int> codes;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!running.empty() && std::chrono::steady_clock::now() < deadline) {
      notifier.instrument("worker.parent", {{"from", "parent"}, {"round", round}});
      std::this_thread::sleep_for(10ms);
      for (auto it = running.begin(); it != running.end();) {
        int status = 0;
        if (waitpid(*it, &status, WNOHANG) == *it) {
          codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
          it = running.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (pid_t pid : running) {  // hung: fail, and leave nothing behind
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    ASSERT_TRUE(running.empty()) << running.size() << " child(ren) hung in round " << round;
    for (int code : codes) EXPECT_EQ(code, 0) << "round " << round << " (2: never heard the parent, 3: unclean shutdown)";
    for (int c = 0; c < kChildren; ++c) {
      EXPECT_TRUE(wait_until([&] { return inbox.has("child-" + std::to_string(c), round); }, 10s))
          << "the parent never heard child " << c << " in round " << round;
    }
  }
  EXPECT_TRUE(bridge.shutdown(10s).clean);
}

}  // namespace
