// GET /events (EventStream served by MetricsServer) over real loopback sockets: replay after a
// reconnect while events keep flowing, heartbeats, a client that stops reading dropped while
// another keeps receiving, many concurrent clients, the shutdown event, and the refusals (400,
// 401, 503). Every wait is bounded; counts are a tenth under the sanitizers.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "notifications/event_stream.hpp"
#include "notifications/notifier.hpp"
#include "notifications/prometheus.hpp"
#include "child_process.hpp"
#include "prometheus/http_client.hpp"
#include "prometheus/sse_client.hpp"
#include "scale.hpp"
#include "wait.hpp"

namespace n = notifications;
namespace np = notifications::prometheus;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::SseClient;
using test_support::SseFrame;
using test_support::wait_until;

namespace {

// A notifier, its stream and the server serving it, in the order they must be destroyed.
struct Served {
  explicit Served(n::EventStreamOptions options = {}, std::string token = {}) {
    stream = std::make_shared<n::EventStream>(notifier, std::move(options));
    stream->start();
    np::MetricsServerOptions server_options;
    server_options.events = stream;
    server_options.bearer_token = std::move(token);
    server = std::make_unique<np::MetricsServer>(std::make_shared<np::BridgeMetrics>(), server_options);
  }
  std::uint16_t port() const { return server->port(); }
  std::uint64_t health(const char* key) const { return stream->health()[key].get<std::uint64_t>(); }

  n::Notifier notifier;
  std::shared_ptr<n::EventStream> stream;
  std::unique_ptr<np::MetricsServer> server;
};

int payload_index(const SseFrame& frame) { return json::parse(frame.data).at("payload").at("i").get<int>(); }

// Raises the open-file limit to its hard limit: many clients need two descriptors each here.
std::size_t raise_file_limit() {
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &limit);
  ::getrlimit(RLIMIT_NOFILE, &limit);
  return static_cast<std::size_t>(limit.rlim_cur);
}

}  // namespace

TEST(EventStreamHttp, FramesCarryThePositionTheNameAndTheRedactedEnvelope) {
  n::EventStreamOptions options;
  options.redact = {"password"};
  Served served(options);
  SseClient client(served.port(), "/events?pattern=order.%3E");
  ASSERT_EQ(client.status(), 200);
  EXPECT_NE(client.head().find("Content-Type: text/event-stream"), std::string::npos) << client.head();
  ASSERT_TRUE(wait_until([&] { return served.health("connections") == 1; }, 10s));
  served.notifier.instrument("user.signed_in", json{{"i", 0}});  // not matched by the pattern
  served.notifier.instrument("order.placed", json{{"i", 1}, {"password", "hunter2"}});
  const auto frame = client.next_event();
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(frame->event, "order.placed");
  EXPECT_FALSE(frame->id.empty());
  const json envelope = json::parse(frame->data);
  EXPECT_EQ(envelope.at("name"), "order.placed");
  EXPECT_EQ(envelope.at("payload").at("i"), 1);
  EXPECT_EQ(envelope.at("payload").at("password"), "[REDACTED]");
  EXPECT_EQ(frame->data.find("hunter2"), std::string::npos);
}

