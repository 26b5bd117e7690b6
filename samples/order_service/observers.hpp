// Observers of the order service, added the way a user adds them to existing code: by subscribing
// to its events on the default notifier, without touching the service or its callers.
//
// Each function returns the Subscription; the observer stays subscribed while it is kept.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <notifications/notifications.hpp>
#include <spdlog/spdlog.h>

namespace observers {

// Logs every event under "order." through `logger` at debug level, one line each: name, duration
// in ms, payload, and the exception the block threw, if any. Costs one level check per event
// while the logger filters debug.
// Thread-safety: the listener runs on whichever threads instrument, concurrently; `logger` must be
// a thread-safe (_mt) logger.
notifications::Subscription log_order_events(std::shared_ptr<spdlog::logger> logger);

// Count, error count and latency distribution per event name.
// Thread-safety: record() and rows() may be called concurrently from any number of threads.
class LatencySummary {
 public:
  struct Row {
    std::string name;
    std::uint64_t count = 0;
    std::uint64_t errors = 0;  // events whose block threw
    double mean_us = 0;
    double p50_us = 0;  // nearest-rank percentiles
    double p99_us = 0;
    double max_us = 0;
  };

  void record(const notifications::Event& event);
  // One row per event name recorded so far, sorted by name.
  std::vector<Row> rows() const;

 private:
  struct Samples {
    std::vector<double> durations_us;
    std::uint64_t errors = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::string, Samples, std::less<>> by_name_;  // guarded by mutex_
};

// Subscribes `summary` to every event of the default notifier.
// Thread-safety: the listener runs on whichever threads instrument, concurrently; it only calls
// summary->record().
notifications::Subscription summarize_all_events(std::shared_ptr<LatencySummary> summary);

// Logs `rows` as an aligned table, one info line per row after a header.
// Thread-safety: as `logger`.
void log_table(spdlog::logger& logger, const std::vector<LatencySummary::Row>& rows);

}  // namespace observers
