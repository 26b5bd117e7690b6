// notifications::prometheus: BridgeMetrics and MetricsServer, scraped over a real loopback socket
// with a small HTTP client (every read bounded by a socket timeout). The scraped values are
// checked against Bridge::health() (the source of the counters and gauges) and against the
// number of events (the histograms, fed by the BridgeObserver).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/prometheus.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "prometheus/http_client.hpp"
#include "remote/bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
namespace np = notifications::prometheus;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::config_for;
using test_support::http;
using test_support::HttpResponse;
using test_support::unique_broker;
using test_support::wait_until;

namespace {

#ifdef NOTIFICATIONS_TESTS_SHORT
constexpr int kEvents = 40;
#else
constexpr int kEvents = 400;
#endif

// The text exposition format, parsed: samples by name and labels, and each family's TYPE.
struct Exposition {
  using Labels = std::map<std::string, std::string>;
  std::map<std::string, std::vector<std::pair<Labels, double>>> samples;
  std::map<std::string, std::string> types;

  explicit Exposition(const std::string& text) {
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      const std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      if (line.empty()) continue;
      if (line.rfind("# TYPE ", 0) == 0) {
        const std::size_t space = line.find(' ', 7);
        types[line.substr(7, space - 7)] = line.substr(space + 1);
        continue;
      }
      if (line[0] == '#') continue;
      parse_sample(line);
    }
  }

  // The value of the one sample `name` whose labels include `subset`; nothing when none; throws
  // when several match.
  std::optional<double> value(const std::string& name, const Labels& subset) const {
    const auto found = samples.find(name);
    if (found == samples.end()) return std::nullopt;
    std::optional<double> result;
    for (const auto& [labels, value] : found->second) {
      bool matches = true;
      for (const auto& [key, wanted] : subset) {
        const auto label = labels.find(key);
        matches = matches && label != labels.end() && label->second == wanted;
      }
      if (!matches) continue;
      if (result) throw std::runtime_error("several samples of " + name + " match");
      result = value;
    }
    return result;
  }

 private:
  void parse_sample(const std::string& line) {
    std::size_t i = line.find_first_of("{ ");
    if (i == std::string::npos) throw std::runtime_error("bad sample line: " + line);
    const std::string name = line.substr(0, i);
    Labels labels;
    if (line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const std::size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          throw std::runtime_error("bad labels: " + line);
        }
        const std::string key = line.substr(i, eq - i);
        std::string value;
        std::size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value.push_back(line[j] == 'n' ? '\n' : line[j]);
          } else {
            value.push_back(line[j]);
          }
        }
        labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    const std::string value = line.substr(line.find_first_not_of(' ', i));
    samples[name].emplace_back(std::move(labels), std::stod(value.substr(0, value.find(' '))));
  }
};

double number(const json& value) { return value.get<double>(); }

