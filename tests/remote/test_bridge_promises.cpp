// The Bridge's numbered promises (docs/bridge.md), one test each, named BridgePromiseN_...
// Transports: mock:// (fault injection) and memory://, each test on a broker of its own.
#include <gtest/gtest.h>

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bridge_test_support.hpp"
#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::config_for;
using test_support::counter;
using test_support::dropped;
using test_support::wait_until;

namespace {

std::string broker(const std::string& base) { return test_support::unique_broker("promise-" + base); }

std::shared_ptr<n::MockTransport> mock_on(const std::string& name, bool inline_delivery = true) {
  return std::make_shared<n::MockTransport>(n::MockOptions{.broker = name, .inline_delivery = inline_delivery});
}

// The payload field "i" of every message the mock published, in order.
std::vector<int> published_sequence(const n::MockTransport& transport) {
  std::vector<int> out;
  for (const n::Message& m : transport.published()) {
    const auto decoded = n::decode_envelope(m.body);
    if (decoded) out.push_back(decoded.envelope->payload["i"].get<int>());
  }
  return out;
}

std::string this_thread_name() {
  char name[32] = {};
  pthread_getname_np(pthread_self(), name, sizeof name);
  return name;
}

}  // namespace

TEST(BridgePromises, BridgePromise1_InstrumentReturnsWhileThePublishIsStillInFlight) {
  n::Notifier notifier;
  auto transport = mock_on(broker("p1"));
  n::Bridge bridge(notifier, transport, config_for("p1"));
  bridge.start();
  transport->set_latency(2s);  // every publish() takes 2 s
  notifier.instrument("slow.first", {{"i", 0}});
  ASSERT_TRUE(wait_until([&] { return counter(bridge.health(), "accepted") == 1; }));
  for (int i = 1; i <= 100; ++i) notifier.instrument("slow.next", {{"i", i}});
  // All 101 calls returned while the first publish() is still sleeping in the transport.
  EXPECT_EQ(transport->published_count(), 0u);
  EXPECT_EQ(counter(bridge.health(), "accepted"), 101u);
  transport->set_latency(0s);
  const auto report = bridge.shutdown(20s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(transport->published_count(), 101u);
}

TEST(BridgePromises, BridgePromise2_OrderIsKeptThroughTransientFailuresAndRetries) {
  n::Notifier notifier;
  auto transport = mock_on(broker("p2"));
  n::BridgeConfig config = config_for("p2");
  config.batch_size = 7;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  std::vector<int> expected;
  for (int i = 0; i < 300; ++i) {
    if (i % 50 == 0) transport->fail_next_publishes(2);
    notifier.instrument("ordered", {{"i", i}});
    expected.push_back(i);
  }
  ASSERT_TRUE(bridge.flush(20s));
  EXPECT_EQ(published_sequence(*transport), expected);
  EXPECT_GE(counter(bridge.health(), "retried"), 2u);
}

TEST(BridgePromises, BridgePromise4_EveryAcceptedEventIsSentDroppedOrReportedOnce) {
  n::Notifier notifier;
  auto transport = mock_on(broker("p4"));
  n::BridgeConfig config = config_for("p4");
  config.queue_capacity = 64;
  config.batch_size = 16;
  config.overflow = n::OverflowPolicy::drop_oldest;
  config.retry.max_attempts = 3;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  for (int i = 0; i < 50; ++i) notifier.instrument("account.ok", {{"i", i}});  // fits the queue
  ASSERT_TRUE(bridge.flush(10s));
  transport->fail_next_publishes(1, /*transient=*/false);  // one batch refused for good
  notifier.instrument("account.rejected", {{"i", 50}});
  ASSERT_TRUE(wait_until([&] { return dropped(bridge.health(), "publish_rejected") == 1; }));
  transport->disconnect();  // the rest cannot leave: evicted or still queued at the deadline
  for (int i = 51; i < 400; ++i) notifier.instrument("account.stuck", {{"i", i}});
  const auto report = bridge.shutdown(300ms);
  const json health = bridge.health();
  std::uint64_t dropped_after_accept = 0;
  for (const char* reason : {"queue_evicted", "invalid_subject", "encode_failed", "publish_rejected",
                             "retries_exhausted", "too_large", "shutdown_deadline"}) {
    dropped_after_accept += dropped(health, reason);
  }
  EXPECT_EQ(counter(health, "accepted"), counter(health, "sent") + dropped_after_accept) << health.dump();
  EXPECT_EQ(counter(health, "sent"), 50u);
  EXPECT_EQ(dropped(health, "publish_rejected"), 1u);
  EXPECT_GT(dropped(health, "queue_evicted"), 0u) << health.dump();
  EXPECT_EQ(report.undelivered, counter(health, "accepted") - report.confirmed) << health.dump();
  EXPECT_EQ(report.confirmed, 50u);
  EXPECT_FALSE(report.clean);
}

TEST(BridgePromises, BridgePromise5_NoEchoAndNoForwardingOfRemoteEvents) {
  const std::string name = broker("p5");
  n::Notifier a_notifier, b_notifier;
  auto a_transport = mock_on(name);
  auto b_transport = mock_on(name);
  n::Bridge a(a_notifier, a_transport, config_for("a"));
  n::Bridge b(b_notifier, b_transport, config_for("b"));
  a.start();
  b.start();
  std::atomic<int> a_seen{0}, b_seen{0};
  auto sa = a_notifier.subscribe("loop.>", [&](const n::Event&) { a_seen.fetch_add(1); });
  auto sb = b_notifier.subscribe("loop.>", [&](const n::Event&) { b_seen.fetch_add(1); });
  for (int i = 0; i < 10; ++i) a_notifier.instrument("loop.ping", {{"i", i}});
  ASSERT_TRUE(wait_until([&] { return b_seen.load() == 10; }));
  ASSERT_TRUE(a.flush(5s));
  ASSERT_TRUE(b.flush(5s));
  EXPECT_EQ(a_seen.load(), 10);                    // its own local events, never the echo
  EXPECT_EQ(b_transport->published_count(), 0u);  // b never forwarded what it received
  EXPECT_EQ(counter(a.health(), "received"), 0u);
}

TEST(BridgePromises, BridgePromise6_ListenersOfRemoteEventsRunOnTheDispatcherNotTheTransportThread) {
  const std::string name = broker("p6");
  n::Notifier a_notifier, b_notifier;
  // Inline delivery: the transport calls the Bridge's handler on the publishing thread itself.
  n::Bridge a(a_notifier, n::make_memory_transport({.broker = name, .inline_delivery = true}), config_for("a"));
  n::Bridge b(b_notifier, n::make_memory_transport({.broker = name, .inline_delivery = true}), config_for("b"));
  a.start();
  b.start();
  std::mutex mutex;
  std::vector<std::string> threads;
  auto sub = b_notifier.subscribe("where.>", [&](const n::Event&) {
    std::lock_guard lock(mutex);
    threads.push_back(this_thread_name());
  });
  for (int i = 0; i < 5; ++i) a_notifier.instrument("where.am.i", {{"i", i}});
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mutex);
    return threads.size() == 5;
  }));
  std::lock_guard lock(mutex);
  for (const std::string& thread : threads) EXPECT_EQ(thread, "ntf-dispatcher");
}

