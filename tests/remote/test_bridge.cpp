// The Bridge: forwarding, receiving, overflow, retries, shutdown ordering and health, over the
// memory and mock transports. Every wait is bounded.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

using test_support::unique_broker;
using test_support::wait_until;

using test_support::Inbox;

using test_support::config_for;
using test_support::counter;
using test_support::dropped;

// Two services in one process over one memory broker.
struct TwoServices {
  n::Notifier a_notifier;
  n::Notifier b_notifier;
  std::unique_ptr<n::Bridge> a;
  std::unique_ptr<n::Bridge> b;

  explicit TwoServices(bool inline_delivery, n::BridgeConfig a_config = config_for("svc-a"),
                       n::BridgeConfig b_config = config_for("svc-b")) {
    const std::string broker = unique_broker("two");
    a = std::make_unique<n::Bridge>(
        a_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = inline_delivery}),
        a_config);
    b = std::make_unique<n::Bridge>(
        b_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = inline_delivery}),
        b_config);
    a->start();
    b->start();
  }
};

TEST(Bridge, ForwardsEventsToAnotherServiceAsRemoteEvents) {
  for (const bool inline_delivery : {true, false}) {
    TwoServices services(inline_delivery);
    Inbox received;
    auto sub = services.b_notifier.subscribe("order.*", received.listener());
    json payload = {{"id", 7}};
    services.a_notifier.instrument("order.placed", payload, [](json& p) { p["total"] = 12; });
    ASSERT_TRUE(wait_until([&] { return received.size() == 1; })) << "inline=" << inline_delivery;
    const n::Event event = received.at(0);
    EXPECT_EQ(event.name(), "order.placed");
    EXPECT_EQ(event.payload(), json({{"id", 7}, {"total", 12}}));
    EXPECT_TRUE(event.remote());
    ASSERT_TRUE(event.origin().has_value());
    EXPECT_EQ(event.origin()->producer, "svc-a");
    EXPECT_EQ(event.origin()->producer_instance, services.a->instance_id());
    EXPECT_EQ(event.origin()->transport, "memory");
    ASSERT_TRUE(services.a->flush(5s));
    const auto health = services.a->health();
    EXPECT_EQ(counter(health, "accepted"), 1u);
    EXPECT_EQ(counter(health, "sent"), 1u);
    EXPECT_EQ(counter(services.b->health(), "received"), 1u);
  }
}

#if defined(__linux__)
// Threads of this process whose name (as top -H and gdb show it) is `name`.
std::size_t threads_named(const std::string& name) {
  std::size_t count = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string line;
    if (std::getline(comm, line) && line == name) ++count;
  }
  return count;
}

TEST(Bridge, ItsThreadsAreNamedAndGoneAfterShutdown) {
  // shutdown() always joins the sender. A dispatcher that ran shutdown() itself may outlive it
  // briefly, so an earlier test can leave one behind that is about to exit: dispatchers are
  // counted with bounds, senders exactly.
  const std::size_t senders = threads_named("ntf-sender"), dispatchers = threads_named("ntf-dispatcher");
  TwoServices services(false);
  EXPECT_TRUE(wait_until([&] { return threads_named("ntf-sender") == senders + 2 && threads_named("ntf-dispatcher") >= 2; }));
  services.a->shutdown(5s);
  services.b->shutdown(5s);
  // A joined thread can stay listed in /proc for a moment after pthread_join returns.
  EXPECT_TRUE(wait_until([&] { return threads_named("ntf-sender") == senders; }));
  EXPECT_TRUE(wait_until([&] { return threads_named("ntf-dispatcher") <= dispatchers; }));
}
#endif