// The health()-derived samples of bridge `label` equal `health`'s fields.
void expect_equals_health(const Exposition& scraped, const std::string& label, const json& health) {
  const Exposition::Labels bridge{{"bridge", label}};
  const std::pair<const char*, const char*> counters[] = {
      {"notifications_events_accepted_total", "accepted"},
      {"notifications_events_sent_total", "sent"},
      {"notifications_events_confirmed_total", "confirmed"},
      {"notifications_events_received_total", "received"},
      {"notifications_events_lost_total", "lost"},
      {"notifications_events_malformed_total", "malformed"},
      {"notifications_redeliveries_suppressed_total", "redeliveries_suppressed"},
      {"notifications_echo_suppressed_total", "echo_suppressed"},
      {"notifications_observer_errors_total", "observer_errors"},
  };
  for (const auto& [metric, field] : counters) {
    EXPECT_EQ(scraped.value(metric, bridge), number(health["counters"][field])) << label << " " << metric;
  }
  for (const auto& [reason, count] : health["counters"]["dropped"].items()) {
    Exposition::Labels labels = bridge;
    labels["reason"] = reason;
    EXPECT_EQ(scraped.value("notifications_events_dropped_total", labels), number(count)) << label << " " << reason;
  }
  for (const auto& [queue, field] : {std::pair{"outbound", "queue"}, std::pair{"inbound", "inbound_queue"}}) {
    Exposition::Labels labels = bridge;
    labels["queue"] = queue;
    EXPECT_EQ(scraped.value("notifications_queue_depth", labels), number(health[field]["depth"])) << label << queue;
    EXPECT_EQ(scraped.value("notifications_queue_bytes", labels), number(health[field]["bytes"])) << label << queue;
    EXPECT_EQ(scraped.value("notifications_queue_capacity", labels), number(health[field]["capacity"])) << label << queue;
  }
  EXPECT_EQ(scraped.value("notifications_lag_seconds", bridge), number(health["queue"]["lag_ms"]) / 1000.0) << label;
  EXPECT_EQ(scraped.value("notifications_bridge_healthy", bridge), np::BridgeMetrics::healthy(health) ? 1.0 : 0.0);
}

// Two bridges over one memory broker, both observed by one BridgeMetrics ("a" sends, "b" receives).
struct ObservedPair {
  explicit ObservedPair(std::shared_ptr<np::BridgeMetrics> m = std::make_shared<np::BridgeMetrics>()) : metrics(std::move(m)) {
    const std::string broker = unique_broker("prom");
    n::BridgeHooks a_hooks;
    a_hooks.observer = metrics->observer("a");
    a = std::make_shared<n::Bridge>(a_notifier, n::make_memory_transport({.broker = broker}), config_for("svc-a"), a_hooks);
    n::BridgeHooks b_hooks;
    b_hooks.observer = metrics->observer("b");
    b = std::make_shared<n::Bridge>(b_notifier, n::make_memory_transport({.broker = broker}), config_for("svc-b"), b_hooks);
    metrics->add("a", a);
    metrics->add("b", b);
    a->start();
    b->start();
  }
  ~ObservedPair() {
    a->shutdown(5s);
    b->shutdown(5s);
  }
  // Instruments `count` events on a and waits until b delivered them to a listener, and until
  // a has dropped, as echoes, the copies the broker hands back to it: then a's counters, and so
  // its scraped samples, no longer move.
  void send(int count) {
    const auto echoes = [&] { return a->health()["counters"]["echo_suppressed"].get<int>(); };
    const int echoes_before = echoes();
    auto received = std::make_shared<std::atomic<int>>(0);
    auto sub = b_notifier.subscribe("order.*", [received](const n::Event&) { received->fetch_add(1); });
    for (int i = 0; i < count; ++i) a_notifier.instrument("order.placed", {{"i", i}});
    ASSERT_TRUE(a->flush(10s));
    ASSERT_TRUE(wait_until([&] { return received->load() == count; }, 20s)) << received->load();
    ASSERT_TRUE(b->wait_delivered(10s));
    ASSERT_TRUE(wait_until([&] { return echoes() == echoes_before + count; }, 20s)) << a->health().dump();
  }

  std::shared_ptr<np::BridgeMetrics> metrics;
  n::Notifier a_notifier;
  n::Notifier b_notifier;
  std::shared_ptr<n::Bridge> a;
  std::shared_ptr<n::Bridge> b;
};

