// EventStream with the history of a sqlite:// file (make_sqlite_event_history): a browser that
// reconnects to a restarted server, whose new ring knows nothing of its position, is replayed
// from the file and then continues live, with no gap and no duplicate while events keep flowing.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/event_stream.hpp"
#include "notifications/notifier.hpp"
#include "notifications/prometheus.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/sqlite.hpp"
#include "prometheus/sse_client.hpp"
#include "scale.hpp"
#include "transports/sqlite/sqlite_test_support.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
namespace np = notifications::prometheus;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::SseClient;
using test_support::TempDir;
using test_support::wait_until;

std::shared_ptr<n::Transport> sqlite_at(const std::string& path) {
  n::SqliteTransportOptions options;
  options.path = path;
  options.idle_interval = 20ms;
  return n::make_sqlite_transport(options);
}

n::BridgeConfig config_for(const std::string& app, bool forward) {
  n::BridgeConfig config;
  config.app = app;
  config.prefix = "test";
  if (forward) config.subscribe = {};
  if (!forward) config.forward = {};
  return config;
}

// What `notifications serve --url sqlite://...` runs: a bridge receiving from the file, a stream
// of what it receives with the file as history, and the server, destroyed in reverse order.
struct Server {
  explicit Server(const std::string& path, std::size_t replay_events) {
    bridge = std::make_unique<n::Bridge>(notifier, sqlite_at(path), config_for("server", false));
    n::EventStreamOptions options;
    options.replay_events = replay_events;
    options.history = n::make_sqlite_event_history(path);
    stream = std::make_shared<n::EventStream>(notifier, options);
    stream->start();
    bridge->start();
    np::MetricsServerOptions server_options;
    server_options.events = stream;
    server = std::make_unique<np::MetricsServer>(std::make_shared<np::BridgeMetrics>(), server_options);
  }
  ~Server() {
    server.reset();
    bridge->shutdown(5s);
  }
  std::uint64_t health(const char* key) const { return stream->health()[key].get<std::uint64_t>(); }

  n::Notifier notifier;
  std::unique_ptr<n::Bridge> bridge;
  std::shared_ptr<n::EventStream> stream;
  std::unique_ptr<np::MetricsServer> server;
};

int payload_index(const test_support::SseFrame& frame) {
  return json::parse(frame.data).at("payload").at("i").get<int>();
}

}  // namespace

TEST(EventStreamSqlite, AClientOfARestartedServerIsReplayedFromTheFileWithNoGapNorDuplicate) {
  TempDir dir("sse-history");
  const std::string path = dir.file("events.db");
  const int total = 2000 / test_support::kScale;
  n::Notifier producer_notifier;
  n::Bridge producer(producer_notifier, sqlite_at(path), config_for("producer", true));
  producer.start();

  std::vector<int> seen;
  std::string last_id;
  std::atomic<bool> go{false};
  std::thread publishing([&] {
    while (!go.load()) std::this_thread::sleep_for(1ms);
    for (int i = 0; i < total; ++i) {
      producer_notifier.instrument("tick", json{{"i", i}});
      std::this_thread::sleep_for(1ms);  // still flowing while the client reconnects
    }
  });
  struct Joiner {
    std::thread& thread;
    std::atomic<bool>& go;
    ~Joiner() {
      go = true;
      thread.join();
    }
  } joiner{publishing, go};
  {
    Server first(path, 100);
    SseClient client(first.server->port(), "/events?pattern=tick");
    ASSERT_EQ(client.status(), 200);
    ASSERT_TRUE(wait_until([&] { return first.health("connections") == 1; }, 10s));
    go = true;
    while (seen.size() < static_cast<std::size_t>(total / 4)) {
      const auto frame = client.next_event(20s);
      ASSERT_TRUE(frame.has_value()) << "after " << seen.size() << " events";
      seen.push_back(payload_index(*frame));
      last_id = frame->id;
    }
  }  // the server goes away while the producer goes on
  std::this_thread::sleep_for(50ms);
  Server second(path, 100);  // its ring holds at most 100: far less than what the client missed
  SseClient again(second.server->port(), "/events?pattern=tick", last_id);
  ASSERT_EQ(again.status(), 200);
  while (seen.size() < static_cast<std::size_t>(total)) {
    const auto frame = again.next_event(20s);
    ASSERT_TRUE(frame.has_value()) << "after " << seen.size() << " events; " << second.stream->health().dump();
    ASSERT_NE(frame->event, "notifications.gap") << frame->data;
    seen.push_back(payload_index(*frame));
  }
  for (int i = 0; i < total; ++i) ASSERT_EQ(seen[static_cast<std::size_t>(i)], i) << "at " << i;
  EXPECT_EQ(second.health("history_replays"), 1u);
  EXPECT_GT(second.health("replayed"), 0u);
  producer.shutdown(5s);
}

TEST(EventStreamSqlite, AnEventTheFileNoLongerHoldsGetsTheGapEvent) {
  TempDir dir("sse-history");
  const std::string path = dir.file("events.db");
  n::Notifier producer_notifier;
  n::Bridge producer(producer_notifier, sqlite_at(path), config_for("producer", true));
  producer.start();
  Server server(path, 100);
  producer_notifier.instrument("tick", json{{"i", 0}});
  ASSERT_TRUE(wait_until([&] { return server.health("events") == 1; }, 20s));
  SseClient client(server.server->port(), "/events?pattern=tick",
                   "0123456789abcdef-9:00000000-0000-4000-8000-000000000000");
  const auto gap = client.next_event();
  ASSERT_TRUE(gap.has_value());
  EXPECT_EQ(gap->event, "notifications.gap");
  EXPECT_EQ(json::parse(gap->data).at("reason"), "older than the replay ring and the history");
  const auto event = client.next_event();  // then what the ring holds
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(payload_index(*event), 0);
  producer.shutdown(5s);
}