// Thread_local objects made before the thread's first event are destroyed after the library's
// own per-thread state: events their destructors instrument must still be forwarded intact, and
// nothing may leak (the ASan build checks both).
TEST(Bridge, ForwardsEventsInstrumentedByThreadLocalDestructors) {
  TwoServices services(false);
  Inbox received;
  auto sub = services.b_notifier.subscribe("worker.*", received.listener());
  static n::Notifier* notifier = nullptr;
  notifier = &services.a_notifier;
  struct AtThreadExit {
    const char* name = nullptr;
    ~AtThreadExit() {
      if (name != nullptr) notifier->instrument(name, json{{"note", "instrumented while the thread exits"}}, [] {});
    }
  };
  std::thread([] {
    thread_local AtThreadExit first_made, second_made;  // destroyed in the opposite order
    first_made.name = "worker.stopped";
    second_made.name = "worker.stopping";
    notifier->instrument("worker.started", json{{"note", "a payload longer than a short string"}}, [] {});
  }).join();
  ASSERT_TRUE(wait_until([&] { return received.size() == 3; }));
  EXPECT_EQ(received.at(0).name(), "worker.started");
  EXPECT_EQ(received.at(1).name(), "worker.stopping");
  EXPECT_EQ(received.at(2).name(), "worker.stopped");
  EXPECT_EQ(received.at(2).payload(), json({{"note", "instrumented while the thread exits"}}));
}

TEST(Bridge, KeepsIdTimeDurationExceptionAndTraceparent) {
  TwoServices services(true);
  Inbox sent, received;
  auto local = services.a_notifier.subscribe("job.run", sent.listener());
  auto remote = services.b_notifier.subscribe("job.run", received.listener());
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  EXPECT_THROW(services.a_notifier.instrument("job.run", {{"traceparent", tp}}, [] {
    std::this_thread::sleep_for(2ms);
    throw std::runtime_error("job failed");
  }),
               std::runtime_error);
  ASSERT_TRUE(wait_until([&] { return received.size() == 1; }));
  const n::Event original = sent.at(0);
  const n::Event copy = received.at(0);
  EXPECT_EQ(copy.id(), original.id());
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::microseconds>(copy.duration()),
            std::chrono::duration_cast<std::chrono::microseconds>(original.duration()));
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::microseconds>(copy.time().time_since_epoch()),
            std::chrono::duration_cast<std::chrono::microseconds>(original.time().time_since_epoch()));
  EXPECT_EQ(copy.traceparent(), tp);
  ASSERT_TRUE(copy.exception().has_value());
  EXPECT_EQ(copy.exception()->type, "std::runtime_error");
  EXPECT_EQ(copy.exception()->message, "job failed");
}

TEST(Bridge, NoEchoAndRemoteEventsAreNeverForwardedAgain) {
  const std::string broker = unique_broker("echo");
  n::Notifier a_notifier, b_notifier;
  auto a_transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker});
  auto b_transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker});
  n::Bridge a(a_notifier, a_transport, config_for("a"));
  n::Bridge b(b_notifier, b_transport, config_for("b"));
  a.start();
  b.start();
  Inbox a_seen, b_seen;
  auto sa = a_notifier.subscribe(a_seen.listener());
  auto sb = b_notifier.subscribe(b_seen.listener());
  a_notifier.instrument("ping", {{"n", 1}});
  ASSERT_TRUE(wait_until([&] { return b_seen.size() == 1; }));
  ASSERT_TRUE(a.flush(5s));
  ASSERT_TRUE(b.flush(5s));
  EXPECT_EQ(a_seen.size(), 1u);  // its own local event only, never the echo
  EXPECT_EQ(a_transport->published_count(), 1u);
  EXPECT_EQ(b_transport->published_count(), 0u);  // b did not forward the remote event
  ASSERT_TRUE(wait_until([&] { return counter(a.health(), "echo_suppressed") == 1; }));
  EXPECT_EQ(counter(a.health(), "received"), 0u);
}

TEST(Bridge, OnlyForwardPatternsLeaveAndOnlySubscribePatternsArrive) {
  auto a_config = config_for("a");
  a_config.forward = {"order.*", "order.>"};  // overlapping: each event is still sent once
  auto b_config = config_for("b");
  b_config.subscribe = {"order.placed"};
  TwoServices services(true, a_config, b_config);
  Inbox received;
  auto sub = services.b_notifier.subscribe(received.listener());
  services.a_notifier.instrument("order.placed");
  services.a_notifier.instrument("order.shipped");
  services.a_notifier.instrument("order.shipped.late");
  services.a_notifier.instrument("user.created");
  ASSERT_TRUE(services.a->flush(5s));
  ASSERT_TRUE(wait_until([&] { return received.size() >= 1; }));
  EXPECT_EQ(counter(services.a->health(), "sent"), 3u);
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received.at(0).name(), "order.placed");
}

