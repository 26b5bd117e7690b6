// order_service: an existing multi-threaded program, instrumented without changing its callers.
//
// run_business() is the program as it was before anyone observed it: it stocks an inventory,
// places orders from worker threads and tallies the outcomes. It knows nothing of notifications;
// the instrumentation lives inside OrderService's function bodies. main() adds the observers
// (the block marked below) and prints their summary at exit.
//
// Remote delivery: main() also adds notifications::configure() (the transport comes from
// NOTIFICATIONS_URL and friends; default memory://) and notifications::shutdown() at the end, so
// the same events reach a second service, "analytics" (analytics.hpp), through the transport.
// With memory://, which connects transports within one process, analytics runs in this process
// and its tally of the remote events is checked against the local outcome; for any other
// transport it is a separate process, order_analytics, and nothing is checked here: the program
// logs what analytics should count ("order_analytics ... should count: ..."), which
// scripts/run-sample.sh compares with what order_analytics reports.
//
// Usage: order_service [--delay-ms N] [--verbose]
//   --delay-ms N   each worker pauses N ms after each order (default 0): the same orders, spread
//                  over time (scripts/run-sample.sh stops and restarts the listener meanwhile)
//   --verbose, -v  log each order event (spdlog debug level) as it finishes
//
// Deterministic: fixed seeds, so the same orders, outcomes and counts on every run; only the
// timings (and the bridges' instance ids) vary. Exits 0 on success, 1 when the in-process
// analytics tally differs from the local outcome, 2 on a bad argument or a configuration or
// transport error.
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include <notifications/bridge.hpp>

#include "analytics.hpp"
#include "observers.hpp"
#include "order_service.hpp"

namespace {

using order_service::Inventory;
using order_service::LineItem;
using order_service::Order;
using order_service::OrderService;

constexpr int kThreads = 4;
constexpr int kOrdersPerThread = 50;
constexpr std::uint32_t kSeed = 42;

struct Outcome {
  int shipped = 0;
  int declined = 0;
  int out_of_stock = 0;
  std::int64_t revenue_cents = 0;

  Outcome& operator+=(const Outcome& other) {
    shipped += other.shipped;
    declined += other.declined;
    out_of_stock += other.out_of_stock;
    revenue_cents += other.revenue_cents;
    return *this;
  }
};

// One to three lines of regular products; now and then a sold-out poster (never in stock) and a
// card that the issuer declines.
Order make_order(std::mt19937& rng, std::uint64_t id) {
  static constexpr std::array<const char*, 6> kCustomers{"ada", "brian", "grace",
                                                         "ken",  "linus", "margaret"};
  static constexpr std::array<const char*, 5> kSkus{"mug", "t-shirt", "hoodie", "stickers",
                                                    "notebook"};
  std::uniform_int_distribution<std::size_t> customer(0, kCustomers.size() - 1);
  std::uniform_int_distribution<std::size_t> sku(0, kSkus.size() - 1);
  std::uniform_int_distribution<int> lines(1, 3);
  std::uniform_int_distribution<int> quantity(1, 3);
  std::bernoulli_distribution sold_out_poster(0.04);
  std::bernoulli_distribution declined_card(0.08);

  Order order;
  order.id = id;
  order.customer = kCustomers[customer(rng)];
  order.card_number = declined_card(rng) ? "4000000000000002" : "4242424242424242";
  for (int n = lines(rng); n > 0; --n) order.items.push_back(LineItem{kSkus[sku(rng)], quantity(rng)});
  if (sold_out_poster(rng)) order.items.push_back(LineItem{"signed-poster", 1});
  return order;
}

Outcome run_worker(OrderService& service, int worker, std::chrono::milliseconds delay) {
  std::mt19937 rng(kSeed + static_cast<std::uint32_t>(worker));
  Outcome outcome;
  for (int i = 0; i < kOrdersPerThread; ++i) {
    if (i > 0 && delay.count() > 0) std::this_thread::sleep_for(delay);
    const Order order = make_order(rng, static_cast<std::uint64_t>(worker * kOrdersPerThread + i + 1));
    try {
      const order_service::Receipt receipt = service.place_order(order);
      ++outcome.shipped;
      outcome.revenue_cents += receipt.total_cents;
    } catch (const order_service::PaymentDeclined&) {
      ++outcome.declined;
    } catch (const order_service::OutOfStock&) {
      ++outcome.out_of_stock;
    }
  }
  return outcome;
}

// The business: kThreads workers placing kOrdersPerThread orders each against one inventory.
// Stock of the regular products exceeds any demand the seeds produce, so outcomes do not depend
// on how the threads interleave.
Outcome run_business(std::chrono::milliseconds delay) {
  Inventory inventory({{"mug", {1200, 1000}},
                       {"t-shirt", {2500, 1000}},
                       {"hoodie", {5500, 1000}},
                       {"stickers", {400, 1000}},
                       {"notebook", {900, 1000}},
                       {"signed-poster", {15000, 0}}});
  OrderService service(inventory);
  std::vector<Outcome> outcomes(kThreads);
  {
    std::vector<std::jthread> workers;
    for (int w = 0; w < kThreads; ++w) {
      workers.emplace_back([&service, &outcomes, w, delay] {
        outcomes[static_cast<std::size_t>(w)] = run_worker(service, w, delay);
      });
    }
  }  // joins
  Outcome total;
  for (const Outcome& outcome : outcomes) total += outcome;
  return total;
}

// The outcome in the analytics service's terms: every order was placed once.
analytics::OrderCounts as_counts(const Outcome& outcome) {
  analytics::OrderCounts counts;
  counts.shipped = static_cast<std::uint64_t>(outcome.shipped);
  counts.declined = static_cast<std::uint64_t>(outcome.declined);
  counts.out_of_stock = static_cast<std::uint64_t>(outcome.out_of_stock);
  counts.placed = counts.shipped + counts.declined + counts.out_of_stock;
  counts.revenue_cents = outcome.revenue_cents;
  return counts;
}

// Shuts the in-process analytics service down (so that it has counted everything the transport
// delivered; the order service's bridge must be shut down first), logs its tally next to the
// local outcome and returns whether they agree.
bool check_remote_tally(analytics::Service& service, const Outcome& outcome) {
  service.shutdown();
  const analytics::OrderCounts remote = service.counts();
  const analytics::OrderCounts local = as_counts(outcome);
  if (remote.same_orders(local)) {
    spdlog::info("analytics, from remote events of {}: {}: matches the local outcome",
                 analytics::producer_list(remote), analytics::describe(remote));
    return true;
  }
  spdlog::error("analytics, from remote events of {}: {}", analytics::producer_list(remote),
                analytics::describe(remote));
  spdlog::error("which differs from the local outcome: {}", analytics::describe(local));
  return false;
}

void print_usage(std::FILE* to) {
  std::fputs("usage: order_service [--delay-ms N] [--verbose]\n"
             "  --delay-ms N   each worker pauses N ms after each order (0 to 10000; default 0)\n"
             "  --verbose, -v  log each order event as it finishes\n",
             to);
}

}  // namespace

