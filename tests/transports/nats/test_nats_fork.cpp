// A pre-fork server over NATS: the parent sets the bus up, then forks workers with
// prepare_fork()/after_fork(); parent and children each publish and receive, round after round,
// and nothing hangs. Real fork() calls, a real nats-server.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
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

#include "child_process.hpp"
#include "nats_server.hpp"
#include "scale.hpp"
#include "notifications/bridge.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/nats.hpp"
#include "transport_test_support.hpp"
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
    std::vector<pid_t> pids;
    n::prepare_fork();
    for (int c = 0; c < kChildren; ++c) {
      const pid_t pid = fork();
      ASSERT_GE(pid, 0) << "fork failed";
      if (pid == 0) {
        n::after_fork();
        _exit(run_child(notifier, bridge, inbox, round, c));
      }
      pids.push_back(pid);
    }
    n::after_fork();

    // The parent: announce the round until every child was heard from and has exited.
    std::size_t hung = 0;
    const std::vector<int> codes = test_support::reap_children_while(
        pids, 30s, 10ms, [&] { notifier.instrument("worker.parent", {{"from", "parent"}, {"round", round}}); }, hung);
    ASSERT_EQ(hung, 0u) << hung << " child(ren) hung in round " << round;
    for (int code : codes) EXPECT_EQ(code, 0) << "round " << round << " (2: never heard the parent, 3: unclean shutdown)";
    for (int c = 0; c < kChildren; ++c) {
      EXPECT_TRUE(wait_until([&] { return inbox.has("child-" + std::to_string(c), round); }, 10s))
          << "the parent never heard child " << c << " in round " << round;
    }
  }
  EXPECT_TRUE(bridge.shutdown(10s).clean);
}

// ---- a fork without after_fork() ------------------------------------------------------------------

// What a child saw, as bits of its exit code.
enum ChildSaw : int {
  kPublishNotRefused = 1,  // publish() did not fail for good
  kFlushTrue = 2,          // flush() said everything left the process
  kHealthWrong = 4,        // health() did not say "forked_child"
  kStopSlow = 8,           // stop() took more than 3 s (it should return at once)
};

// fork() without prepare_fork() while one thread publishes and the transport's log thread is
// blocked in the middle of writing a line (standard output is a full pipe, so the logger's locks
// are held at fork()). In the child, publish, flush, health and stop must neither touch cnats
// nor take those locks: each returns at once. A child that hangs is killed after 20 s.
TEST(NatsFork, ChildWithoutAfterForkNeverTouchesCnatsOrHeldLocks) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  // Seen here: GCC 12's ASan allocator takes no lock around fork(), so a child forked while
  // another thread allocates (the publisher, cnats' threads) can block for ever in ASan's own
  // allocator at its first allocation. glibc's malloc is fork-safe: release and TSan run this.
  GTEST_SKIP() << "ASan's allocator is not fork-safe while other threads allocate";