TEST(BridgePromises, BridgePromise7_AnEnvelopeThatFailsItsChecksNeverReachesAListener) {
  const std::string name = broker("p7");
  n::Notifier notifier;
  std::atomic<int> dead{0}, heard{0};
  n::Bridge bridge(notifier, mock_on(name), config_for("p7"),
                   {.dead_letter = [&](const n::Message&, std::string_view) { dead.fetch_add(1); }, .instance_id = {}});
  bridge.start();
  auto sub = notifier.subscribe([&](const n::Event&) { heard.fetch_add(1); });
  // A valid envelope of "order.placed" under the subject of another name, and one that is not JSON.
  n::Notifier other_notifier;
  auto other_transport = mock_on(name);
  n::Bridge other(other_notifier, other_transport, config_for("other"));
  other.start();
  other_notifier.instrument("order.placed", {{"i", 1}});
  ASSERT_TRUE(other.flush(5s));
  ASSERT_TRUE(wait_until([&] { return heard.load() == 1; }));  // the genuine one arrives
  n::Message forged = other_transport->published().at(0);
  forged.subject = "test.order.cancelled";
  auto raw = mock_on(name);
  raw->start();
  const std::vector<n::Message> bad = {forged, {"test.x", "not json", {}}};
  ASSERT_EQ(raw->publish(bad).published, 2u);
  ASSERT_TRUE(wait_until([&] { return dead.load() == 2; }));
  EXPECT_EQ(heard.load(), 1);
  EXPECT_EQ(counter(bridge.health(), "malformed"), 2u);
}

