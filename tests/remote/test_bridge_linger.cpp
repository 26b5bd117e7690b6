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

// A mock transport that says it holds writes back for `write_delay`: the sender lingers a
// quarter of it.
std::shared_ptr<n::MockTransport> holding_writes(const std::string& name, std::chrono::milliseconds write_delay) {
  n::MockOptions options{.broker = test_support::unique_broker("linger-" + name)};
  options.capabilities.write_delay = write_delay;
  return std::make_shared<n::MockTransport>(options);
}

n::BridgeConfig forwarding(const std::string& app) {
  n::BridgeConfig config = config_for(app);
  config.forward = {"tick.>"};
  return config;
}

// Two events, each sent before the next is instrumented: the second batch follows the first
// closely, so the sender now lingers after it.
void start_a_stream(n::Notifier& notifier, const n::MockTransport& transport) {
  notifier.instrument("tick.a", {{"i", 1}});
  ASSERT_TRUE(wait_until([&] { return transport.published().size() == 1; }, 10s));
  notifier.instrument("tick.a", {{"i", 2}});
  ASSERT_TRUE(wait_until([&] { return transport.published().size() == 2; }, 10s));
}

}  // namespace

// Events instrumented apart from each other while the sender lingers reach the transport in one
// publish() call; without the linger the sender, woken for each, publishes each alone.
TEST(BridgeLinger, AStreamIsGatheredIntoOnePublish) {
  n::Notifier notifier;
  auto transport = holding_writes("gather", 2s);  // lingers 500 ms
  n::Bridge bridge(notifier, transport, forwarding("gather"));
  bridge.start();
  start_a_stream(notifier, *transport);
  const std::size_t calls_before = transport->publish_calls();
  for (int i = 3; i <= 5; ++i) {
    notifier.instrument("tick.a", {{"i", i}});
    std::this_thread::sleep_for(20ms);  // long enough for a woken sender to take each alone
  }
  ASSERT_TRUE(wait_until([&] { return transport->published().size() == 5; }, 10s));
  EXPECT_EQ(transport->publish_calls(), calls_before + 1) << bridge.health().dump();
  EXPECT_TRUE(bridge.shutdown(5s).clean);
}

// A lone event is not held back, and the sender does not linger after it: the first event after
// a quiet spell is published at once, and so is the next one, although a linger (10 s here)
// would outlast the test's bound. Only a batch that closely follows another is followed by one.
TEST(BridgeLinger, ALoneEventIsSentAtOnceAndNotLingeredAfter) {
  n::Notifier notifier;
  auto transport = holding_writes("lone", 400s);  // would linger 10 s (at most kMaxLinger)
  n::Bridge bridge(notifier, transport, forwarding("lone"));
  bridge.start();
  notifier.instrument("tick.a", {{"i", 1}});
  ASSERT_TRUE(wait_until([&] { return transport->published().size() == 1; }, 5s));
  notifier.instrument("tick.a", {{"i", 2}});
  EXPECT_TRUE(wait_until([&] { return transport->published().size() == 2; }, 5s));
  EXPECT_TRUE(bridge.shutdown(5s).clean);
}

// shutdown() ends a linger: what waited is sent and confirmed within the deadline, although the
// linger alone would outlast it.
TEST(BridgeLinger, ShutdownEndsALingerAndSendsWhatWaited) {
  n::Notifier notifier;
  auto transport = holding_writes("shutdown", 40s);  // lingers 10 s
  n::Bridge bridge(notifier, transport, forwarding("shutdown"));
  bridge.start();
  start_a_stream(notifier, *transport);
  notifier.instrument("tick.a", {{"i", 3}});  // waits in the outbox while the sender lingers
  const n::ShutdownReport report = bridge.shutdown(3s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 3u) << report.detail;
  EXPECT_EQ(transport->published().size(), 3u);
}

// A fork's pause ends a linger: prepare_fork() parks the sender within its timeout (it throws
// otherwise), and after_fork() in the parent resumes it with what waited.
TEST(BridgeLinger, AForkPauseEndsALinger) {
  n::Notifier notifier;
  auto transport = holding_writes("fork", 40s);  // lingers 10 s
  n::Bridge bridge(notifier, transport, forwarding("fork"));
  bridge.start();
  start_a_stream(notifier, *transport);
  EXPECT_NO_THROW(n::prepare_fork(3s));
  n::after_fork();  // no fork: this process is the parent
  notifier.instrument("tick.a", {{"i", 3}});
  EXPECT_TRUE(wait_until([&] { return transport->published().size() == 3; }, 10s));
  EXPECT_TRUE(bridge.shutdown(5s).clean);
}