TEST(EventStreamHttp, AReconnectWithLastEventIdGetsWhatItMissedWithNoGapNorDuplicateWhileEventsFlow) {
  const int total = 3000 / test_support::kScale;
  Served served;
  std::atomic<bool> go{false};
  std::thread producer([&] {
    while (!go.load()) std::this_thread::sleep_for(1ms);
    for (int i = 0; i < total; ++i) {
      served.notifier.instrument("tick", json{{"i", i}});
      if (i % 50 == 0) std::this_thread::sleep_for(1ms);
    }
  });
  std::vector<int> seen;
  std::string last_id;
  {
    SseClient first(served.port(), "/events?pattern=tick");
    ASSERT_EQ(first.status(), 200);
    ASSERT_TRUE(wait_until([&] { return served.health("connections") == 1; }, 10s));
    go = true;
    // Leaves after a part of the stream, while the producer goes on.
    while (seen.size() < static_cast<std::size_t>(total / 5)) {
      const auto frame = first.next_event();
      ASSERT_TRUE(frame.has_value()) << "after " << seen.size() << " events";
      seen.push_back(payload_index(*frame));
      last_id = frame->id;
    }
  }
  std::this_thread::sleep_for(20ms);  // events flow while nobody is connected
  SseClient second(served.port(), "/events?pattern=tick", last_id);
  ASSERT_EQ(second.status(), 200);
  while (seen.size() < static_cast<std::size_t>(total)) {
    const auto frame = second.next_event();
    ASSERT_TRUE(frame.has_value()) << "after " << seen.size() << " events";
    ASSERT_NE(frame->event, "notifications.gap") << frame->data;
    seen.push_back(payload_index(*frame));
  }
  producer.join();
  for (int i = 0; i < total; ++i) ASSERT_EQ(seen[static_cast<std::size_t>(i)], i) << "at " << i;
  EXPECT_GT(served.health("replayed"), 0u);
}

TEST(EventStreamHttp, APositionOlderThanTheRingGetsTheGapEventThenWhatTheRingHolds) {
  n::EventStreamOptions options;
  options.replay_events = 5;
  Served served(options);
  std::string first_id;
  {
    SseClient first(served.port(), "/events");
    ASSERT_EQ(first.status(), 200);
    ASSERT_TRUE(wait_until([&] { return served.health("connections") == 1; }, 10s));
    served.notifier.instrument("tick", json{{"i", 0}});
    const auto frame = first.next_event();
    ASSERT_TRUE(frame.has_value());
    first_id = frame->id;
  }
  for (int i = 1; i <= 10; ++i) served.notifier.instrument("tick", json{{"i", i}});
  ASSERT_TRUE(wait_until([&] { return served.health("events") == 11; }, 10s));
  SseClient again(served.port(), "/events", first_id);
  const auto gap = again.next_event();
  ASSERT_TRUE(gap.has_value());
  EXPECT_EQ(gap->event, "notifications.gap");
  EXPECT_EQ(json::parse(gap->data).at("reason"), "older than the replay ring");
  for (int i = 6; i <= 10; ++i) {
    const auto frame = again.next_event();
    ASSERT_TRUE(frame.has_value());
    EXPECT_EQ(payload_index(*frame), i);
  }
  // A position of another stream (a restarted server) is a gap too.
  SseClient stranger(served.port(), "/events", "0123456789abcdef-3:4b1e0c1a-0000-4000-8000-000000000003");
  const auto other = stranger.next_event();
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->event, "notifications.gap");
  EXPECT_EQ(served.health("gaps"), 2u);
}

TEST(EventStreamHttp, HeartbeatsKeepAnIdleConnectionAlive) {
  n::EventStreamOptions options;
  options.heartbeat_interval = 50ms;
  Served served(options);
  SseClient client(served.port(), "/events");
  int heartbeats = 0;
  for (int i = 0; i < 20 && heartbeats < 2; ++i) {
    const auto frame = client.next(5s);
    ASSERT_TRUE(frame.has_value());
    if (frame->is_comment() && frame->comment == "heartbeat") ++heartbeats;
  }
  EXPECT_EQ(heartbeats, 2);
  EXPECT_GE(served.health("heartbeats"), 2u);
}

TEST(EventStreamHttp, AnIdleConnectionIsClosedAfterTheIdleTimeout) {
  n::EventStreamOptions options;
  options.heartbeat_interval = 20ms;
  options.idle_timeout = 100ms;
  Served served(options);
  SseClient client(served.port(), "/events");
  ASSERT_EQ(client.status(), 200);
  for (int i = 0; i < 200 && !client.closed(); ++i) client.next(1s);
  EXPECT_TRUE(client.closed());
  EXPECT_EQ(served.health("closed_idle"), 1u);
  EXPECT_TRUE(wait_until([&] { return served.health("connections") == 0; }, 10s));
}