TEST(BridgePromises, BridgePromise10_ShutdownReturnsByItsDeadlineWhateverAListenerDoes) {
  const std::string name = broker("p10");
  n::Notifier a_notifier, b_notifier;
  n::Bridge a(a_notifier, mock_on(name), config_for("a"));
  auto b = std::make_shared<n::Bridge>(b_notifier, mock_on(name, false), config_for("b"));
  a.start();
  b->start();
  // Shared with the listener, which the dispatcher is still running when this test returns.
  struct Listener {
    std::atomic<bool> release{false}, entered{false}, returned{false};
  };
  auto state = std::make_shared<Listener>();
  auto stuck = b_notifier.subscribe("stuck", [state](const n::Event&) {
    state->entered = true;
    for (int i = 0; i < 1000 && !state->release.load(); ++i) std::this_thread::sleep_for(10ms);  // at most 10 s
    state->returned = true;
  });
  a_notifier.instrument("stuck");
  ASSERT_TRUE(wait_until([&] { return state->entered.load(); }));
  const auto began = std::chrono::steady_clock::now();
  const auto report = b->shutdown(300ms);
  const auto took = std::chrono::steady_clock::now() - began;
  state->release = true;
  // A bound to detect a hang (the listener would hold it for 10 s), not a speed goal.
  EXPECT_LT(took, 5s);
  EXPECT_FALSE(report.clean);
  EXPECT_EQ(report.inbound_undelivered, 1u) << report.detail;
  // The dispatcher leaves the listener before the notifiers of this test go away.
  EXPECT_TRUE(wait_until([&] { return state->returned.load(); }, 10s));
  std::this_thread::sleep_for(50ms);  // and finishes its loop: ASan/TSan watch it
}

TEST(BridgePromises, BridgePromise11_TheReportIsCleanOnlyWhenNothingIsLeftInEitherDirection) {
  n::Notifier notifier;
  auto transport = mock_on(broker("p11"));
  n::Bridge bridge(notifier, transport, config_for("p11"));
  bridge.start();
  for (int i = 0; i < 20; ++i) notifier.instrument("clean", {{"i", i}});
  const auto clean = bridge.shutdown(10s);
  EXPECT_TRUE(clean.clean) << clean.detail;
  EXPECT_EQ(clean.sent, 20u);
  EXPECT_EQ(clean.confirmed, 20u);
  EXPECT_EQ(clean.undelivered, 0u);
  EXPECT_EQ(clean.inbound_undelivered, 0u);

  n::Notifier other;
  auto down = mock_on(broker("p11b"));
  n::Bridge stuck(other, down, config_for("p11b"));
  stuck.start();
  down->disconnect();
  for (int i = 0; i < 5; ++i) other.instrument("clean", {{"i", i}});
  const auto dirty = stuck.shutdown(200ms);
  EXPECT_FALSE(dirty.clean);
  EXPECT_EQ(dirty.undelivered, 5u);
}

TEST(BridgePromises, BridgePromise12_EventsAfterShutdownBeganAreRefusedAndCounted) {
  n::Notifier notifier;
  auto transport = mock_on(broker("p12"));
  n::Bridge bridge(notifier, transport, config_for("p12"));
  bridge.start();
  notifier.instrument("late", {{"i", 0}});
  bridge.shutdown(10s);
  for (int i = 1; i <= 3; ++i) notifier.instrument("late", {{"i", i}});
  EXPECT_EQ(dropped(bridge.health(), "after_shutdown"), 3u);
  EXPECT_EQ(transport->published_count(), 1u);
}