TEST(Bridge, InvalidSubjectNamesAreCountedNotSent) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("bad")});
  n::Bridge bridge(notifier, transport, config_for("a"));
  bridge.start();
  notifier.instrument("bad name.with space");
  notifier.instrument("good.name");
  ASSERT_TRUE(bridge.flush(5s));
  EXPECT_EQ(transport->published_count(), 1u);
  EXPECT_EQ(dropped(bridge.health(), "invalid_subject"), 1u);
}

TEST(Bridge, TransientFailuresAreRetriedInOrder) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("retry")});
  n::Bridge bridge(notifier, transport, config_for("a"));
  bridge.start();
  transport->fail_next_publishes(3);
  for (int i = 0; i < 50; ++i) notifier.instrument("seq", {{"i", i}});
  ASSERT_TRUE(bridge.flush(10s));
  const auto messages = transport->published();
  ASSERT_EQ(messages.size(), 50u);
  for (int i = 0; i < 50; ++i) {
    const auto decoded = n::decode_envelope(messages[i].body);
    ASSERT_TRUE(decoded) << decoded.error;
    EXPECT_EQ(decoded.envelope->payload["i"], i);
  }
  const auto health = bridge.health();
  EXPECT_GE(counter(health, "retried"), 3u);
  EXPECT_GE(counter(health, "failed"), 3u);
  EXPECT_EQ(health["last_error"], "mock: injected publish failure");
}

TEST(Bridge, PermanentFailuresAreDroppedAndCounted) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("perm")});
  auto config = config_for("a");
  config.batch_size = 1;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  transport->fail_next_publishes(1, /*transient=*/false);
  notifier.instrument("one");
  notifier.instrument("two");
  ASSERT_TRUE(bridge.flush(5s));
  EXPECT_EQ(dropped(bridge.health(), "publish_rejected"), 1u);
  EXPECT_EQ(transport->published_count(), 1u);
}

TEST(Bridge, RetriesStopAtMaxAttempts) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("max")});
  auto config = config_for("a");
  config.retry.max_attempts = 2;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  transport->disconnect();
  notifier.instrument("lost");
  ASSERT_TRUE(bridge.flush(5s));
  EXPECT_EQ(dropped(bridge.health(), "retries_exhausted"), 1u);
}

TEST(Bridge, OverflowPoliciesCountEveryDrop) {
  struct Case {
    n::OverflowPolicy policy;
    const char* reason;
  };
  for (const Case c : {Case{n::OverflowPolicy::drop_newest, "queue_full"},
                       Case{n::OverflowPolicy::drop_oldest, "queue_evicted"},
                       Case{n::OverflowPolicy::block, "queue_full"}}) {
    n::Notifier notifier;
    auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("over")});
    auto config = config_for("a");
    config.queue_capacity = 4;
    config.subscribe = {};  // outbound only
    config.batch_size = 1;
    config.overflow = c.policy;
    config.block_timeout = 1ms;
    config.retry.initial = 50ms;
    config.retry.max = 50ms;
    n::Bridge bridge(notifier, transport, config);
    bridge.start();
    transport->disconnect();  // the sender holds one event and retries; the queue fills
    for (int i = 0; i < 20; ++i) notifier.instrument("burst", {{"i", i}});
    const auto health = bridge.health();
    const std::uint64_t drops = dropped(health, c.reason);
    EXPECT_GE(drops, 14u) << c.reason;
    transport->reconnect();
    ASSERT_TRUE(bridge.flush(10s));
    const auto after = bridge.health();
    // Everything is accounted for: sent + dropped == instrumented.
    std::uint64_t all_dropped = 0;
    for (const auto& [reason, count] : after["counters"]["dropped"].items()) all_dropped += count.get<std::uint64_t>();
    EXPECT_EQ(counter(after, "sent") + all_dropped, 20u) << c.reason << " " << after.dump();
    if (c.policy == n::OverflowPolicy::drop_oldest) {
      // The newest events survive.
      const auto last = n::decode_envelope(transport->published().back().body);
      EXPECT_EQ(last.envelope->payload["i"], 19);
    }
  }
}

