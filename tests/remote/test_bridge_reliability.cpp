// The Bridge when things go wrong: an outage (the block policy must not stall the application),
// shutdown deadlines against slow transports and listeners, honest reports, byte bounds, and
// inbound envelopes from a hostile peer. Every wait is bounded; nothing here asserts speed: the
// bounds only detect a stall (docs/benchmarks.md measures the times).
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifications.hpp"
#include "notifications/spdlog.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "scale.hpp"
#include "bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::unique_broker;
using test_support::wait_until;

namespace {

using Clock = std::chrono::steady_clock;

using test_support::config_for;
using test_support::counter;
using test_support::dropped;

std::shared_ptr<n::MockTransport> mock(n::MockOptions options = {}) {
  options.broker = unique_broker("reliability");
  return std::make_shared<n::MockTransport>(options);
}

long long ms_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// ---- the block policy during an outage ---------------------------------------------------------

// With the queue full and the transport refusing everything, only the first instrument call waits
// its block_timeout; the others are refused at once (counted) until the transport takes events
// again; then the next outage may cost one wait again. (A push may also wait a moment while the
// queue is full just before the sender takes a batch: that wait ends with room, so an outage costs
// at most two calls that waited, one of them cut short.)
TEST(BridgeOutage, OnlyTheFirstCallWaitsWhileTheTransportRefusesEverything) {
  n::Notifier notifier;
  auto transport = mock();
  n::BridgeConfig config = config_for("outage");
  config.queue_capacity = 8;
  config.batch_size = 8;
  config.block_timeout = 100ms;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  transport->disconnect();
  const auto outage = test_support::kScale == 1 ? 10s : 2s;
  const auto start = Clock::now();
  std::uint64_t calls = 0;
  while (Clock::now() - start < outage && calls < 1'000'000) {
    notifier.instrument("order.placed", {{"n", calls}});
    ++calls;
    std::this_thread::sleep_for(1ms);
  }
  json health = bridge.health();
  const std::uint64_t first_outage_waits = counter(health, "blocked");
  EXPECT_GE(first_outage_waits, 1u) << health.dump();
  EXPECT_LE(first_outage_waits, 2u) << health.dump() << " after " << calls << " calls";
  EXPECT_TRUE(health["queue"]["saturated"].get<bool>());
  EXPECT_GT(dropped(health, "queue_full"), calls / 2) << health.dump();

  transport->reconnect();
  ASSERT_TRUE(wait_until([&] { return !bridge.health()["queue"]["saturated"].get<bool>(); }, 10s));
  notifier.instrument("order.placed");
  ASSERT_TRUE(bridge.flush(10s));
  // A second outage: one more wait, no more.
  transport->disconnect();
  for (int i = 0; i < 200; ++i) notifier.instrument("order.placed");
  const std::uint64_t second_outage_waits = counter(bridge.health(), "blocked") - first_outage_waits;
  EXPECT_GE(second_outage_waits, 1u) << bridge.health().dump();
  EXPECT_LE(second_outage_waits, 2u) << bridge.health().dump();
  transport->reconnect();
}

// ---- shutdown deadlines ----------------------------------------------------------------------------

// A retry backoff that began before shutdown() with a wake-up seconds away is cut to shutdown's
// deadline.
TEST(BridgeDeadline, ShutdownCutsABackoffThatStartedBeforeIt) {
  n::Notifier notifier;
  auto transport = mock();
  n::BridgeConfig config = config_for("backoff");
  config.retry.initial = 5000ms;
  config.retry.max = 5000ms;
  config.retry.jitter = 0;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  transport->fail_next_publishes(1'000'000, true);
  notifier.instrument("order.placed");
  ASSERT_TRUE(wait_until([&] { return counter(bridge.health(), "failed") >= 1; }, 10s));
  std::this_thread::sleep_for(50ms);  // the sender is inside its 5 s backoff
  const auto start = Clock::now();
  const n::ShutdownReport report = bridge.shutdown(500ms);
  const auto took = ms_since(start);
  EXPECT_LT(took, 500 + 1000) << "shutdown(500 ms) took " << took << " ms";
  EXPECT_FALSE(report.clean);
  EXPECT_EQ(report.undelivered, 1u) << report.detail;
}

// A listener of remote events that blocks does not hold shutdown() past its deadline; what was
// not delivered is in the report, and the listener, when it returns, touches nothing freed.
TEST(BridgeDeadline, ABlockedRemoteListenerDoesNotHoldShutdownPastItsDeadline) {
  const std::string broker = unique_broker("blocked-listener");
  n::Notifier sender_notifier;
  n::Notifier receiver_notifier;
  n::Bridge sender(sender_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = false}),
                   config_for("sender"));
  auto receiver = std::make_unique<n::Bridge>(
      receiver_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = false}), config_for("receiver"));
  std::atomic<bool> release{false};
  std::atomic<int> entered{0};
  std::atomic<int> returned{0};
  auto sub = receiver_notifier.subscribe("slow.>", [&](const n::Event&) {
    entered.fetch_add(1);
    for (int i = 0; i < 3000 && !release.load(); ++i) std::this_thread::sleep_for(5ms);  // bounded: 15 s
    returned.fetch_add(1);
  });
  sender.start();
  receiver->start();
  for (int i = 0; i < 10; ++i) sender_notifier.instrument("slow.event");
  ASSERT_TRUE(sender.flush(10s));
  ASSERT_TRUE(wait_until([&] { return entered.load() == 1; }, 10s));
  const auto start = Clock::now();
  const n::ShutdownReport report = receiver->shutdown(300ms);
  const auto took = ms_since(start);
  EXPECT_LT(took, 300 + 1000) << "shutdown(300 ms) took " << took << " ms";
  EXPECT_FALSE(report.clean) << report.detail;
  EXPECT_GE(report.inbound_undelivered, 1u) << report.detail;
  receiver.reset();  // the Bridge object is gone while its dispatcher is still in the listener
  release.store(true);
  ASSERT_TRUE(wait_until([&] { return returned.load() == entered.load(); }, 10s));
  std::this_thread::sleep_for(50ms);  // the dispatcher finishes its loop: ASan/TSan watch it
}