TEST(EventStreamHttp, AClientThatStopsReadingIsDroppedAndCountedWhileAnotherReceivesEverything) {
  n::EventStreamOptions options;
  options.client_queue = 64;
  options.write_deadline = 200ms;
  Served served(options);
  SseClient stalled(served.port(), "/events", {}, {}, 4096);
  SseClient reader(served.port(), "/events");
  ASSERT_EQ(stalled.status(), 200);
  ASSERT_EQ(reader.status(), 200);
  ASSERT_TRUE(wait_until([&] { return served.health("connections") == 2; }, 10s));
  // 8 MB in all, whatever the scale: more than the sockets' buffers between the server and a
  // client that does not read can take (loopback buffers grow to a few MB).
  const std::string filler(20000, 'x');
  const int total = 400;
  int received = 0;
  for (int i = 0; i < total; ++i) {
    served.notifier.instrument("bulk", json{{"i", i}, {"filler", filler}});
    // The reader keeps up; `stalled` never reads.
    while (received < i) {
      const auto frame = reader.next_event();
      ASSERT_TRUE(frame.has_value()) << "reader stalled at " << received;
      ASSERT_EQ(payload_index(*frame), received);
      ++received;
    }
  }
  while (received < total) {
    const auto frame = reader.next_event();
    ASSERT_TRUE(frame.has_value()) << "reader stalled at " << received;
    ASSERT_EQ(payload_index(*frame), received);
    ++received;
  }
  ASSERT_TRUE(wait_until([&] { return served.health("dropped_slow") + served.health("dropped_write") == 1; }, 20s))
      << served.stream->health().dump();
  // Visible where operators look: /health carries the stream's counters.
  const json health = json::parse(test_support::http(served.port(), "/health").body);
  EXPECT_EQ(health.at("event_stream").at("dropped_slow").get<std::uint64_t>() +
                health.at("event_stream").at("dropped_write").get<std::uint64_t>(),
            1u);
  EXPECT_TRUE(wait_until([&] { return served.health("connections") == 1; }, 10s));
}

TEST(EventStreamHttp, ManyConcurrentClientsEachReceiveEveryEvent) {
  const std::size_t clients = 1000 / test_support::kScale;
  if (raise_file_limit() < 2 * clients + 64) GTEST_SKIP() << "the open-file limit is too low for " << clients << " clients";
  n::EventStreamOptions options;
  options.max_connections = clients;
  Served served(options);
  std::vector<std::unique_ptr<SseClient>> connected;
  for (std::size_t i = 0; i < clients; ++i) {
    connected.push_back(std::make_unique<SseClient>(served.port(), "/events?pattern=fan.%2A"));
  }
  for (auto& client : connected) ASSERT_EQ(client->status(20s), 200);
  ASSERT_TRUE(wait_until([&] { return served.health("connections") == clients; }, 30s));
  // One more is refused with 503 while they are connected.
  SseClient extra(served.port(), "/events");
  EXPECT_EQ(extra.status(), 503);
  EXPECT_NE(extra.body().find("max_connections"), std::string::npos);
  for (int i = 0; i < 3; ++i) served.notifier.instrument("fan.out", json{{"i", i}});
  for (auto& client : connected) {
    for (int i = 0; i < 3; ++i) {
      const auto frame = client->next_event(20s);
      ASSERT_TRUE(frame.has_value());
      ASSERT_EQ(payload_index(*frame), i);
    }
  }
}

TEST(EventStreamHttp, ShutdownSendsEveryClientTheShutdownEventAfterWhatItWasGiven) {
  Served served;
  SseClient a(served.port(), "/events");
  SseClient b(served.port(), "/events");
  ASSERT_EQ(a.status(), 200);
  ASSERT_EQ(b.status(), 200);
  ASSERT_TRUE(wait_until([&] { return served.health("connections") == 2; }, 10s));
  served.notifier.instrument("last.one", json{{"i", 7}});
  EXPECT_TRUE(served.stream->shutdown(5s));
  for (SseClient* client : {&a, &b}) {
    const auto event = client->next_event();
    ASSERT_TRUE(event.has_value());
    EXPECT_EQ(event->event, "last.one");
    const auto goodbye = client->next_event();
    ASSERT_TRUE(goodbye.has_value());
    EXPECT_EQ(goodbye->event, "shutdown");
    EXPECT_FALSE(client->next(5s).has_value());
    EXPECT_TRUE(client->closed());
  }
  // Registered after shutdown began: refused, never left outside the registry.
  SseClient late(served.port(), "/events");
  EXPECT_EQ(late.status(), 503);
  EXPECT_EQ(served.health("connections"), 0u);
}