TEST(Bridge, ShutdownDeliversEverythingAcceptedBefore) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(
      n::MockOptions{.broker = unique_broker("drain"), .inline_delivery = false});
  n::Bridge bridge(notifier, transport, config_for("a"));
  bridge.start();
  transport->set_latency(100us);
  for (int i = 0; i < 2000; ++i) notifier.instrument("drain.me", {{"i", i}});
  const auto report = bridge.shutdown(20s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 2000u);
  EXPECT_EQ(transport->published_count(), 2000u);
  // After shutdown: refused and counted, never silently lost.
  notifier.instrument("drain.me");
  EXPECT_EQ(dropped(bridge.health(), "after_shutdown"), 1u);
  EXPECT_EQ(bridge.health()["state"], "stopped");
  EXPECT_EQ(bridge.shutdown(1s).sent, 2000u);  // idempotent: the first report
}

TEST(Bridge, ShutdownDeadlineCountsWhatCouldNotBeSent) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("dead")});
  n::Bridge bridge(notifier, transport, config_for("a"));
  bridge.start();
  transport->disconnect();
  for (int i = 0; i < 10; ++i) notifier.instrument("stuck");
  const auto report = bridge.shutdown(200ms);
  EXPECT_FALSE(report.clean);
  EXPECT_EQ(report.undelivered, 10u);
  EXPECT_EQ(dropped(bridge.health(), "shutdown_deadline"), 10u);
}

TEST(Bridge, PublishDuringShutdownIsDeliveredOrCounted) {
  for (int trial = 0; trial < 5; ++trial) {
    n::Notifier notifier;
    auto transport = std::make_shared<n::MockTransport>(
        n::MockOptions{.broker = unique_broker("race"), .inline_delivery = false});
    n::Bridge bridge(notifier, transport, config_for("a"));
    bridge.start();
    std::atomic<bool> stop{false};
    std::atomic<long> instrumented{0};
    std::vector<std::thread> producers;
    for (int t = 0; t < 3; ++t) {
      producers.emplace_back([&] {
        for (int i = 0; i < 200'000 && !stop.load(); ++i) {
          notifier.instrument("race.event", {{"i", i}});
          instrumented.fetch_add(1);
        }
      });
    }
    ASSERT_TRUE(wait_until([&] { return instrumented.load() > 1000; }));
    const auto report = bridge.shutdown(20s);
    stop = true;
    for (auto& p : producers) p.join();
    const auto health = bridge.health();
    EXPECT_TRUE(report.clean) << report.detail;
    EXPECT_EQ(counter(health, "accepted"), counter(health, "sent"));
    EXPECT_EQ(transport->published_count(), counter(health, "sent"));
    EXPECT_EQ(counter(health, "accepted") + dropped(health, "after_shutdown"),
              static_cast<std::uint64_t>(instrumented.load()))
        << health.dump();
  }
}

TEST(Bridge, MalformedMessagesGoToTheDeadLetterHook) {
  const std::string broker = unique_broker("dlq");
  n::Notifier notifier;
  std::mutex mutex;
  std::vector<std::string> reasons;
  n::Bridge bridge(notifier, std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker}),
                   config_for("a"),
                   {.dead_letter = [&](const n::Message&, std::string_view reason) {
                     std::lock_guard lock(mutex);
                     reasons.emplace_back(reason);
                   }});
  bridge.start();
  auto raw = std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker});
  raw->start();
  const std::vector<n::Message> junk = {{"test.x", "not json", {}}, {"test.y", R"({"id":"x"})", {}}};
  ASSERT_EQ(raw->publish(junk).published, 2u);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mutex);
    return reasons.size() == 2;
  }));
  EXPECT_EQ(counter(bridge.health(), "malformed"), 2u);
  std::lock_guard lock(mutex);
  ASSERT_EQ(reasons.size(), 2u);
  EXPECT_NE(reasons[0].find("not JSON"), std::string::npos) << reasons[0];
  EXPECT_NE(reasons[1].find("field \""), std::string::npos) << reasons[1];
}