// ---- honest reports --------------------------------------------------------------------------------

// Events a transport only buffered (a client's reconnect buffer during an outage) are sent but not
// confirmed: the report counts them as undelivered and is not clean.
TEST(BridgeReport, EventsOnlyBufferedByTheTransportAreNotConfirmed) {
  n::Notifier notifier;
  auto transport = mock();
  n::Bridge bridge(notifier, transport, config_for("buffered"));
  bridge.start();
  transport->buffer_while_disconnected(true);
  transport->disconnect();
  for (int i = 0; i < 10; ++i) notifier.instrument("order.placed");
  ASSERT_TRUE(wait_until([&] { return counter(bridge.health(), "sent") == 10; }, 10s));
  const n::ShutdownReport report = bridge.shutdown(300ms);
  EXPECT_EQ(report.sent, 10u) << report.detail;
  EXPECT_EQ(report.confirmed, 0u) << report.detail;
  EXPECT_EQ(report.undelivered, 10u) << report.detail;
  EXPECT_FALSE(report.clean) << report.detail;
}

TEST(BridgeReport, ConfirmedOnceTheTransportFlushed) {
  n::Notifier notifier;
  auto transport = mock();
  n::Bridge bridge(notifier, transport, config_for("confirmed"));
  bridge.start();
  transport->buffer_while_disconnected(true);
  transport->disconnect();
  for (int i = 0; i < 10; ++i) notifier.instrument("order.placed");
  EXPECT_FALSE(bridge.flush(200ms));
  EXPECT_EQ(counter(bridge.health(), "confirmed"), 0u);
  transport->reconnect();
  // The sender confirms by itself once idle; flush() does too.
  ASSERT_TRUE(wait_until([&] { return counter(bridge.health(), "confirmed") == 10; }, 10s)) << bridge.health().dump();
  const n::ShutdownReport report = bridge.shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.undelivered, 0u);
}

