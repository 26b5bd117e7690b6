// A child forked without notifications::prepare_fork()/after_fork() never hangs: the bridge it
// inherited refuses events (counted, visible in health, said once without a lock), shuts down
// and exits, even when the fork came while another thread held the queue's lock or was logging.
// Every process gets its own ids after fork(). No server is needed: the bridges use mock://.
#include <gtest/gtest.h>
#include <pthread.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "transport/bounded_queue.hpp"
#include "notifications/bridge.hpp"
#include "local/registry.hpp"
#include "process/ids.hpp"
#include "process/log.hpp"
#include "notifications/notifications.hpp"
#include "notifications/spdlog.hpp"
#include "notifications/transports/mock.hpp"
#include "scale.hpp"
#include "wait.hpp"

// LeakSanitizer asks this at exit. A child forked without after_fork() holds memory that only the
// parent's threads (which do not exist in the child) reach: not a leak of the child's, so the
// check is skipped in children (and kept in the test process itself).
const pid_t test_process = ::getpid();
extern "C" int __lsan_is_turned_off() { return ::getpid() != test_process ? 1 : 0; }

namespace n = notifications;
using namespace std::chrono_literals;
using test_support::wait_for_child;
using test_support::wait_until;

namespace {

constexpr auto kHangBound = std::chrono::seconds(20);  // detects a hang; never a speed check

std::shared_ptr<n::MockTransport> mock() {
  static std::atomic<int> counter{0};
  n::MockOptions options;
  options.broker = "fork-" + std::to_string(counter.fetch_add(1));
  return std::make_shared<n::MockTransport>(options);
}

// What a child does with the bridge it inherited: the exit code says which check failed.
// `refused_before`: events the child instrumented already (the bridge forwards every name).
[[noreturn]] void child_uses_inherited_bridge(n::Notifier& notifier, n::Bridge& bridge,
                                             int refused_before = 0) {
  for (int i = 0; i < 100; ++i) notifier.instrument("order.placed", {{"i", i}});
  const auto health = bridge.health();
  if (health["state"] != "forked_child") std::exit(10);
  if (health["counters"]["dropped"]["forked_child"] != 100 + refused_before) std::exit(11);
  const n::ShutdownReport report = bridge.shutdown(1s);
  if (report.clean) std::exit(12);
  std::exit(0);  // the library's exit hook runs here too
}

void expect_child_refused_and_exited(pid_t pid) {
  const auto r = wait_for_child(pid, kHangBound);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "10: health state, 11: forked_child count, 12: report said clean";
}

// ---- fork while the sender holds the outbound queue's lock ---------------------------------------

std::atomic<bool> hook_armed{false};
std::atomic<bool> hook_holding{false};
std::atomic<bool> hook_release{false};

void hold_queue_lock_on_sender() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof name);
  if (std::string(name) != "ntf-sender" || !hook_armed.exchange(false)) return;
  hook_holding.store(true);
  for (int i = 0; i < 1000 && !hook_release.load(); ++i) std::this_thread::sleep_for(5ms);  // bounded: 5 s
  hook_holding.store(false);
}

TEST(ForkWithoutPrepare, ChildRefusesWhenForkedWhileTheSenderHeldTheQueueLock) {
  n::Notifier notifier;
  n::Bridge bridge(notifier, mock(), n::BridgeConfig{});
  bridge.start();
  hook_release.store(false);
  n::detail::queue_locked_test_hook.store(hold_queue_lock_on_sender);
  hook_armed.store(true);
  // An idle sender waits in the queue with no timer: an event makes it take again, and its next
  // wait runs the hook. From another thread: if the sender's first wait ran the hook already, the
  // event's push waits for the lock the hook holds until the test releases it.
  struct Waker {
    std::thread thread;
    ~Waker() {
      hook_release.store(true);  // also when an assertion below returns early
      if (thread.joinable()) thread.join();
    }
  } waker{std::thread([&] { notifier.instrument("order.placed"); })};
  ASSERT_TRUE(wait_until([] { return hook_holding.load(); }, 10s));
  const pid_t pid = ::fork();
  if (pid == 0) child_uses_inherited_bridge(notifier, bridge);
  hook_release.store(true);
  ASSERT_TRUE(wait_until([] { return !hook_holding.load(); }, 10s));
  n::detail::queue_locked_test_hook.store(nullptr);
  expect_child_refused_and_exited(pid);
  notifier.instrument("order.placed");
  EXPECT_TRUE(bridge.flush(10s)) << "the parent goes on";
  EXPECT_EQ(bridge.health()["state"], "running");
}