TEST(PrometheusMetrics, ScrapedCountersAndGaugesEqualHealthAndHistogramsCountTheEvents) {
  ObservedPair pair;
  pair.send(kEvents);
  np::MetricsServer server(pair.metrics);
  ASSERT_NE(server.port(), 0);
  EXPECT_EQ(server.url(), "http://127.0.0.1:" + std::to_string(server.port()));
  const HttpResponse response = http(server.port(), "/metrics");
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_EQ(response.content_type, "text/plain; version=0.0.4; charset=utf-8");
  const Exposition scraped(response.body);
  // Idle after flush and delivery: health() now says what the scrape said.
  const json a = pair.a->health();
  const json b = pair.b->health();
  ASSERT_EQ(a["counters"]["sent"], kEvents);
  ASSERT_EQ(b["counters"]["received"], kEvents);
  expect_equals_health(scraped, "a", a);
  expect_equals_health(scraped, "b", b);
  EXPECT_EQ(a["queue"]["lag_ms"], 0);  // nothing waits

  EXPECT_EQ(scraped.types.at("notifications_events_sent_total"), "counter");
  EXPECT_EQ(scraped.types.at("notifications_queue_depth"), "gauge");
  EXPECT_EQ(scraped.types.at("notifications_lag_seconds"), "gauge");
  EXPECT_EQ(scraped.types.at("notifications_publish_latency_seconds"), "histogram");
  EXPECT_EQ(scraped.types.at("notifications_handler_latency_seconds"), "histogram");

  // One publish observation per sent event, one delivery observation per received event.
  EXPECT_EQ(scraped.value("notifications_publish_latency_seconds_count", {{"bridge", "a"}}), kEvents);
  EXPECT_EQ(scraped.value("notifications_publish_latency_seconds_bucket", {{"bridge", "a"}, {"le", "+Inf"}}), kEvents);
  EXPECT_EQ(scraped.value("notifications_publish_latency_seconds_count", {{"bridge", "b"}}), 0);
  const Exposition::Labels delivered{{"bridge", "b"}, {"kind", "listeners"}, {"outcome", "ok"}};
  EXPECT_EQ(scraped.value("notifications_handler_latency_seconds_count", delivered), kEvents);
  EXPECT_GE(scraped.value("notifications_handler_latency_seconds_sum", delivered).value_or(-1), 0.0);
  EXPECT_EQ(scraped.value("notifications_handler_latency_seconds_count",
                          {{"bridge", "b"}, {"kind", "listeners"}, {"outcome", "error"}}),
            0);
  // scrape() is what the endpoint serves.
  EXPECT_EQ(Exposition(pair.metrics->scrape()).value("notifications_events_sent_total", {{"bridge", "a"}}), kEvents);
}

TEST(PrometheusMetrics, HealthEndpointServesEachBridgesHealthAnd503WhenOneIsNotRunning) {
  ObservedPair pair;
  pair.send(3);
  np::MetricsServer server(pair.metrics);
  HttpResponse response = http(server.port(), "/health");
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_EQ(response.content_type, "application/json");
  json body = json::parse(response.body);
  EXPECT_EQ(body["healthy"], true);
  // Equal values (JSON text does not carry C++'s signed and unsigned integer types).
  EXPECT_EQ(body["bridges"]["a"], pair.a->health());
  EXPECT_EQ(body["bridges"]["b"], pair.b->health());

  pair.b->shutdown(5s);
  response = http(server.port(), "/health");
  EXPECT_EQ(response.status, 503) << response.body;
  body = json::parse(response.body);
  EXPECT_EQ(body["healthy"], false);
  EXPECT_EQ(body["bridges"]["b"]["state"], "stopped");
  EXPECT_EQ(body["bridges"]["b"], pair.b->health());
  EXPECT_EQ(Exposition(http(server.port(), "/metrics").body).value("notifications_bridge_healthy", {{"bridge", "b"}}), 0);

  // A bridge that is gone is no longer reported; none at all is not healthy.
  pair.metrics->remove("a");
  pair.metrics->remove("b");
  response = http(server.port(), "/health");
  EXPECT_EQ(response.status, 503);
  EXPECT_TRUE(json::parse(response.body)["bridges"].empty());
}