// Received events discarded at the deadline are in the report, which is then not clean.
TEST(BridgeReport, InboundDiscardsAtTheDeadlineAreReported) {
  const std::string broker = unique_broker("inbound-discards");
  n::Notifier sender_notifier;
  n::Notifier receiver_notifier;
  n::BridgeConfig receiver_config = config_for("receiver");
  n::Bridge sender(sender_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = false}),
                   config_for("sender"));
  n::Bridge receiver(receiver_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = false}),
                     receiver_config);
  std::atomic<int> delivered{0};
  auto sub = receiver_notifier.subscribe("work.>", [&](const n::Event&) {
    delivered.fetch_add(1);
    std::this_thread::sleep_for(1ms);
  });
  sender.start();
  receiver.start();
  for (int i = 0; i < 2000; ++i) sender_notifier.instrument("work.item");
  ASSERT_TRUE(sender.flush(10s));
  ASSERT_TRUE(wait_until([&] { return delivered.load() > 0; }, 10s));
  const n::ShutdownReport report = receiver.shutdown(50ms);
  EXPECT_FALSE(report.clean) << report.detail;
  EXPECT_GT(report.inbound_undelivered, 0u) << report.detail;
}

// ---- bounds ---------------------------------------------------------------------------------------

TEST(BridgeBounds, TheOutboundQueueIsBoundedInBytes) {
  n::Notifier notifier;
  auto transport = mock();
  n::BridgeConfig config = config_for("bytes");
  config.queue_max_bytes = 64 * 1024;
  config.overflow = n::OverflowPolicy::drop_newest;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  transport->disconnect();
  const std::string big(10 * 1024, 'x');
  for (int i = 0; i < 100; ++i) notifier.instrument("big.event", {{"blob", big}});
  const json health = bridge.health();
  EXPECT_LE(health["queue"]["bytes"].get<std::size_t>(), 64u * 1024) << health.dump();
  EXPECT_GE(dropped(health, "queue_full"), 80u) << health.dump();
  EXPECT_EQ(counter(health, "accepted") + dropped(health, "queue_full"), 100u) << health.dump();
  transport->reconnect();
}

// Sends one event with a payload of `payload_bytes` and one small event over a mock that carries
// at most 4096 bytes per message: the large one is dropped as too large, never retried, and the
// small one still goes.
void expect_too_large_dropped_once(std::size_t payload_bytes) {
  n::Notifier notifier;
  n::MockOptions options;
  options.max_message_bytes = 4096;
  auto transport = mock(options);
  n::Bridge bridge(notifier, transport, config_for("too-large"));
  bridge.start();
  notifier.instrument("big.event", {{"blob", std::string(payload_bytes, 'x')}});
  notifier.instrument("small.event", {{"n", 1}});
  ASSERT_TRUE(bridge.flush(5s));
  const json health = bridge.health();
  EXPECT_EQ(dropped(health, "too_large"), 1u) << health.dump();
  EXPECT_EQ(counter(health, "retried"), 0u) << health.dump();
  EXPECT_EQ(counter(health, "sent"), 1u) << health.dump();
  ASSERT_EQ(transport->published().size(), 1u);
}

// Refused on the instrumenting thread: the payload alone is larger than the transport carries.
TEST(BridgeBounds, AnEventLargerThanTheTransportCarriesIsRefusedAtOnce) { expect_too_large_dropped_once(8192); }

// A payload just under the limit but over it once enveloped: the transport refuses it for good.
TEST(BridgeBounds, AMessageTheTransportRefusesAsTooLargeIsNotRetried) { expect_too_large_dropped_once(4000); }

// ---- inbound envelopes from a hostile peer -----------------------------------------------------

struct Receiver {
  std::string broker = unique_broker("hostile");
  n::Notifier notifier;
  std::shared_ptr<n::Transport> peer = n::make_memory_transport({.broker = broker, .inline_delivery = true});
  // Before the bridge, so that they outlive its dispatcher thread, which calls the dead-letter
  // hook (destroyed first, the bridge joins that thread).
  std::mutex mutex;
  std::vector<std::string> reasons;  // guarded by mutex
  std::unique_ptr<n::Bridge> bridge;

  Receiver() {
    n::BridgeHooks hooks;
    hooks.dead_letter = [this](const n::Message&, std::string_view reason) {
      std::lock_guard lock(mutex);
      reasons.emplace_back(reason);
    };
    bridge = std::make_unique<n::Bridge>(notifier, n::make_memory_transport({.broker = broker, .inline_delivery = true}),
                                         config_for("receiver"), hooks);
    bridge->start();
    peer->start();
  }
  ~Receiver() { peer->stop(Clock::now() + 5s); }

  std::size_t reason_count() {
    std::lock_guard lock(mutex);
    return reasons.size();
  }

