#include "observers.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <utility>

namespace observers {

namespace {

// Nearest-rank percentile `p` (0-100] of `sorted`, which is ascending and non-empty.
double percentile(const std::vector<double>& sorted, double p) {
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

notifications::Subscription log_order_events(std::shared_ptr<spdlog::logger> logger) {
  return notifications::subscribe("order.>", [logger](const notifications::Event& event) {
    if (!logger->should_log(spdlog::level::debug)) return;
    const auto& failure = event.exception();
    if (!failure) {
      logger->debug("{} {:.3f} ms {}", event.name(), event.duration_ms(), event.payload().dump());
      return;
    }
    // The library also records the exception in the payload; it is shown once, at the end.
    nlohmann::json payload = event.payload();
    if (payload.is_object()) payload.erase("exception");
    logger->debug("{} {:.3f} ms {} failed: {}: {}", event.name(), event.duration_ms(),
                  payload.dump(), failure->type, failure->message);
  });
}

void LatencySummary::record(const notifications::Event& event) {
  const double us = std::chrono::duration<double, std::micro>(event.duration()).count();
  std::lock_guard lock(mutex_);
  auto it = by_name_.find(event.name());
  if (it == by_name_.end()) it = by_name_.emplace(std::string(event.name()), Samples{}).first;
  it->second.durations_us.push_back(us);
  if (event.exception()) ++it->second.errors;
}

std::vector<LatencySummary::Row> LatencySummary::rows() const {
  std::map<std::string, Samples, std::less<>> copy;
  {
    std::lock_guard lock(mutex_);
    copy = by_name_;
  }
  std::vector<Row> rows;
  for (auto& [name, samples] : copy) {
    std::vector<double>& d = samples.durations_us;
    if (d.empty()) continue;
    std::sort(d.begin(), d.end());
    rows.push_back(Row{name, d.size(), samples.errors,
                       std::accumulate(d.begin(), d.end(), 0.0) / static_cast<double>(d.size()),
                       percentile(d, 50), percentile(d, 99), d.back()});
  }
  return rows;
}

notifications::Subscription summarize_all_events(std::shared_ptr<LatencySummary> summary) {
  return notifications::subscribe(
      [summary](const notifications::Event& event) { summary->record(event); });
}

void log_table(spdlog::logger& logger, const std::vector<LatencySummary::Row>& rows) {
  std::size_t width = 5;  // "event"
  for (const auto& row : rows) width = std::max(width, row.name.size());
  logger.info("{:<{}} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}", "event", width, "count", "errors",
              "mean us", "p50 us", "p99 us", "max us");
  for (const auto& row : rows) {
    logger.info("{:<{}} {:>6} {:>6} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f}", row.name, width,
                row.count, row.errors, row.mean_us, row.p50_us, row.p99_us, row.max_us);
  }
}

}  // namespace observers