// ---- fork while another thread is logging --------------------------------------------------------

std::atomic<bool> sink_holding{false};
std::atomic<bool> sink_release{false};

// Blocks inside a log call (spdlog's sink lock held) until released.
class BlockingSink : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg&) override {
    sink_holding.store(true);
    for (int i = 0; i < 1000 && !sink_release.load(); ++i) std::this_thread::sleep_for(5ms);  // bounded: 5 s
    sink_holding.store(false);
  }
  void flush_() override {}
};

TEST(ForkWithoutPrepare, ChildRefusesWhenForkedWhileAnotherThreadWasLogging) {
  n::Notifier notifier;
  n::Bridge bridge(notifier, mock(), n::BridgeConfig{});
  bridge.start();
  auto previous = notifications::logger();
  notifications::set_logger(std::make_shared<spdlog::logger>("blocking", std::make_shared<BlockingSink>()));
  sink_release.store(false);
  std::thread logger([] { n::detail::log(n::detail::LogLevel::warn, "a line that blocks in its sink"); });
  ASSERT_TRUE(wait_until([] { return sink_holding.load(); }, 10s));
  const pid_t pid = ::fork();
  if (pid == 0) child_uses_inherited_bridge(notifier, bridge);
  sink_release.store(true);
  logger.join();
  notifications::set_logger(previous);
  expect_child_refused_and_exited(pid);
}

// ---- fork while another thread holds the notifier's registry lock ------------------------------

std::atomic<bool> registry_hook_armed{false};
std::atomic<bool> registry_hook_holding{false};
std::atomic<bool> registry_hook_release{false};

// Holds the registry lock (inside a name's first lookup) until released, at most 2 s.
void hold_registry_lock() {
  if (!registry_hook_armed.exchange(false)) return;
  registry_hook_holding.store(true);
  for (int i = 0; i < 400 && !registry_hook_release.load(); ++i) std::this_thread::sleep_for(5ms);
  registry_hook_holding.store(false);
}

// A name's first lookup on a thread, subscribe() and unsubscribe() take the notifier's registry
// lock. fork() waits for a thread that holds it (a short section), so the child never inherits it
// held: the child instruments new names, subscribes and unsubscribes. The hook holds the lock for
// up to 2 s; the fork comes while it holds, and the parent releases it only after fork() returned.
TEST(ForkWithoutPrepare, ChildCanInstrumentAndSubscribeWhenForkedWhileAnotherThreadHeldTheRegistryLock) {
  n::Notifier notifier;
  n::Bridge bridge(notifier, mock(), n::BridgeConfig{});
  bridge.start();
  registry_hook_release.store(false);
  n::detail::registry_locked_test_hook.store(hold_registry_lock);
  registry_hook_armed.store(true);
  struct Resolver {
    std::thread thread;
    ~Resolver() {
      registry_hook_release.store(true);  // also when an assertion below returns early
      if (thread.joinable()) thread.join();
    }
  } resolver{std::thread([&] { notifier.instrument("first.lookup.on.this.thread"); })};
  ASSERT_TRUE(wait_until([] { return registry_hook_holding.load(); }, 10s));
  const pid_t pid = ::fork();
  if (pid == 0) {
    n::detail::registry_locked_test_hook.store(nullptr);
    int seen = 0;
    auto subscription = notifier.subscribe("child.only", [&](const n::Event&) { ++seen; });
    notifier.instrument("child.only");
    if (seen != 1) std::exit(30);
    subscription.unsubscribe();
    notifier.instrument("child.only");
    if (seen != 1) std::exit(31);
    child_uses_inherited_bridge(notifier, bridge, 2);
  }
  registry_hook_release.store(true);
  resolver.thread.join();
  n::detail::registry_locked_test_hook.store(nullptr);
  const auto r = wait_for_child(pid, kHangBound);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "30: subscriber not called, 31: called after unsubscribe, "
                               "10: health state, 11: forked_child count, 12: report said clean";
}

// ---- many forks while another thread instruments at full speed -----------------------------------

TEST(ForkWithoutPrepare, ManyForksWhileAnotherThreadInstrumentsNeverHang) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  // Seen here: GCC 12's ASan allocator takes no lock around fork(), so a child forked while the
  // other thread allocates can block for ever inside ASan's own allocator (any allocation in the
  // child). glibc's malloc is fork-safe: the release and TSan builds run this test.
  GTEST_SKIP() << "ASan's allocator is not fork-safe while another thread allocates";
