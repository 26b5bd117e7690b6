// notifications::prometheus over nats://: a bridge pair through a real nats-server (started by the
// test on 127.0.0.1), scraped through MetricsServer; reconnects counted after a server restart,
// and /health 503 while the connection is down. Every wait is bounded.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/prometheus.hpp"
#include "notifications/transports/nats.hpp"
#include "prometheus/http_client.hpp"
#include "remote/bridge_test_support.hpp"
#include "transports/nats/nats_server.hpp"
#include "transports/nats/nats_test_options.hpp"
#include "wait.hpp"

namespace n = notifications;
namespace np = notifications::prometheus;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::config_for;
using test_support::http;
using test_support::HttpResponse;
using test_support::NatsServer;
using test_support::wait_until;

namespace {

// The value of the sample line that starts with `series` ("name{labels}"), exactly.
std::optional<double> sample(const std::string& text, const std::string& series) {
  const std::string start = series + " ";
  std::size_t at = text.rfind("\n" + start);
  if (at == std::string::npos) return std::nullopt;
  at += 1 + start.size();
  return std::stod(text.substr(at, text.find('\n', at) - at));
}

n::BridgeConfig nats_config(const std::string& app, const std::string& url) {
  n::BridgeConfig config = config_for(app);
  config.url = url;
  config.transport = {{"reconnect_wait_ms", 50}};
  return config;
}

TEST(PrometheusNats, ScrapedValuesEqualHealthAndReconnectsAreCounted) {
  NatsServer server;
  auto metrics = std::make_shared<np::BridgeMetrics>();
  n::Notifier a_notifier;
  n::Notifier b_notifier;
  n::BridgeHooks a_hooks;
  a_hooks.observer = metrics->observer("a");
  n::BridgeHooks b_hooks;
  b_hooks.observer = metrics->observer("b");
  std::shared_ptr<n::Bridge> a = n::make_bridge(a_notifier, nats_config("svc-a", server.url()), a_hooks);
  std::shared_ptr<n::Bridge> b = n::make_bridge(b_notifier, nats_config("svc-b", server.url()), b_hooks);
  metrics->add("a", a);
  metrics->add("b", b);
  a->start();
  b->start();
  auto received = std::make_shared<std::atomic<int>>(0);
  auto sub = b_notifier.subscribe("order.*", [received](const n::Event&) { received->fetch_add(1); });
  constexpr int kEvents = 50;
  for (int i = 0; i < kEvents; ++i) a_notifier.instrument("order.placed", {{"i", i}});
  ASSERT_TRUE(a->flush(10s));
  ASSERT_TRUE(wait_until([&] { return received->load() == kEvents; }, 20s)) << received->load();
  ASSERT_TRUE(b->wait_delivered(10s));

  np::MetricsServer endpoint(metrics);
  const auto [status, content_type, text] = http(endpoint.port(), "/metrics");
  ASSERT_EQ(status, 200);
  const json ah = a->health();
  const json bh = b->health();
  EXPECT_EQ(sample(text, "notifications_events_sent_total{bridge=\"a\"}"), ah["counters"]["sent"].get<double>());
  EXPECT_EQ(sample(text, "notifications_events_received_total{bridge=\"b\"}"), bh["counters"]["received"].get<double>());
  EXPECT_EQ(bh["counters"]["received"], kEvents);
  EXPECT_EQ(sample(text, "notifications_publish_latency_seconds_count{bridge=\"a\"}"), kEvents);
  EXPECT_EQ(sample(text, "notifications_reconnects_total{bridge=\"a\"}"), ah["transport"]["reconnects"].get<double>());
  EXPECT_EQ(sample(text, "notifications_bridge_healthy{bridge=\"a\"}"), 1);
  EXPECT_EQ(http(endpoint.port(), "/health").status, 200);

  // Down: the connection is not "connected", so /health says 503.
  server.stop();
  ASSERT_TRUE(wait_until([&] { return a->health()["transport"]["connection"] != "connected"; }, 20s));
  EXPECT_EQ(http(endpoint.port(), "/health").status, 503);
  EXPECT_EQ(sample(http(endpoint.port(), "/metrics").body, "notifications_bridge_healthy{bridge=\"a\"}"), 0);

  server.start();
  ASSERT_TRUE(wait_until([&] { return a->health()["transport"]["reconnects"].get<int>() >= 1 &&
                                      b->health()["transport"]["connection"] == "connected" &&
                                      a->health()["transport"]["connection"] == "connected"; }, 20s))
      << a->health().dump();
  const auto after = http(endpoint.port(), "/metrics");
  const json ah2 = a->health();
  EXPECT_EQ(sample(after.body, "notifications_reconnects_total{bridge=\"a\"}"),
            ah2["transport"]["reconnects"].get<double>());
  EXPECT_GE(ah2["transport"]["reconnects"].get<int>(), 1);
  EXPECT_EQ(sample(after.body, "notifications_disconnects_total{bridge=\"a\"}"),
            ah2["transport"]["disconnects"].get<double>());
  EXPECT_EQ(http(endpoint.port(), "/health").status, 200);
  a->shutdown(5s);
  b->shutdown(5s);
}

}  // namespace