TEST(PrometheusMetrics, DroppedByReasonAndLagWhileTheTransportRefusesEverything) {
  auto metrics = std::make_shared<np::BridgeMetrics>();
  n::Notifier notifier;
  auto transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = unique_broker("prom-drop")});
  auto config = config_for("a");
  config.queue_capacity = 4;
  config.subscribe = {};
  config.batch_size = 1;
  config.overflow = n::OverflowPolicy::drop_newest;
  config.retry.initial = 20ms;
  config.retry.max = 20ms;
  n::BridgeHooks hooks;
  hooks.observer = metrics->observer("a");
  auto bridge = std::make_shared<n::Bridge>(notifier, transport, config, hooks);
  metrics->add("a", bridge);
  bridge->start();
  transport->disconnect();  // the sender holds one event and retries; the queue fills
  for (int i = 0; i < 20; ++i) notifier.instrument("burst", {{"i", i}});
  ASSERT_TRUE(wait_until([&] { return bridge->health()["queue"]["lag_ms"].get<std::int64_t>() >= 2; }, 10s));
  np::MetricsServer server(metrics);
  const Exposition scraped(http(server.port(), "/metrics").body);
  const json health = bridge->health();
  const double queue_full = number(health["counters"]["dropped"]["queue_full"]);
  EXPECT_GE(queue_full, 14);
  EXPECT_EQ(scraped.value("notifications_events_dropped_total", {{"bridge", "a"}, {"reason", "queue_full"}}), queue_full);
  EXPECT_EQ(scraped.value("notifications_events_dropped_total", {{"bridge", "a"}, {"reason", "queue_evicted"}}), 0);
  EXPECT_EQ(scraped.value("notifications_events_accepted_total", {{"bridge", "a"}}), number(health["counters"]["accepted"]));
  EXPECT_EQ(number(health["counters"]["accepted"]) + queue_full, 20);
  EXPECT_EQ(scraped.value("notifications_events_sent_total", {{"bridge", "a"}}), 0);
  EXPECT_EQ(scraped.value("notifications_publish_latency_seconds_count", {{"bridge", "a"}}), 0);
  // The lag only grows while nothing is sent: the scrape's lies between 2 ms and health()'s now.
  const double lag = scraped.value("notifications_lag_seconds", {{"bridge", "a"}}).value_or(-1);
  EXPECT_GE(lag, 0.002);
  // (The exposition multiplies lag_ms by 0.001: 9 * 0.001 is a hair above 9 / 1000.0.)
  EXPECT_LE(lag, number(health["queue"]["lag_ms"]) * 0.001 + 1e-12);
  // Retries are counted while they happen.
  EXPECT_GE(scraped.value("notifications_publish_failures_total", {{"bridge", "a"}}).value_or(0), 1);

  transport->reconnect();
  ASSERT_TRUE(bridge->flush(10s));
  const json after = bridge->health();
  EXPECT_EQ(after["queue"]["lag_ms"], 0);
  const Exposition again(http(server.port(), "/metrics").body);
  EXPECT_EQ(again.value("notifications_lag_seconds", {{"bridge", "a"}}), 0);
  EXPECT_EQ(again.value("notifications_events_sent_total", {{"bridge", "a"}}), number(after["counters"]["sent"]));
  EXPECT_EQ(again.value("notifications_publish_latency_seconds_count", {{"bridge", "a"}}), number(after["counters"]["sent"]));
  // The latency of an event that waited for the reconnection is at least the wait seen above.
  EXPECT_LT(again.value("notifications_publish_latency_seconds_bucket", {{"bridge", "a"}, {"le", "0.001"}}).value_or(-1),
            number(after["counters"]["sent"]));
  bridge->shutdown(5s);
}

// Throws on every call: the bridge counts it and carries on.
struct ThrowingObserver final : n::BridgeObserver {
  void published(std::chrono::nanoseconds) override { throw std::runtime_error("observer: published"); }
  void delivered(std::string_view, std::chrono::nanoseconds, bool) override { throw 42; }
  void handled(std::string_view, std::chrono::nanoseconds, bool) override { throw std::runtime_error("handled"); }
};