#endif
  n::Notifier notifier;
  n::BridgeConfig config;
  config.queue_capacity = 1024;  // often full: the instrumenting thread waits on the queue's lock
  n::Bridge bridge(notifier, mock(), config);
  bridge.start();
  std::atomic<bool> stop{false};
  std::thread instrumenting([&] {
    for (int i = 0; i < 100'000'000 && !stop.load(std::memory_order_relaxed); ++i) {
      notifier.instrument("order.placed", {{"i", i}});
    }
  });
  const int forks = std::max(6, 60 / test_support::kScale);
  int hangs = 0;
  int failures = 0;
  for (int f = 0; f < forks; ++f) {
    const pid_t pid = ::fork();
    if (pid == 0) child_uses_inherited_bridge(notifier, bridge);
    const auto r = wait_for_child(pid, kHangBound);
    if (r.timed_out) ++hangs;
    else if (!r.exited || r.exit_code != 0) ++failures;
  }
  stop.store(true);
  instrumenting.join();
  EXPECT_EQ(hangs, 0) << "of " << forks << " forks";
  EXPECT_EQ(failures, 0) << "of " << forks << " forks";
}

// ---- a transport used directly -------------------------------------------------------------------

// A publish() in flight at fork() never returns in the child: the transport there refuses work,
// and stop() neither waits for that call nor takes a lock.
TEST(ForkWithoutPrepare, ATransportWithAPublishInFlightAtForkRefusesAndStopsInTheChild) {
  auto transport = mock();
  transport->start();
  transport->set_latency(std::chrono::milliseconds(1500));
  std::atomic<bool> publishing{false};
  std::thread publisher([&] {
    publishing.store(true);
    n::Message m;
    m.subject = "fork.test";
    m.body = "{}";
    (void)transport->publish(std::vector<n::Message>{m});
  });
  ASSERT_TRUE(wait_until([&] { return publishing.load(); }, 10s));
  std::this_thread::sleep_for(50ms);  // inside the publish call's latency
  const pid_t pid = ::fork();
  if (pid == 0) {
    n::Message m;
    m.subject = "fork.test";
    const n::PublishResult result = transport->publish(std::vector<n::Message>{m});
    if (result.published != 0 || result.transient) std::exit(20);
    if (transport->flush(std::chrono::steady_clock::now() + 100ms)) std::exit(21);
    if (transport->health()["state"] != "forked_child") std::exit(22);
    transport->stop(std::chrono::steady_clock::now() + 1s);
    std::exit(0);
  }
  publisher.join();
  const auto r = wait_for_child(pid, kHangBound);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "20: publish accepted or transient, 21: flush true, 22: health state";
  transport->set_latency(std::chrono::milliseconds(0));
  EXPECT_EQ(transport->health()["state"], "started") << "the parent keeps its transport";
}

// ---- ids -------------------------------------------------------------------------------------------

// Each child reports a new bridge's instance id and an event id through a pipe.
TEST(ForkWithoutPrepare, EveryProcessGetsItsOwnIds) {
  n::Notifier notifier;
  const std::string parent_instance = n::detail::random_uuid();
  const std::string parent_event = n::detail::format_event_id(n::detail::next_event_sequence());
  std::set<std::string> seen{parent_instance, parent_event};
  for (int child = 0; child < 4; ++child) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      n::Bridge fresh(notifier, mock(), n::BridgeConfig{});
      const std::string line = fresh.instance_id() + " " +
                               n::detail::format_event_id(n::detail::next_event_sequence()) + "\n";
      [[maybe_unused]] const auto written = ::write(fds[1], line.data(), line.size());
      ::_exit(0);
    }
    ::close(fds[1]);
    std::string text;
    char buffer[256];
    for (ssize_t got; (got = ::read(fds[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<std::size_t>(got));
    ::close(fds[0]);
    expect_child_refused_and_exited(pid);
    const auto space = text.find(' ');
    ASSERT_NE(space, std::string::npos) << text;
    const std::string instance = text.substr(0, space);
    const std::string event = text.substr(space + 1, text.size() - space - 2);
    EXPECT_TRUE(seen.insert(instance).second) << "instance id " << instance << " seen before";
    EXPECT_TRUE(seen.insert(event).second) << "event id " << event << " seen before";
  }
}

}  // namespace
