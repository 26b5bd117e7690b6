// The sample's second service: "analytics". It never calls the order service and shares no
// memory with it; it learns what happened only from the order events that reach it through the
// configured transport, as remote events (Event::remote(), Event::origin()) on its own notifier.
//
// It runs inside order_service when the transport is memory:// (which connects transports within
// one process), and as its own process, order_analytics, for a networked transport.
//
// It reads the events by their documented names and payloads (order_service.hpp), not by C++
// types, as a service written in another language would:
//   order.placed           every order attempt; on success its payload has total_cents
//   order.shipped          a shipment (succeeded)
//   order.payment.charged  failed: the card was declined
//   order.stock.reserved   failed: a line item was out of stock
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <notifications/bridge.hpp>
#include <notifications/config.hpp>
#include <notifications/notifications.hpp>

namespace analytics {

// What the analytics service has learnt about orders, from remote events only.
// Thread-safety: a plain value.
struct OrderCounts {
  std::uint64_t placed = 0;        // order.placed events, whatever their outcome
  std::uint64_t shipped = 0;       // order.shipped events without an exception
  std::uint64_t declined = 0;      // order.payment.charged events with an exception
  std::uint64_t out_of_stock = 0;  // order.stock.reserved events with an exception
  std::int64_t revenue_cents = 0;  // sum of total_cents of order.placed events without exception
  std::uint64_t unpriced = 0;      // successful order.placed events lacking an integer total_cents
  std::map<std::string, std::uint64_t> producers;  // events counted, by origin()->producer
  // Deliveries not counted because their event was counted already (OrderTally::keep_in only):
  // events redelivered after a restart that the process before it had counted.
  std::uint64_t already_counted = 0;

  // Compares the order figures only (not unpriced, producers or already_counted).
  bool same_orders(const OrderCounts& other) const noexcept {
    return placed == other.placed && shipped == other.shipped && declined == other.declined &&
           out_of_stock == other.out_of_stock && revenue_cents == other.revenue_cents;
  }
};

// "200 placed, 174 shipped, 14 declined, 12 out of stock; revenue 14278.00", plus
// "; N without total_cents" when unpriced is not zero.
std::string describe(const OrderCounts& counts);
// The producers of `counts`: `"order_service"`, `"a", "b"`, or `nobody`.
std::string producer_list(const OrderCounts& counts);
// "14278.00" for 1427800. Negative amounts get a leading '-'.
std::string format_cents(std::int64_t cents);

// Counts remote order events into an OrderCounts.
// Thread-safety: record() and counts() may be called concurrently from any number of threads;
// keep_in() before any of them.
class OrderTally {
 public:
  OrderTally() = default;
  ~OrderTally();
  OrderTally(const OrderTally&) = delete;
  OrderTally& operator=(const OrderTally&) = delete;

  // Keeps the tally in the file `path` too, so that a process killed in the middle (SIGKILL
  // included) and started again goes on from where it stopped: counts the events the file lists
  // (a torn last line, from a kill during its write, is cut off), then appends one line per event
  // counted from now on, written before record() returns, hence before the bridge acknowledges
  // the delivery. An event whose id() is already counted (a redelivery of one counted just before
  // a kill, not yet acknowledged) is not counted again. Throws std::runtime_error naming the file
  // when it cannot be read or written, or a line is not one this class wrote.
  void keep_in(const std::string& path);
  // Counts `event` when it is remote and one of the names above; ignores anything else (local
  // events included: this tally is about what crossed the transport). Never throws for an
  // unexpected payload; it is counted as unpriced when it matters. A failed write to the file of
  // keep_in() is reported once on stderr; the event is still counted.
  void record(const notifications::Event& event);
  // A snapshot of everything recorded so far.
  OrderCounts counts() const;

 private:
  // Adds one counted event, `outcome` as in the file of keep_in(): for order.placed "failed",
  // "unpriced" or its total_cents, "-" for the other names. Requires mutex_ held.
  void count(std::string_view name, std::string_view outcome, const std::string& producer);

  mutable std::mutex mutex_;
  OrderCounts counts_;              // guarded by mutex_
  std::FILE* file_ = nullptr;       // keep_in()'s file, appended to under mutex_
  std::string path_;                // keep_in()'s path
  std::set<std::string> ids_;       // ids of the events counted, only with keep_in(); guarded by mutex_
  bool write_failed_ = false;       // guarded by mutex_
};

// The analytics service's bridge configuration, derived from `base` (the order service's, or
// the environment's): the same url, prefix, transport options, queue and retry settings; its
// own identity and interest: app "analytics", forward nothing, subscribe "order.>", and no
// consumer group (each analytics instance must see every order event to tally them all).
notifications::BridgeConfig service_config(notifications::BridgeConfig base);

// How one analytics process differs from the default (order_analytics' --group and --tally).
// Thread-safety: a plain value.
struct ServiceOptions {
  // The subscription's consumer group (BridgeConfig::group); empty: none. On sqlite:// the
  // group's position is stored in the file, so a service started again resumes after what the
  // last one acknowledged, and what was published while none ran is waiting for it.
  std::string group;
  // The file the tally is also kept in (OrderTally::keep_in); empty: memory only.
  std::string tally_file;
};

// The receiving side: a notifier of its own, a tally subscribed to it, and a bridge that
// publishes the order events arriving through the transport onto it.
//
// Lifecycle: the constructor creates the transport (make_transport(TransportConfig{config.url,
// config.transport})) and starts the bridge, so events published from then on reach it (the
// memory transport keeps nothing for late subscribers). shutdown() delivers everything the
// transport already holds, then stops; counts() is final after it. The destructor shuts down.
//
// Thread-safety: every member may be called from any thread, concurrently. Listeners added to
// notifier() run on the bridge's dispatcher thread, one event at a time.
class Service {
 public:
  // `base` goes through service_config(), then takes options.group. Throws
  // notifications::ConfigError or TransportError, and std::runtime_error for the tally file.
  explicit Service(const notifications::BridgeConfig& base, const ServiceOptions& options = {});
  ~Service() = default;  // the bridge goes first and shuts down (5 s) if shutdown() was not called
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Idempotent; later calls return the first report.
  notifications::ShutdownReport shutdown(
      std::chrono::milliseconds timeout = std::chrono::seconds(5));

  OrderCounts counts() const { return tally_->counts(); }
  notifications::Notifier& notifier() noexcept { return notifier_; }
  const notifications::Bridge& bridge() const noexcept { return *bridge_; }

 private:
  // Destroyed in reverse: the bridge (which uses the notifier) first.
  notifications::Notifier notifier_;
  std::shared_ptr<OrderTally> tally_;
  notifications::Subscription subscription_;
  std::unique_ptr<notifications::Bridge> bridge_;
};

// One line from a bridge's health(): `"analytics" via memory://: accepted 0, sent 0, dropped 0,
// received 1193` (its app name, URL and counters), with the non-zero drop reasons in
// parentheses after "dropped N".
// Thread-safety: as Bridge::health().
std::string health_summary(const notifications::Bridge& bridge);

// True when `url` names the memory transport, which reaches only transports in this process.
bool in_process_only(std::string_view url);

}  // namespace analytics