TEST(PrometheusMetrics, AnObserverThatThrowsIsCountedAndChangesNothingElse) {
  const std::string broker = unique_broker("prom-throw");
  n::Notifier a_notifier;
  n::Notifier b_notifier;
  n::BridgeHooks hooks;
  hooks.observer = std::make_shared<ThrowingObserver>();
  auto a = std::make_shared<n::Bridge>(a_notifier, n::make_memory_transport({.broker = broker}), config_for("a"), hooks);
  auto b = std::make_shared<n::Bridge>(b_notifier, n::make_memory_transport({.broker = broker}), config_for("b"), hooks);
  a->start();
  b->start();
  auto received = std::make_shared<std::atomic<int>>(0);
  auto sub = b_notifier.subscribe("job.*", [received](const n::Event&) { received->fetch_add(1); });
  for (int i = 0; i < 10; ++i) a_notifier.instrument("job.done", {{"i", i}});
  ASSERT_TRUE(a->flush(10s));
  ASSERT_TRUE(wait_until([&] { return received->load() == 10; }, 20s));
  ASSERT_TRUE(b->wait_delivered(10s));
  EXPECT_EQ(a->health()["counters"]["observer_errors"], 10);  // one per published event
  EXPECT_EQ(b->health()["counters"]["observer_errors"], 10);  // one per delivery
  EXPECT_EQ(a->health()["counters"]["sent"], 10);
  EXPECT_EQ(b->health()["counters"]["dropped"]["dispatch_failed"], 0);
  // Without an observer nothing is counted.
  n::Notifier c_notifier;
  n::Bridge c(c_notifier, n::make_memory_transport({.broker = unique_broker("prom-none")}), config_for("c"));
  EXPECT_EQ(c.health()["counters"]["observer_errors"], 0);
  a->shutdown(5s);
  b->shutdown(5s);
}

TEST(PrometheusMetrics, DurableHandlerCallsAreTimedByOutcomeAndDeadLettersCounted) {
  auto metrics = std::make_shared<np::BridgeMetrics>();
  const std::string broker = unique_broker("prom-durable");
  n::Notifier producer_notifier;
  n::Notifier consumer_notifier;
  n::BridgeConfig pc = config_for("producer");
  pc.subscribe = {};
  auto producer = std::make_shared<n::Bridge>(producer_notifier, n::make_memory_transport({.broker = broker}), pc);
  n::BridgeConfig cc = config_for("consumer");
  cc.forward = {};
  cc.subscribe = {};
  n::BridgeHooks hooks;
  hooks.observer = metrics->observer("consumer");
  auto consumer = std::make_shared<n::Bridge>(consumer_notifier, n::make_memory_transport({.broker = broker}), cc, hooks);
  metrics->add("consumer", consumer);
  n::DurableOptions options;
  options.max_attempts = 1;  // a failure is a dead letter at once
  consumer->subscribe_durable("audit", "task.*", [](const n::Event& event, n::DurableContext&) {
    if (event.payload().value("fail", false)) throw std::runtime_error("refused");
  }, options);
  consumer->start();
  producer->start();
  for (int i = 0; i < 6; ++i) producer_notifier.instrument("task.run", {{"i", i}, {"fail", i % 3 == 0}});
  ASSERT_TRUE(producer->flush(10s));
  auto counters = [&] { return consumer->health()["durable"]["audit"]["counters"]; };
  ASSERT_TRUE(wait_until([&] {
    const json c = counters();
    return c["succeeded"].get<int>() == 4 && c["dead_lettered"].get<int>() == 2;
  }, 20s)) << consumer->health().dump();
  np::MetricsServer server(metrics);
  const Exposition scraped(http(server.port(), "/metrics").body);
  const json c = counters();
  const Exposition::Labels audit{{"bridge", "consumer"}, {"kind", "durable"}, {"handler", "audit"}};
  Exposition::Labels ok = audit;
  ok["outcome"] = "ok";
  Exposition::Labels error = audit;
  error["outcome"] = "error";
  EXPECT_EQ(scraped.value("notifications_handler_latency_seconds_count", ok), number(c["succeeded"]));
  EXPECT_EQ(scraped.value("notifications_handler_latency_seconds_count", error), number(c["failed"]));
  EXPECT_EQ(number(c["failed"]), 2);
  EXPECT_EQ(scraped.value("notifications_dead_letters_total", {{"bridge", "consumer"}, {"handler", "audit"}}), 2);
  EXPECT_EQ(scraped.value("notifications_durable_succeeded_total", {{"bridge", "consumer"}, {"handler", "audit"}}), 4);
  EXPECT_EQ(scraped.value("notifications_redeliveries_total", {{"bridge", "consumer"}, {"handler", "audit"}}),
            number(c["retried"]));
  producer->shutdown(5s);
  consumer->shutdown(5s);
}