  void send(const std::string& subject, const std::string& name, std::uint64_t sequence = 0,
            const std::string& instance = "peer-instance") {
    n::Envelope envelope;
    envelope.name = name;
    envelope.producer = "peer";
    envelope.producer_instance = instance;
    envelope.id = "00000000-0000-4000-8000-000000000001";
    envelope.time = std::chrono::system_clock::now();
    envelope.sequence = sequence;
    envelope.payload = json::object();
    ASSERT_TRUE(peer->publish(std::vector<n::Message>{n::message_from_envelope(envelope, subject)}).published == 1);
  }
  void send_raw(const std::string& subject, const std::string& body) {
    n::Message m;
    m.subject = subject;
    m.body = body;
    ASSERT_TRUE(peer->publish(std::vector<n::Message>{m}).published == 1);
  }
};

TEST(BridgeInbound, ANameThatDoesNotMatchItsSubjectIsMalformed) {
  Receiver r;
  std::atomic<int> admin{0};
  std::atomic<int> any{0};
  auto admin_sub = r.notifier.subscribe("admin.shutdown", [&](const n::Event&) { admin.fetch_add(1); });
  auto all_sub = r.notifier.subscribe([&](const n::Event&) { any.fetch_add(1); });
  r.send("test.chaos.x", "admin.shutdown");
  r.send("test.chaos.x", ">");
  r.send("test.chaos.x", "chaos.x y");
  r.send("test.chaos.x", "chaos.x\nforged");
  r.send("test.chaos.x", "chaos.x");  // the one that maps
  // The bridge counts a malformed message before it calls the dead-letter hook: wait for both.
  ASSERT_TRUE(wait_until([&] {
    return counter(r.bridge->health(), "malformed") + counter(r.bridge->health(), "received") == 5 &&
           r.reason_count() == 4;
  }, 10s)) << r.bridge->health().dump();
  EXPECT_EQ(admin.load(), 0);
  EXPECT_EQ(any.load(), 1);
  EXPECT_EQ(counter(r.bridge->health(), "malformed"), 4u);
  std::lock_guard lock(r.mutex);
  ASSERT_EQ(r.reasons.size(), 4u);
  EXPECT_NE(r.reasons[0].find("\"name\""), std::string::npos) << r.reasons[0];
  for (const auto& reason : r.reasons) EXPECT_EQ(reason.find('\n'), std::string::npos) << reason;
}

TEST(BridgeInbound, AForgedSequenceIsTakenAsAResetNotAsLoss) {
  Receiver r;
  r.send("test.order.placed", "order.placed", 1);
  r.send("test.order.placed", "order.placed", 2);
  r.send("test.order.placed", "order.placed", 9'007'199'254'740'947ull);
  r.send("test.order.placed", "order.placed", 3);
  r.send("test.order.placed", "order.placed", 5);  // a real gap of one
  ASSERT_TRUE(wait_until([&] { return counter(r.bridge->health(), "received") == 5; }, 10s));
  const json health = r.bridge->health();
  EXPECT_EQ(counter(health, "lost"), 1u) << health.dump();
  EXPECT_GE(counter(health, "sequence_resets"), 1u) << health.dump();
}

// One log line a second for malformed input, however much arrives, and nothing from the wire
// reaches the log unescaped.
TEST(BridgeInbound, MalformedInputIsLoggedRateLimitedAndEscaped) {
  auto stream = std::make_shared<std::ostringstream>();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream);
  auto previous = notifications::logger();
  notifications::set_logger(std::make_shared<spdlog::logger>("capture", sink));
  {
    Receiver r;
    const int messages = 2000 / test_support::kScale;
    for (int i = 0; i < messages; ++i) r.send_raw("test.garbage", "not json\n[error] forged line " + std::to_string(i));
    ASSERT_TRUE(wait_until([&] { return counter(r.bridge->health(), "malformed") == static_cast<std::uint64_t>(messages); }, 10s));
  }
  notifications::set_logger(previous);
  const std::string log = stream->str();
  std::size_t malformed_lines = 0;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_NE(line.find("[capture]"), std::string::npos) << "a line not written by the logger: " << line;
    if (line.find("malformed message") != std::string::npos) ++malformed_lines;
  }
  EXPECT_GE(malformed_lines, 1u);
  EXPECT_LE(malformed_lines, 3u) << log.substr(0, 2000);
  EXPECT_NE(log.find("\\n[error] forged"), std::string::npos) << log.substr(0, 2000);
}

}  // namespace
