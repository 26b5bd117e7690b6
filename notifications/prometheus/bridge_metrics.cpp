// BridgeMetrics: health()-derived families built at each scrape, plus latency histograms kept in
// a prometheus::Registry and fed by the bridges' observers (docs/metrics.md).
#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <string_view>
#include <utility>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "notifications/prometheus.hpp"

namespace notifications::prometheus {

namespace {

namespace pm = ::prometheus;

std::vector<double> default_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

double seconds(std::chrono::nanoseconds latency) { return std::chrono::duration<double>(latency).count(); }

// A number at `path` in `json` (nested keys), or nothing when absent or not a number.
const nlohmann::json* number_at(const nlohmann::json& json, std::initializer_list<std::string_view> path) {
  const nlohmann::json* at = &json;
  for (std::string_view key : path) {
    if (!at->is_object()) return nullptr;
    const auto found = at->find(key);
    if (found == at->end()) return nullptr;
    at = &*found;
  }
  return at->is_number() ? at : nullptr;
}

// Builds the health()-derived families: one entry per metric name, in a fixed order.
class FamilyBuilder {
 public:
  void add(const std::string& name, pm::MetricType type, const std::string& help, std::vector<pm::ClientMetric::Label> labels,
           double value) {
    auto found = index_.find(name);
    if (found == index_.end()) {
      found = index_.emplace(name, families_.size()).first;
      families_.push_back(pm::MetricFamily{name, help, type, {}});
    }
    pm::ClientMetric metric;
    metric.label = std::move(labels);
    if (type == pm::MetricType::Counter) {
      metric.counter.value = value;
    } else {
      metric.gauge.value = value;
    }
    families_[found->second].metric.push_back(std::move(metric));
  }
  // Adds the sample only when `json` holds a number there.
  void add_if(const std::string& name, pm::MetricType type, const std::string& help,
              std::vector<pm::ClientMetric::Label> labels, const nlohmann::json& json,
              std::initializer_list<std::string_view> path, double scale = 1.0) {
    if (const nlohmann::json* value = number_at(json, path)) add(name, type, help, std::move(labels), value->get<double>() * scale);
  }
  std::vector<pm::MetricFamily> take() { return std::move(families_); }

