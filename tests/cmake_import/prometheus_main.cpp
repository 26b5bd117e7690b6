// Exits 0 when the installed notifications::prometheus component exports a started memory://
// bridge: its scrape names the bridge's sent counter, and /health's document says it is healthy;
// and an EventStream (core) served by the same server: a client connected to it is registered.
#include <notifications/bridge.hpp>
#include <notifications/event_stream.hpp>
#include <notifications/notifications.hpp>
#include <notifications/prometheus.hpp>

#include <chrono>
#include <memory>
#include <string>

int main() {
  auto metrics = std::make_shared<notifications::prometheus::BridgeMetrics>();
  notifications::Notifier notifier;
  notifications::BridgeHooks hooks;
  hooks.observer = metrics->observer("consumer");
  std::shared_ptr<notifications::Bridge> bridge = notifications::make_bridge(notifier, {}, hooks);
  metrics->add("consumer", bridge);
  bridge->start();
  notifier.instrument("consumer.metrics", {{"ok", true}});
  if (!bridge->flush(std::chrono::seconds(5))) return 1;
  auto stream = std::make_shared<notifications::EventStream>(notifier);
  stream->start();
  notifications::prometheus::MetricsServerOptions options;
  options.events = stream;
  notifications::prometheus::MetricsServer server(metrics, options);
  const auto client = stream->connect("consumer.>");
  const std::string text = metrics->scrape();
  const bool ok = server.port() != 0 && stream->health().value("connections", 0) == 1 &&
                  text.find("notifications_events_sent_total{bridge=\"consumer\"} 1") != std::string::npos &&
                  metrics->health().value("healthy", false);
  bridge->shutdown();
  return ok ? 0 : 1;
}