TEST(PrometheusMetrics, TheServerListensOnLoopbackOnlyUnlessAskedAndAnswersOnlyItsPaths) {
  auto metrics = std::make_shared<np::BridgeMetrics>();
  for (const std::string address : {"0.0.0.0", "192.0.2.1", "::"}) {
    try {
      np::MetricsServer server(metrics, {.address = address});
      ADD_FAILURE() << address << " was accepted";
    } catch (const np::MetricsError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("\"" + address + "\" is not a loopback address"), std::string::npos) << what;
      EXPECT_NE(what.find("allow_non_loopback"), std::string::npos) << what;
    }
  }
  EXPECT_THROW(np::MetricsServer(metrics, {.address = "localhost"}), np::MetricsError);  // numeric only
  EXPECT_THROW(np::MetricsServer(metrics, {.threads = 0}), np::MetricsError);
  EXPECT_THROW(np::MetricsServer(nullptr), np::MetricsError);
  EXPECT_THROW(np::BridgeMetrics({.latency_buckets = {0.1, 0.01}}), np::MetricsError);
  EXPECT_THROW(metrics->add("x", nullptr), np::MetricsError);
  EXPECT_THROW(metrics->observer(""), np::MetricsError);

  np::MetricsServer server(metrics);
  // The chosen port is busy while the server runs: a second one on it is refused, naming it.
  try {
    np::MetricsServer second(metrics, {.port = server.port()});
    ADD_FAILURE() << "a second server on port " << server.port() << " started";
  } catch (const np::MetricsError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(server.port())), std::string::npos) << e.what();
  }
  EXPECT_EQ(http(server.port(), "/nothing-here").status, 404);
  EXPECT_EQ(http(server.port(), "/metrics", "POST").status, 405);
  EXPECT_EQ(http(server.port(), "/metrics").status, 200);  // empty but valid: no bridge added
  EXPECT_EQ(http(server.port(), "/health").status, 503);
}

// Starting a server leaves the application's SIGCHLD disposition as it was (civetweb would set it to
// be ignored, and then a child of the application is reaped by the kernel: waitpid() fails).
TEST(PrometheusServer, StartingAServerKeepsTheApplicationsChildSignal) {
  struct sigaction before {};
  ASSERT_EQ(::sigaction(SIGCHLD, nullptr, &before), 0);
  ASSERT_NE(before.sa_handler, SIG_IGN) << "the test process must not ignore SIGCHLD to begin with";
  auto metrics = std::make_shared<np::BridgeMetrics>();
  {
    np::MetricsServer server(metrics);
    struct sigaction during {};
    ASSERT_EQ(::sigaction(SIGCHLD, nullptr, &during), 0);
    EXPECT_EQ(during.sa_handler, before.sa_handler);
  }
  // A child can still be waited for (it allocates nothing: fork-safe under every sanitizer).
  const pid_t child = ::fork();
  if (child == 0) ::_exit(7);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7);
}

}  // namespace