#endif
  test_support::NatsServer server;
  n::NatsOptions options;
  options.servers = {server.url()};
  options.pending_messages_limit = 1;  // slow-consumer events: lines for the log thread
  options.headers = true;              // the publisher's messages take cnats' natsMsg path
  auto transport = n::make_nats_transport(options);
  transport->start();
  transport->subscribe("fk.>", "", [](n::Delivery&&) { std::this_thread::sleep_for(100us); });
  n::NatsOptions feeder_options;
  feeder_options.servers = {server.url()};
  auto feeder = n::make_nats_transport(feeder_options);
  feeder->start();

  // Standard output becomes a small pipe filled to the brim: the next log line blocks its writer
  // with the logger's and stdio's locks held, until the pipe is drained below.
  std::fflush(stdout);
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  fcntl(pipe_fds[1], F_SETPIPE_SZ, 4096);
  const int saved_stdout = dup(STDOUT_FILENO);
  dup2(pipe_fds[1], STDOUT_FILENO);
  fcntl(pipe_fds[1], F_SETFL, O_NONBLOCK);
  const std::string filler(1024, '.');
  while (write(pipe_fds[1], filler.data(), filler.size()) > 0) {
  }
  fcntl(pipe_fds[1], F_SETFL, 0);

  // Where each child got to, for the message when one hangs.
  auto* step = static_cast<std::atomic<int>*>(
      mmap(nullptr, sizeof(std::atomic<int>) * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(step, MAP_FAILED);

  std::atomic<bool> stop_threads{false};
  std::atomic<bool> in_publish{false};
  std::thread publisher([&] {
    const std::vector<n::Message> batch(20, n::Message{"fk.p", "{}", {{"Nats-Msg-Id", "x"}}});
    for (int i = 0; i < 1'000'000 && !stop_threads.load(); ++i) {
      in_publish.store(true);
      transport->publish(batch);
      in_publish.store(false);
      std::this_thread::sleep_for(1ms);  // most forks fall between publishes: those children also stop()
    }
  });
  std::thread flooder([&] {
    const std::vector<n::Message> batch(50, n::Message{"fk.f", "{}", {}});
    for (int i = 0; i < 1'000'000 && !stop_threads.load(); ++i) {
      feeder->publish(batch);
      std::this_thread::sleep_for(1ms);
    }
  });
  wait_until([&] { return transport->health()["slow_consumer_events"].get<int>() > 0; }, 10s);
  std::this_thread::sleep_for(100ms);

  constexpr int kForks = 6;
  struct Outcome {
    int code = -1;  // exit code; -1: hung
    int step = 0;
    bool publish_in_flight = false;
  };
  std::vector<Outcome> outcomes;
  for (int f = 0; f < kForks; ++f) {
    step[f].store(0);
    const pid_t pid = fork();
    if (pid == 0) {
      const bool publishing = in_publish.load();  // as it was at fork()
      int saw = 0;
      step[f].store(1);
      const n::Message m{"fk.child", "{}", {}};
      const n::PublishResult r = test_support::publish1(*transport, m);
      if (r.published != 0 || r.transient) saw |= kPublishNotRefused;
      step[f].store(2);
      if (transport->flush(test_support::in(200ms))) saw |= kFlushTrue;
      step[f].store(3);
      const nlohmann::json h = transport->health();
      if (h.value("state", "") != "forked_child") saw |= kHealthWrong;
      step[f].store(4);
      // A publish() in flight at fork() never returns in the child, and TransportBase::stop()
      // waits for it (outside this transport): only a child forked between publishes stops.
      // Called directly (no new thread in a forked child): a hang shows as step 4.
      if (!publishing) {
        const auto started = std::chrono::steady_clock::now();
        transport->stop(test_support::in(300ms));
        if (std::chrono::steady_clock::now() - started > 3s) saw |= kStopSlow;
      }
      step[f].store(5);
      _exit(saw + (publishing ? 64 : 0));
    }
    Outcome outcome;
    int status = 0;
    const bool exited = wait_until([&] { return waitpid(pid, &status, WNOHANG) == pid; }, 20s);
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    } else {
      outcome.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    outcome.step = step[f].load();
    outcomes.push_back(outcome);
    std::this_thread::sleep_for(20ms);
  }

  // Standard output back, and the pipe drained so the blocked writer goes on.
  dup2(saved_stdout, STDOUT_FILENO);
  close(saved_stdout);
  close(pipe_fds[1]);
  std::thread drain([fd = pipe_fds[0]] {
    char buffer[4096];
    while (read(fd, buffer, sizeof buffer) > 0) {
    }
    close(fd);
  });
  stop_threads.store(true);
  publisher.join();
  flooder.join();
  feeder->stop(test_support::in(10s));
  transport->stop(test_support::in(10s));
  drain.join();
  munmap(step, sizeof(std::atomic<int>) * 8);

  int stopped_children = 0;
  for (std::size_t f = 0; f < outcomes.size(); ++f) {
    const Outcome& o = outcomes[f];
    ASSERT_NE(o.code, -1) << "child " << f << " hung at step " << o.step
                          << " (1 publish, 2 flush, 3 health, 4 stop)";
    ASSERT_LT(o.code, 128) << "child " << f << " died of signal " << o.code - 128;
    const int saw = o.code & 63;
    if ((o.code & 64) == 0) ++stopped_children;
    EXPECT_EQ(saw & kPublishNotRefused, 0) << "child " << f;
    EXPECT_EQ(saw & kFlushTrue, 0) << "child " << f;
    EXPECT_EQ(saw & kHealthWrong, 0) << "child " << f;
    EXPECT_EQ(saw & kStopSlow, 0) << "child " << f;
  }
  std::printf("%d of %d children were forked between publishes and called stop()\n", stopped_children, kForks);
}

}  // namespace