int main(int argc, char** argv) try {
  bool verbose = false;
  std::chrono::milliseconds delay{0};
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--verbose" || arg == "-v") {
      verbose = true;
    } else if (arg == "--delay-ms") {
      const std::string_view value = i + 1 < argc ? argv[++i] : "";
      int ms = -1;
      const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), ms);
      if (error != std::errc() || end != value.data() + value.size() || ms < 0 || ms > 10000) {
        std::fprintf(stderr, "order_service: --delay-ms expects a whole number from 0 to 10000, got '%s'\n",
                     std::string(value).c_str());
        return 2;
      }
      delay = std::chrono::milliseconds(ms);
    } else if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "order_service: unknown argument '%s'\n", argv[i]);
      print_usage(stderr);
      return 2;
    }
  }
  spdlog::set_pattern("[%l] %v");
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);

  // ---- Added to observe the service; nothing else in the program changed. ----
  auto summary = std::make_shared<observers::LatencySummary>();
  const notifications::Subscription logging = observers::log_order_events(spdlog::default_logger());
  const notifications::Subscription summarizing = observers::summarize_all_events(summary);
  // ----

  // ---- Added for remote delivery: this line, and shutdown() at the end. ----
  auto bridge = notifications::configure();  // NOTIFICATIONS_URL etc.; default memory://
  // ----

  // The second service, when the transport cannot reach another process. It subscribes before
  // any order is placed: the memory transport keeps nothing for late subscribers.
  std::optional<analytics::Service> in_process_analytics;
  if (analytics::in_process_only(bridge->config().url)) {
    in_process_analytics.emplace(bridge->config());
  }

  spdlog::info("placing {} orders on {} threads (seed {})", kThreads * kOrdersPerThread, kThreads,
               kSeed);
  const auto started = std::chrono::steady_clock::now();
  const Outcome outcome = run_business(delay);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  spdlog::info("{} shipped, {} declined, {} out of stock; revenue {}.{:02}; {} ms",
               outcome.shipped, outcome.declined, outcome.out_of_stock,
               outcome.revenue_cents / 100, outcome.revenue_cents % 100,
               std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count());

  observers::log_table(*spdlog::default_logger(), summary->rows());

  notifications::shutdown();  // drains what was accepted, then closes
  bool agreed = true;
  if (in_process_analytics) {
    agreed = check_remote_tally(*in_process_analytics, outcome);
  } else {
    spdlog::info("analytics: not in this process; run order_analytics with the same "
                 "NOTIFICATIONS_URL to receive these events");
    spdlog::info("order_analytics, from remote events of \"{}\", should count: {}", bridge->config().app,
                 analytics::describe(as_counts(outcome)));
  }
  spdlog::info("bridge {}", analytics::health_summary(*bridge));
  return agreed ? 0 : 1;
} catch (const notifications::ConfigError& e) {
  notifications::shutdown();
  std::fprintf(stderr, "order_service: %s\n", e.what());
  return 2;
} catch (const notifications::TransportError& e) {
  notifications::shutdown();
  std::fprintf(stderr, "order_service: %s\n", e.what());
  return 2;
}