TEST(Bridge, HandlersMayInstrumentSubscribeAndShutDownTheBridge) {
  TwoServices services(false);
  std::atomic<int> replies{0};
  auto echo = services.b_notifier.subscribe("ping", [&](const n::Event& e) {
    services.b_notifier.instrument("pong", {{"n", e.payload()["n"]}});
    auto temporary = services.b_notifier.subscribe("x", [](const n::Event&) {});
  });
  auto count = services.a_notifier.subscribe("pong", [&](const n::Event&) { replies.fetch_add(1); });
  for (int i = 0; i < 100; ++i) services.a_notifier.instrument("ping", {{"n", i}});
  ASSERT_TRUE(wait_until([&] { return replies.load() == 100; })) << replies.load();
  // Shut b down from inside one of its own remote-event handlers (the dispatcher thread).
  std::atomic<bool> shut{false};
  auto stopper = services.b_notifier.subscribe("stop", [&](const n::Event&) {
    services.b->shutdown(5s);
    shut = true;
  });
  services.a_notifier.instrument("stop");
  ASSERT_TRUE(wait_until([&] { return shut.load(); }));
  EXPECT_EQ(services.b->health()["state"], "stopped");
}

TEST(Bridge, HealthReportsStateQueueAndCounters) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("h")});
  auto config = config_for("health-app");
  config.url = "mock://user:secret@host";
  n::Bridge bridge(notifier, transport, config);
  EXPECT_EQ(bridge.health()["state"], "created");
  bridge.start();
  const auto health = bridge.health();
  EXPECT_EQ(health["state"], "running");
  EXPECT_EQ(health["app"], "health-app");
  EXPECT_EQ(health["queue"]["capacity"], config.queue_capacity);
  EXPECT_EQ(health["transport"]["kind"], "mock");
  EXPECT_EQ(health.dump().find("secret"), std::string::npos) << health.dump();
  for (const char* key : {"accepted", "sent", "failed", "retried", "received", "malformed"}) {
    EXPECT_TRUE(health["counters"].contains(key)) << key;
  }
}

TEST(Bridge, BadConfigurationIsRefusedAtConstruction) {
  n::Notifier notifier;
  auto config = config_for("a");
  config.queue_capacity = 0;
  try {
    n::Bridge bridge(notifier, std::make_shared<n::MockTransport>(), config);
    FAIL();
  } catch (const n::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("queue_capacity"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(notifier.listening("anything"));
}

TEST(Bridge, StartFailureLeavesTheBridgeStartable) {
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("s")});
  transport->fail_next_starts(1);
  n::Bridge bridge(notifier, transport, config_for("a"));
  EXPECT_THROW(bridge.start(), n::TransportError);
  EXPECT_FALSE(notifier.listening("x"));
  bridge.start();
  EXPECT_TRUE(notifier.listening("x"));
}

TEST(Configure, AttachesABridgeToTheDefaultNotifierFromTheEnvironment) {
  ::setenv("NOTIFICATIONS_URL", ("memory://" + unique_broker("env") + "?mode=inline").c_str(), 1);
  ::setenv("NOTIFICATIONS_APP", "configured", 1);
  auto bridge = n::configure();
  ::unsetenv("NOTIFICATIONS_URL");
  ::unsetenv("NOTIFICATIONS_APP");
  EXPECT_EQ(bridge->config().app, "configured");
  EXPECT_EQ(bridge->health()["transport"]["kind"], "memory");
  n::instrument("configured.event");
  ASSERT_TRUE(bridge->flush(5s));
  EXPECT_EQ(counter(bridge->health(), "sent"), 1u);
  const auto report = n::shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(n::shutdown(1s).detail, "no bridge configured");
}

}  // namespace
