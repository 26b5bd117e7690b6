// The sender's linger (docs/bridge.md, "Steady streams"): over a transport that holds writes back
// (TransportCapabilities::write_delay), a sender kept busy by a steady stream gathers events for
// a quarter of that delay before it publishes them, and a shutdown or a fork's pause ends the
// wait at once. mock:// with a write_delay stands in for NATS without send_asap.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "bridge_test_support.hpp"
#include "notifications/bridge.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transports/mock.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using test_support::config_for;
using test_support::wait_until;

namespace {

// A started Bridge forwarding "tick.>" over a mock transport that says it holds writes back
// for `write_delay`: its sender lingers a quarter of that. The notifier outlives the bridge.
struct LingeringBridge {
  LingeringBridge(const std::string& name, std::chrono::milliseconds write_delay)
      : transport(holding_writes(name, write_delay)), bridge(notifier, transport, forwarding(name)) {
    bridge.start();
  }

  static std::shared_ptr<n::MockTransport> holding_writes(const std::string& name, std::chrono::milliseconds write_delay) {
    n::MockOptions options{.broker = test_support::unique_broker("linger-" + name)};
    options.capabilities.write_delay = write_delay;
    return std::make_shared<n::MockTransport>(options);
  }
  static n::BridgeConfig forwarding(const std::string& app) {
    n::BridgeConfig config = config_for(app);
    config.forward = {"tick.>"};
    return config;
  }

  void tick(int i) { notifier.instrument("tick.a", {{"i", i}}); }
  std::size_t published() const { return transport->published().size(); }

  // Two events, each sent before the next is instrumented: the second batch follows the first
  // closely, so the sender now lingers after it.
  void start_a_stream() {
    tick(1);
    ASSERT_TRUE(wait_until([&] { return published() == 1; }, 10s));
    tick(2);
    ASSERT_TRUE(wait_until([&] { return published() == 2; }, 10s));
  }

  n::Notifier notifier;
  std::shared_ptr<n::MockTransport> transport;
  n::Bridge bridge;
};

}  // namespace

// Events instrumented apart from each other while the sender lingers reach the transport in one
// publish() call; without the linger the sender, woken for each, publishes each alone.
TEST(BridgeLinger, AStreamIsGatheredIntoOnePublish) {
  LingeringBridge b("gather", 2s);  // lingers 500 ms
  b.start_a_stream();
  const std::size_t calls_before = b.transport->publish_calls();
  for (int i = 3; i <= 5; ++i) {
    b.tick(i);
    std::this_thread::sleep_for(20ms);  // long enough for a woken sender to take each alone
  }
  ASSERT_TRUE(wait_until([&] { return b.published() == 5; }, 10s));
  EXPECT_EQ(b.transport->publish_calls(), calls_before + 1) << b.bridge.health().dump();
  EXPECT_TRUE(b.bridge.shutdown(5s).clean);
}

// A lone event is not held back, and the sender does not linger after it: the first event after
// a quiet spell is published at once, and so is the next one, although a linger (10 s here)
// would outlast the test's bound. Only a batch that closely follows another is followed by one.
TEST(BridgeLinger, ALoneEventIsSentAtOnceAndNotLingeredAfter) {
  LingeringBridge b("lone", 400s);  // would linger 10 s (at most kMaxLinger)
  b.tick(1);
  ASSERT_TRUE(wait_until([&] { return b.published() == 1; }, 5s));
  b.tick(2);
  EXPECT_TRUE(wait_until([&] { return b.published() == 2; }, 5s));
  EXPECT_TRUE(b.bridge.shutdown(5s).clean);
}

// shutdown() ends a linger: what waited is sent and confirmed within the deadline, although the
// linger alone would outlast it.
TEST(BridgeLinger, ShutdownEndsALingerAndSendsWhatWaited) {
  LingeringBridge b("shutdown", 40s);  // lingers 10 s
  b.start_a_stream();
  b.tick(3);  // waits in the outbox while the sender lingers
  const n::ShutdownReport report = b.bridge.shutdown(3s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 3u) << report.detail;
  EXPECT_EQ(b.published(), 3u);
}

// A fork's pause ends a linger: prepare_fork() parks the sender within its timeout (it throws
// otherwise), and after_fork() in the parent resumes it with what waited.
TEST(BridgeLinger, AForkPauseEndsALinger) {
  LingeringBridge b("fork", 40s);  // lingers 10 s
  b.start_a_stream();
  EXPECT_NO_THROW(n::prepare_fork(3s));
  n::after_fork();  // no fork: this process is the parent
  b.tick(3);
  EXPECT_TRUE(wait_until([&] { return b.published() == 3; }, 10s));
  EXPECT_TRUE(b.bridge.shutdown(5s).clean);
}