 private:
  std::map<std::string, std::size_t> index_;
  std::vector<pm::MetricFamily> families_;
};

constexpr auto kCounter = pm::MetricType::Counter;
constexpr auto kGauge = pm::MetricType::Gauge;

// The families one bridge's health() gives (docs/metrics.md, "From health()").
void collect_bridge(FamilyBuilder& out, const std::string& label, const nlohmann::json& health) {
  using Labels = std::vector<pm::ClientMetric::Label>;
  const Labels bridge{{"bridge", label}};
  const auto with = [&](std::string name, std::string value) {
    Labels labels = bridge;
    labels.push_back({std::move(name), std::move(value)});
    return labels;
  };
  out.add("notifications_bridge_healthy", kGauge, "1 when the bridge is running over a started (connected) transport",
          bridge, BridgeMetrics::healthy(health) ? 1.0 : 0.0);
  struct Counter {
    const char* metric;
    const char* field;
    const char* help;
  };
  static constexpr Counter kCounters[] = {
      {"notifications_events_accepted_total", "accepted", "Instrumented events the bridge accepted for forwarding"},
      {"notifications_events_sent_total", "sent", "Forwarded events the transport reported published"},
      {"notifications_events_confirmed_total", "confirmed", "Sent events covered by a successful transport flush"},
      {"notifications_events_received_total", "received", "Remote events received and handed to local listeners"},
      {"notifications_events_lost_total", "lost", "Events missing from a producer's sequence (never received)"},
      {"notifications_events_malformed_total", "malformed",
       "Inbound messages that did not decode (handed to the dead-letter hook)"},
      {"notifications_events_replayed_total", "replayed", "Events a durable outbox held from an earlier run"},
      {"notifications_echo_suppressed_total", "echo_suppressed", "This process's own events received back, not delivered"},
      {"notifications_redeliveries_suppressed_total", "redeliveries_suppressed",
       "Redeliveries of an already delivered message id, not delivered again"},
      {"notifications_sequence_resets_total", "sequence_resets", "Producer sequence jumps taken as a reset"},
      {"notifications_publish_failures_total", "failed", "Transport publish calls that did not take everything"},
      {"notifications_publish_retries_total", "retried", "Publish retries after a transient failure"},
      {"notifications_instrument_blocked_total", "blocked", "Instrument calls that waited for room (overflow block)"},
      {"notifications_observer_errors_total", "observer_errors", "Exceptions thrown by the bridge's observer"},
  };
  for (const Counter& counter : kCounters) {
    out.add_if(counter.metric, kCounter, counter.help, bridge, health, {"counters", counter.field});
  }
  if (const auto dropped = health.find("counters"); dropped != health.end() && dropped->contains("dropped")) {
    for (const auto& [reason, count] : (*dropped)["dropped"].items()) {
      if (count.is_number()) {
        out.add("notifications_events_dropped_total", kCounter, "Events and messages given up on, by reason",
                with("reason", reason), count.get<double>());
      }
    }
  }
  out.add_if("notifications_queue_depth", kGauge, "Items waiting in a queue", with("queue", "outbound"), health,
             {"queue", "depth"});
  out.add_if("notifications_queue_depth", kGauge, "Items waiting in a queue", with("queue", "inbound"), health,
             {"inbound_queue", "depth"});
  out.add_if("notifications_queue_bytes", kGauge, "Bytes held by the items waiting in a queue", with("queue", "outbound"),
             health, {"queue", "bytes"});
  out.add_if("notifications_queue_bytes", kGauge, "Bytes held by the items waiting in a queue", with("queue", "inbound"),
             health, {"inbound_queue", "bytes"});
  out.add_if("notifications_queue_capacity", kGauge, "Items a queue holds at most", with("queue", "outbound"), health,
             {"queue", "capacity"});
  out.add_if("notifications_queue_capacity", kGauge, "Items a queue holds at most", with("queue", "inbound"), health,
             {"inbound_queue", "capacity"});
  out.add_if("notifications_queue_in_flight", kGauge, "Outbound events taken by the sender, not yet settled", bridge,
             health, {"queue", "in_flight"});
  out.add_if("notifications_lag_seconds", kGauge, "Age of the oldest accepted event not yet sent", bridge, health,
             {"queue", "lag_ms"}, 0.001);
  out.add_if("notifications_reconnects_total", kCounter, "Reconnections of the transport (transports that report them)",
             bridge, health, {"transport", "reconnects"});
  out.add_if("notifications_disconnects_total", kCounter, "Disconnections of the transport (transports that report them)",
             bridge, health, {"transport", "disconnects"});
  if (const auto durable = health.find("durable"); durable != health.end() && durable->is_object()) {
    struct DurableCounter {
      const char* metric;
      const char* field;
      const char* help;
    };
    static constexpr DurableCounter kDurable[] = {
        {"notifications_durable_received_total", "received", "Deliveries a durable handler received"},
        {"notifications_durable_succeeded_total", "succeeded", "Durable handler calls that succeeded"},
        {"notifications_durable_failed_total", "failed", "Durable handler calls that threw"},
        {"notifications_durable_timeouts_total", "timeouts", "Durable handler calls that ran past their deadline"},
        {"notifications_redeliveries_total", "retried", "Events a durable handler was given again after a failure"},
        {"notifications_dead_letters_total", "dead_lettered", "Events a durable handler gave up on (dead letters)"},
    };
    for (const auto& [handler, handler_health] : durable->items()) {
      for (const DurableCounter& counter : kDurable) {
        out.add_if(counter.metric, kCounter, counter.help, with("handler", handler), handler_health,
                   {"counters", counter.field});
      }
    }
  }
}

}  // namespace

// Shared by BridgeMetrics, its observers and its collectable: the last two may outlive the first.
struct BridgeMetrics::State : pm::Collectable {
  explicit State(std::vector<double> buckets)
      : buckets(std::move(buckets)),
        publish_latency(pm::BuildHistogram()
                            .Name("notifications_publish_latency_seconds")
                            .Help("From the end of the instrumented block to the transport's publish() reporting "
                                  "the event published")
                            .Register(registry)),
        handler_latency(pm::BuildHistogram()
                            .Name("notifications_handler_latency_seconds")
                            .Help("Time local listeners (kind=\"listeners\") or a durable handler (kind=\"durable\") "
                                  "took for one remote event")
                            .Register(registry)) {}

  std::vector<pm::MetricFamily> Collect() const override {
    std::vector<std::pair<std::string, std::shared_ptr<Bridge>>> alive;
    {
      std::lock_guard<std::mutex> lock(mutex);
      for (const auto& [label, weak] : bridges) {
        if (auto bridge = weak.lock()) alive.emplace_back(label, std::move(bridge));
      }
    }
    FamilyBuilder builder;
    for (const auto& [label, bridge] : alive) collect_bridge(builder, label, bridge->health());
    std::vector<pm::MetricFamily> families = builder.take();
    for (auto& family : registry.Collect()) families.push_back(std::move(family));
    return families;
  }

  const std::vector<double> buckets;
  pm::Registry registry;  // the histograms
  pm::Family<pm::Histogram>& publish_latency;
  pm::Family<pm::Histogram>& handler_latency;

  mutable std::mutex mutex;
  std::map<std::string, std::weak_ptr<Bridge>> bridges;                 // guarded by mutex
  // Weak: an observer holds this state (its histograms live here), so a strong one would be a cycle.
  std::map<std::string, std::weak_ptr<BridgeObserver>> observers;       // guarded by mutex
};

namespace {

// Feeds one bridge's histograms. The histograms it uses on every event are looked up once.
class Observer final : public BridgeObserver {
 public:
  Observer(std::shared_ptr<const void> keep, pm::Family<pm::Histogram>& handler_family, pm::Histogram& published,
           pm::Histogram& delivered_ok, pm::Histogram& delivered_error, std::string label, std::vector<double> buckets)
      : keep_(std::move(keep)),
        handler_family_(handler_family),
        published_(published),
        delivered_ok_(delivered_ok),
        delivered_error_(delivered_error),
        label_(std::move(label)),
        buckets_(std::move(buckets)) {}

