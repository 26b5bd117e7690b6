// notifications::prometheus: Prometheus metrics of one or several Bridges, and an optional small
// HTTP endpoint serving them (/metrics) with the bridges' health (/health). Needs the
// notifications::prometheus component (find_package(notifications CONFIG REQUIRED COMPONENTS
// prometheus); prometheus-cpp, Debian prometheus-cpp-dev). docs/metrics.md lists every metric.
//
//   auto metrics = std::make_shared<notifications::prometheus::BridgeMetrics>();
//   notifications::BridgeHooks hooks;
//   hooks.observer = metrics->observer("orders");         // latency histograms
//   std::shared_ptr<notifications::Bridge> bridge = notifications::make_bridge(notifier, config, hooks);
//   metrics->add("orders", bridge);                       // counters and gauges from health()
//   notifications::prometheus::MetricsServer server(metrics, {.port = 9464});
//   // or, with a prometheus::Exposer of your own: exposer.RegisterCollectable(metrics->collectable());
//
// Counters and gauges are read from Bridge::health() at each scrape (nothing is counted twice,
// and they equal what health() says); the latency histograms are fed by the BridgeObserver that
// observer() returns, on the bridges' threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <prometheus/collectable.h>

#include "notifications/bridge.hpp"
#include "notifications/errors.hpp"
#include "notifications/event_stream.hpp"
#include "notifications/metrics.hpp"

namespace notifications::prometheus {

// Bad metrics options, or an endpoint that could not start (the message says which and why).
// Thread-safety: immutable once thrown.
class MetricsError : public Error {
 public:
  explicit MetricsError(const std::string& message) : Error("metrics", message) {}
};

// Thread-safety: a plain value.
struct BridgeMetricsOptions {
  // Upper bounds (seconds, increasing) of the latency histograms' buckets; empty: the default,
  // 100 us to 10 s (docs/metrics.md).
  std::vector<double> latency_buckets{};
};

// The metric families of the bridges added to it, under the label bridge="<label>".
// Thread-safety: every member may be called from any thread, concurrently, including while a
// scrape runs; the observers it hands out are thread-safe (BridgeObserver's contract).
class BridgeMetrics {
 public:
  // Throws MetricsError when latency_buckets are not increasing.
  explicit BridgeMetrics(BridgeMetricsOptions options = {});
  ~BridgeMetrics();
  BridgeMetrics(const BridgeMetrics&) = delete;
  BridgeMetrics& operator=(const BridgeMetrics&) = delete;

  // The observer to put in BridgeHooks::observer of the bridge that will be added under `label`
  // (the hooks are given before the bridge exists). Calling it again for a label returns the
  // same observer while one is held (they feed the same histograms either way). The observer
  // keeps the histograms alive, also past this object. Throws MetricsError for an empty label.
  std::shared_ptr<BridgeObserver> observer(const std::string& label);

  // Reads `bridge`'s health() at every scrape under label bridge="<label>". The bridge is held
  // weakly: once it is destroyed its samples disappear (its histograms stay). A scrape holds it
  // while it reads health(), so a bridge whose last owner lets go during a scrape is destroyed
  // (shut down) on the scraping thread. Adding a label again replaces its bridge. Throws
  // MetricsError for an empty label or a null bridge.
  void add(const std::string& label, const std::shared_ptr<Bridge>& bridge);
  // Forgets the label's bridge (not its histograms). False when it was not added.
  bool remove(const std::string& label);

  // Everything BridgeMetrics exposes, for a prometheus::Exposer of the application's own
  // (Exposer::RegisterCollectable): the health()-derived families and the histograms.
  std::shared_ptr<::prometheus::Collectable> collectable() const;
  // The text exposition format (version 0.0.4) of collectable(): what /metrics serves.
  std::string scrape() const;

  // /health's document: {"healthy": bool, "bridges": {label: health()}} for the bridges alive.
  // A bridge is healthy when health()["state"] is "running" and its transport's health() says
  // "started" (and, where it reports a connection, "connected"); all are healthy when every one
  // is (and at least one was added).
  nlohmann::json health() const;
  static bool healthy(const nlohmann::json& bridge_health);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Thread-safety: a plain value.
struct MetricsServerOptions {
  // An IPv4 or IPv6 address (numeric; IPv6 only where civetweb was built with it, which Debian 12's is
  // not: MetricsError says so). Anything but a loopback address (127.0.0.0/8, ::1) is
  // refused unless allow_non_loopback is set: metrics and health name subjects, hosts and errors.
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;  // 0: a free port chosen by the system (read it with port())
  bool allow_non_loopback = false;
  int threads = 2;  // the server's worker threads (at least 1), besides those of `events`
  // When set, the server also serves GET /events (this stream, text/event-stream: the query's
  // "pattern" narrows it, a Last-Event-ID header or "last_event_id" query member resumes it) and
  // GET / (a page that tails it in a browser, docs/event_stream.md). Each event-stream client
  // holds one server thread while it is connected, so the server runs `threads` +
  // events' max_connections threads; the socket timeout is events' write_deadline. The stream is
  // shut down (its clients sent the "shutdown" event) before the server stops.
  std::shared_ptr<EventStream> events{};
  // When not empty, every request must carry it, as "Authorization: Bearer <token>" or (browsers'
  // EventSource cannot set headers) as the query member "access_token"; others get 401. Required
  // to serve `events` on an address that is not loopback. Never logged nor echoed.
  std::string bearer_token{};
};

// An embedded HTTP server (civetweb) serving GET /metrics (text exposition of `metrics`) and
// GET /health (BridgeMetrics::health() as JSON: 200 when healthy, 503 when not). Other paths get
// 404, other methods 405. Requests run on the server's own threads.
// Thread-safety: port() and url() from any thread; the destructor stops the server (waiting for
// requests being served) and must not run on one of its threads.
// civetweb sets SIGPIPE to be ignored in the whole process when the first server starts (a client
// that goes away mid-answer must not kill the process); the SIGCHLD disposition it would change
// too is put back as the application had it.
// Fork: a server belongs to the process that started it. In a child forked from that process it
// serves nothing, and its destructor leaves it as it is (civetweb's threads are not in the child;
// its state and its copy of the listening socket stay until the child exits). A child that serves
// metrics starts a MetricsServer of its own, with a BridgeMetrics of its own: one a scrape was
// using at fork() may hold locks no thread of the child will release.
class MetricsServer {
 public:
  // Starts serving. Throws MetricsError naming the address for a bad or non-loopback address
  // (without the option), and when the port cannot be bound.
  explicit MetricsServer(std::shared_ptr<BridgeMetrics> metrics, MetricsServerOptions options = {});
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  std::uint16_t port() const noexcept { return port_; }
  // "http://<address>:<port>" (IPv6 in brackets).
  std::string url() const;

 private:
  struct Server;
  std::unique_ptr<Server> server_;
  std::uint16_t port_ = 0;
};

}  // namespace notifications::prometheus
