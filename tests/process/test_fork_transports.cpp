// prepare_fork()/after_fork() reach every started transport, with no Bridge above it: memory://
// and mock:// park their delivery threads, restart them in the parent and in the child, and each
// process then delivers on its own; what a subscription held at the fork is the parent's. No
// server is needed. Each child reports by its exit code which check failed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "notifications/bridge.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transport.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "transport_test_support.hpp"
#include "scale.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using test_support::wait_for_child;

namespace {

constexpr auto kHangBound = std::chrono::seconds(20);  // detects a hang; never a speed check
constexpr auto kWait = std::chrono::seconds(10);

// Bodies delivered to one subscription, with a bounded wait.
class Received {
 public:
  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) {
      std::lock_guard lock(mutex_);
      bodies_.push_back(d.message.body);
      changed_.notify_all();
    };
  }
  bool wait_for(const std::string& body) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, kWait, [&] {
      for (const auto& b : bodies_) {
        if (b == body) return true;
      }
      return false;
    });
  }
  bool has(const std::string& body) {
    std::lock_guard lock(mutex_);
    for (const auto& b : bodies_) {
      if (b == body) return true;
    }
    return false;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> bodies_;
};

// True when the one message was accepted.
bool publish(n::Transport& t, const std::string& body) {
  return test_support::publish1(t, n::Message{"fork.test", body, {}}).published == 1;
}

std::unique_ptr<n::Transport> queued_transport(const std::string& scheme) {
  static int next = 0;  // a broker per transport: tests never see each other's messages
  const std::string broker = "fork-" + scheme + "-" + std::to_string(next++);
  if (scheme == "memory") return n::make_memory_transport({broker, false, 1000});
  n::MockOptions options;
  options.broker = broker;
  options.inline_delivery = false;
  return std::make_unique<n::MockTransport>(options);
}

class ForkTransports : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
#if defined(NOTIFICATIONS_TEST_ASAN)
    // As in test_fork_without_prepare.cpp: GCC's ASan allocator is not fork-safe, and a child it
    // blocks would read as a hang of ours.
    GTEST_SKIP() << "ASan's allocator is not fork-safe";
#endif
  }
};

// The child: its transport was resumed by after_fork(), so it publishes and receives on its own,
// and it neither delivers nor keeps what the subscription held at the fork.
[[noreturn]] void child_checks(n::Transport& t, Received& received) {
  if (t.health()["state"] != "started") _exit(10);
  if (!publish(t, "from-child")) _exit(11);
  if (!received.wait_for("from-child")) _exit(12);
  if (received.has("held-at-fork")) _exit(13);
  if (t.health()["discarded"] != 1) _exit(14);
  t.stop(std::chrono::steady_clock::now() + kWait);
  _exit(0);
}

TEST_P(ForkTransports, TransportBasePromise9_ATransportWithoutABridgeIsResumedInParentAndChild) {
  auto t = queued_transport(GetParam());
  t->start();
  Received received;
  t->subscribe("fork.test", "", received.handler());
  ASSERT_TRUE(publish(*t, "before"));
  ASSERT_TRUE(received.wait_for("before"));

  n::prepare_fork();
  // The delivery thread is parked: this message waits in the subscription across the fork.
  ASSERT_TRUE(publish(*t, "held-at-fork"));
  const pid_t pid = ::fork();
  n::after_fork();
  if (pid == 0) child_checks(*t, received);
  ASSERT_GT(pid, 0) << "fork failed";

  // The parent delivers what was held, and goes on.
  EXPECT_TRUE(received.wait_for("held-at-fork"));
  ASSERT_TRUE(publish(*t, "after"));
  EXPECT_TRUE(received.wait_for("after"));
  EXPECT_EQ(t->health()["discarded"], 0);

  const auto r = wait_for_child(pid, kHangBound);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "10: state, 11: publish refused, 12: not delivered, 13: held message "
                               "delivered, 14: discarded count";
  t->stop(std::chrono::steady_clock::now() + kWait);
}

// A stopped transport leaves the fork registry: prepare_fork() does not touch it (it would be a
// dangling pointer once destroyed), and a transport made after stop can be forked around.
TEST_P(ForkTransports, TransportBasePromise9_StoppedAndDestroyedTransportsAreNotPrepared) {
  {
    auto gone = queued_transport(GetParam());
    gone->start();
    gone->stop(std::chrono::steady_clock::now() + kWait);
  }
  auto t = queued_transport(GetParam());
  t->start();
  Received received;
  t->subscribe("fork.test", "", received.handler());
  n::prepare_fork();
  n::after_fork();  // no fork: the parent resumes
  ASSERT_TRUE(publish(*t, "resumed"));
  EXPECT_TRUE(received.wait_for("resumed"));
  t->stop(std::chrono::steady_clock::now() + kWait);
}

INSTANTIATE_TEST_SUITE_P(MemoryAndMock, ForkTransports, ::testing::Values("memory", "mock"));

// Bridges over a queued memory transport: the Bridge prepares its own transport (the registry's
// second call does nothing), and both processes then carry their own events end to end.
TEST(ForkBridgesOverMemory, BothProcessesCarryTheirOwnEvents) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  GTEST_SKIP() << "ASan's allocator is not fork-safe (see test_fork_without_prepare.cpp)";
#endif
  const std::string url = "memory://fork-bridges?mode=queued";
  n::Notifier orders;
  n::Notifier analytics;
  n::BridgeConfig config;
  config.url = url;
  config.app = "orders";
  auto sender = n::make_bridge(orders, config);
  config.app = "analytics";
  auto receiver = n::make_bridge(analytics, config);
  sender->start();
  receiver->start();
  std::atomic<int> seen{0};
  auto sub = analytics.subscribe("order.>", [&](const n::Event& e) {
    if (e.remote()) seen.fetch_add(1);
  });

  n::prepare_fork();
  const pid_t pid = ::fork();
  n::after_fork();
  const int events = pid == 0 ? 7 : 11;
  for (int i = 0; i < events; ++i) orders.instrument("order.placed", {{"i", i}});
  const bool flushed = sender->flush(kWait);
  const bool delivered = receiver->wait_delivered(kWait);
  if (pid == 0) {
    if (!flushed) _exit(20);
    if (!delivered) _exit(21);
    if (seen.load() != events) _exit(22);
    sender->shutdown(kWait);
    receiver->shutdown(kWait);
    _exit(0);
  }
  ASSERT_GT(pid, 0) << "fork failed";
  EXPECT_TRUE(flushed);
  EXPECT_TRUE(delivered);
  EXPECT_EQ(seen.load(), events);
  const auto r = wait_for_child(pid, kHangBound);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "20: flush, 21: wait_delivered, 22: count of remote events";
}

}  // namespace