  void published(std::chrono::nanoseconds latency) override { published_.Observe(seconds(latency)); }
  void delivered(std::string_view, std::chrono::nanoseconds latency, bool ok) override {
    (ok ? delivered_ok_ : delivered_error_).Observe(seconds(latency));
  }
  void handled(std::string_view handler, std::chrono::nanoseconds latency, bool ok) override {
    // Family::Add returns the existing histogram for labels it has seen (one lookup under the
    // family's lock): durable calls are far slower than that.
    handler_family_
        .Add({{"bridge", label_}, {"kind", "durable"}, {"handler", std::string(handler)}, {"outcome", ok ? "ok" : "error"}},
             buckets_)
        .Observe(seconds(latency));
  }

 private:
  const std::shared_ptr<const void> keep_;  // the families live in it
  pm::Family<pm::Histogram>& handler_family_;
  pm::Histogram& published_;
  pm::Histogram& delivered_ok_;
  pm::Histogram& delivered_error_;
  const std::string label_;
  const std::vector<double> buckets_;
};

}  // namespace

BridgeMetrics::BridgeMetrics(BridgeMetricsOptions options) {
  std::vector<double> buckets = options.latency_buckets.empty() ? default_buckets() : std::move(options.latency_buckets);
  if (!std::is_sorted(buckets.begin(), buckets.end()) ||
      std::adjacent_find(buckets.begin(), buckets.end()) != buckets.end()) {
    throw MetricsError("BridgeMetricsOptions::latency_buckets: the bounds must be strictly increasing");
  }
  state_ = std::make_shared<State>(std::move(buckets));
}

BridgeMetrics::~BridgeMetrics() = default;

std::shared_ptr<BridgeObserver> BridgeMetrics::observer(const std::string& label) {
  if (label.empty()) throw MetricsError("BridgeMetrics::observer: the label is empty");
  std::lock_guard<std::mutex> lock(state_->mutex);
  std::weak_ptr<BridgeObserver>& slot = state_->observers[label];
  std::shared_ptr<BridgeObserver> observer = slot.lock();
  if (!observer) {  // new, or every holder let it go: the histograms are found again by their labels
    const std::vector<double>& b = state_->buckets;
    observer = std::make_shared<Observer>(
        state_, state_->handler_latency, state_->publish_latency.Add({{"bridge", label}}, b),
        state_->handler_latency.Add({{"bridge", label}, {"kind", "listeners"}, {"handler", ""}, {"outcome", "ok"}}, b),
        state_->handler_latency.Add({{"bridge", label}, {"kind", "listeners"}, {"handler", ""}, {"outcome", "error"}}, b),
        label, b);
    slot = observer;
  }
  return observer;
}

void BridgeMetrics::add(const std::string& label, const std::shared_ptr<Bridge>& bridge) {
  if (label.empty()) throw MetricsError("BridgeMetrics::add: the label is empty");
  if (!bridge) throw MetricsError("BridgeMetrics::add(\"" + label + "\"): the bridge is null");
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->bridges[label] = bridge;
}

bool BridgeMetrics::remove(const std::string& label) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->bridges.erase(label) > 0;
}

std::shared_ptr<::prometheus::Collectable> BridgeMetrics::collectable() const { return state_; }

std::string BridgeMetrics::scrape() const { return pm::TextSerializer().Serialize(state_->Collect()); }

bool BridgeMetrics::healthy(const nlohmann::json& bridge_health) {
  if (!bridge_health.is_object() || bridge_health.value("state", "") != "running") return false;
  const auto transport = bridge_health.find("transport");
  if (transport == bridge_health.end() || !transport->is_object()) return false;
  if (transport->value("state", "") != "started") return false;
  if (const auto connection = transport->find("connection");
      connection != transport->end() && connection->is_string() && *connection != "connected") {
    return false;
  }
  return true;
}

nlohmann::json BridgeMetrics::health() const {
  std::vector<std::pair<std::string, std::shared_ptr<Bridge>>> alive;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    for (const auto& [label, weak] : state_->bridges) {
      if (auto bridge = weak.lock()) alive.emplace_back(label, std::move(bridge));
    }
  }
  nlohmann::json bridges = nlohmann::json::object();
  bool all = !alive.empty();
  for (const auto& [label, bridge] : alive) {
    nlohmann::json health = bridge->health();
    all = all && healthy(health);
    bridges[label] = std::move(health);
  }
  return {{"healthy", all}, {"bridges", std::move(bridges)}};
}

}  // namespace notifications::prometheus
