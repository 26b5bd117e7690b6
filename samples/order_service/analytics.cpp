#include "analytics.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <optional>
#include <utility>

#include <notifications/transport.hpp>

namespace analytics {

namespace {

using nlohmann::json;

// The payload's integer `key`, if it has one.
std::optional<std::int64_t> integer_member(const json& payload, const char* key) {
  if (!payload.is_object()) return std::nullopt;
  const auto it = payload.find(key);
  if (it == payload.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<std::int64_t>();
}

std::uint64_t counter(const json& counters, const char* key) {
  const auto it = counters.find(key);
  return it != counters.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

}  // namespace

std::string format_cents(std::int64_t cents) {
  const bool negative = cents < 0;
  // Through unsigned, so that the most negative value has a magnitude too.
  const std::uint64_t magnitude =
      negative ? 0 - static_cast<std::uint64_t>(cents) : static_cast<std::uint64_t>(cents);
  char text[32];
  std::snprintf(text, sizeof text, "%s%llu.%02llu", negative ? "-" : "",
                static_cast<unsigned long long>(magnitude / 100),
                static_cast<unsigned long long>(magnitude % 100));
  return text;
}

std::string describe(const OrderCounts& counts) {
  std::string text = std::to_string(counts.placed) + " placed, " + std::to_string(counts.shipped) +
                     " shipped, " + std::to_string(counts.declined) + " declined, " +
                     std::to_string(counts.out_of_stock) + " out of stock; revenue " +
                     format_cents(counts.revenue_cents);
  if (counts.unpriced != 0) text += "; " + std::to_string(counts.unpriced) + " without total_cents";
  return text;
}

std::string producer_list(const OrderCounts& counts) {
  std::string list;
  for (const auto& entry : counts.producers) {
    list += (list.empty() ? "\"" : ", \"") + entry.first + "\"";
  }
  return list.empty() ? "nobody" : list;
}

// ---- OrderTally ---------------------------------------------------------------------------------

void OrderTally::record(const notifications::Event& event) {
  if (!event.remote()) return;
  const std::string_view name = event.name();
  const bool failed = event.exception().has_value();
  std::lock_guard lock(mutex_);
  if (name == "order.placed") {
    ++counts_.placed;
    if (!failed) {
      if (const auto total = integer_member(event.payload(), "total_cents")) {
        counts_.revenue_cents += *total;
      } else {
        ++counts_.unpriced;
      }
    }
  } else if (name == "order.shipped") {
    if (failed) return;
    ++counts_.shipped;
  } else if (name == "order.payment.charged") {
    if (!failed) return;
    ++counts_.declined;
  } else if (name == "order.stock.reserved") {
    if (!failed) return;
    ++counts_.out_of_stock;
  } else {
    return;
  }
  ++counts_.producers[event.origin()->producer];
}

OrderCounts OrderTally::counts() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

// ---- Service ------------------------------------------------------------------------------------

notifications::BridgeConfig service_config(notifications::BridgeConfig base) {
  base.app = "analytics";
  base.forward = {};
  base.subscribe = {"order.>"};
  base.group.clear();
  return base;
}

Service::Service(const notifications::BridgeConfig& base) : tally_(std::make_shared<OrderTally>()) {
  notifications::BridgeConfig config = service_config(base);
  config.validate();  // before creating a transport, so a bad config is reported as such
  subscription_ = notifier_.subscribe(
      "order.>", [tally = tally_](const notifications::Event& event) { tally->record(event); });
  std::shared_ptr<notifications::Transport> transport =
      notifications::make_transport(notifications::TransportConfig{config.url, config.transport});
  bridge_ = std::make_unique<notifications::Bridge>(notifier_, std::move(transport),
                                                    std::move(config));
  bridge_->start();
}

notifications::ShutdownReport Service::shutdown(std::chrono::milliseconds timeout) {
  return bridge_->shutdown(timeout);
}

// ---- helpers ------------------------------------------------------------------------------------

std::string health_summary(const notifications::Bridge& bridge) {
  const json health = bridge.health();
  const json& counters = health.at("counters");
  std::uint64_t dropped = 0;
  std::string reasons;
  for (const auto& [reason, count] : counters.at("dropped").items()) {
    const std::uint64_t n = count.is_number_unsigned() ? count.get<std::uint64_t>() : 0;
    if (n == 0) continue;
    dropped += n;
    reasons += (reasons.empty() ? "" : ", ") + reason + " " + std::to_string(n);
  }
  std::string line = "\"" + health.value("app", std::string()) + "\" via " +
                     health.value("url", std::string()) + ": accepted " +
                     std::to_string(counter(counters, "accepted")) + ", sent " +
                     std::to_string(counter(counters, "sent")) + ", dropped " +
                     std::to_string(dropped);
  if (!reasons.empty()) line += " (" + reasons + ")";
  line += ", received " + std::to_string(counter(counters, "received"));
  return line;
}

bool in_process_only(std::string_view url) {
  const std::size_t colon = url.find(':');
  if (colon == std::string_view::npos) return false;
  std::string scheme(url.substr(0, colon));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return scheme == "memory";
}

}  // namespace analytics