TEST(EventStreamHttp, BadRequestsAreRefusedNamingWhatWasWrong) {
  Served served;
  SseClient bad_pattern(served.port(), "/events?pattern=order.%3E.x");
  EXPECT_EQ(bad_pattern.status(), 400);
  EXPECT_NE(bad_pattern.body().find("pattern"), std::string::npos);
  SseClient bad_position(served.port(), "/events", "not-a-position");
  EXPECT_EQ(bad_position.status(), 400);
  EXPECT_NE(bad_position.body().find("Last-Event-ID"), std::string::npos);
  const auto page = test_support::http(served.port(), "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_NE(page.content_type.find("text/html"), std::string::npos);
}

TEST(EventStreamHttp, ABearerTokenIsRequiredWhenConfiguredAndNeverEchoed) {
  Served served({}, "s3cret-token");
  SseClient without(served.port(), "/events");
  EXPECT_EQ(without.status(), 401);
  EXPECT_EQ(without.body().find("s3cret"), std::string::npos);
  SseClient wrong(served.port(), "/events", {}, "Authorization: Bearer s3cret-tokeX\r\n");
  EXPECT_EQ(wrong.status(), 401);
  SseClient header(served.port(), "/events", {}, "Authorization: Bearer s3cret-token\r\n");
  EXPECT_EQ(header.status(), 200);
  SseClient query(served.port(), "/events?access_token=s3cret-token");
  EXPECT_EQ(query.status(), 200);
  EXPECT_EQ(test_support::http(served.port(), "/metrics").status, 401);
}

TEST(EventStreamHttp, ANonLoopbackAddressNeedsABearerToken) {
  n::Notifier notifier;
  auto stream = std::make_shared<n::EventStream>(notifier);
  np::MetricsServerOptions options;
  options.address = "0.0.0.0";
  options.allow_non_loopback = true;
  options.events = stream;
  try {
    np::MetricsServer server(std::make_shared<np::BridgeMetrics>(), options);
    FAIL() << "started without a token";
  } catch (const np::MetricsError& e) {
    EXPECT_NE(std::string(e.what()).find("bearer_token"), std::string::npos) << e.what();
  }
}

TEST(EventStreamHttp, AForkedChildDestroysTheServerAndTheStreamWithoutWaitingForThreadsItDoesNotHave) {
  auto served = std::make_unique<Served>();
  SseClient client(served->port(), "/events");
  ASSERT_EQ(client.status(), 200);
  ASSERT_TRUE(wait_until([&] { return served->health("connections") == 1; }, 10s));
  // A stream no server holds, with a client whose writer (the parent's thread) a shutdown would
  // wait for until the write deadline: the child's copy is its last owner.
  n::Notifier other;
  n::EventStreamOptions options;
  options.write_deadline = 60s;
  auto lone = std::make_unique<n::EventStream>(other, options);
  lone->start();
  const auto connection = lone->connect("");
  const pid_t child = ::fork();
  if (child == 0) {
    // The servers' and the streams' threads are the parent's: nothing to join, no one to wait for.
    served.reset();
    lone.reset();
    ::_exit(0);
  }
  ASSERT_GT(child, 0);
  const test_support::ChildResult result = test_support::wait_for_child(child, 20s);  // < write_deadline
  EXPECT_TRUE(result.exited && result.exit_code == 0) << result.describe();
  // The parent's stream is untouched.
  served->notifier.instrument("after.fork", json{{"i", 1}});
  const auto frame = client.next_event();
  ASSERT_TRUE(frame.has_value());
  EXPECT_EQ(frame->event, "after.fork");
}
