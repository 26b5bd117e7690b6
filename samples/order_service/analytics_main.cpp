// order_analytics: the sample's analytics service (analytics.hpp) as a process of its own, for a
// transport that connects processes. It instruments nothing: it receives the order events that
// order_service forwards through the transport, tallies them, and prints the tally when it stops.
//
// Usage: order_analytics [--seconds N] [--orders N] [--group NAME] [--tally FILE] [--verbose]
//   --seconds N    stop after N seconds (default: run until SIGINT or SIGTERM)
//   --orders N     stop once N orders (order.placed events) are counted and no event arrived for
//                  0.5 s (those that came before the last order's are in; stragglers get the
//                  half second)
//   --group NAME   subscribe as a member of the consumer group NAME: on sqlite:// its position
//                  is kept in the file, so a restarted order_analytics resumes where the last one
//                  stopped acknowledging, and gets what was published while none ran
//   --tally FILE   keep the tally in FILE too (analytics::OrderTally::keep_in): a restart, after a
//                  SIGKILL too, goes on counting from it; an event redelivered after the kill is
//                  not counted twice
//   --verbose, -v  log each remote order event as it arrives
//
// Configuration as order_service's (NOTIFICATIONS_URL, NOTIFICATIONS_CONFIG, NOTIFICATIONS_PREFIX,
// ...), except what makes it the analytics service: app "analytics", forward nothing, subscribe
// "order.>" (analytics::service_config). Start it before order_service: a transport without
// persistence keeps nothing for late subscribers (on sqlite:// a new consumer group starts after
// the last event already in the file). With memory:// it receives nothing, since that transport
// connects transports within one process (order_service then runs analytics itself).
// scripts/run-sample.sh runs it over sqlite:// with --group, --tally and --orders, and kills it
// in the middle.
//
// Exits 0 when stopped by a signal, the time limit or --orders, 2 on a bad argument, a
// configuration or transport error, or a tally file it cannot use.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <pthread.h>
#include <signal.h>

#include <notifications/bridge.hpp>
#include <notifications/config.hpp>
#include <notifications/transport.hpp>
#include <spdlog/spdlog.h>

#include "analytics.hpp"

namespace {

void print_usage(std::FILE* to) {
  std::fputs("usage: order_analytics [--seconds N] [--orders N] [--group NAME] [--tally FILE] [--verbose]\n"
             "  --seconds N    stop after N seconds (default: until SIGINT or SIGTERM)\n"
             "  --orders N     stop once N orders are counted and nothing arrived for 0.5 s\n"
             "  --group NAME   subscribe in the consumer group NAME (sqlite://: position kept in the file)\n"
             "  --tally FILE   keep the tally in FILE too; a restart goes on from it\n"
             "  --verbose, -v  log each remote order event as it arrives\n",
             to);
}

// A whole number from 1 to `max`; nullopt otherwise.
std::optional<int> parse_count(std::string_view text, int max) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 1 || value > max) {
    return std::nullopt;
  }
  return value;
}

// Waits for one of the signals in `signals` (which the calling thread, and every thread, must
// have blocked), until `limit` passes, when given, or until `done`, when given, returns true
// (asked every 100 ms). Returns the signal's name, "time limit" or "done".
const char* wait_for_stop(const sigset_t& signals, std::optional<std::chrono::seconds> limit,
                          const std::function<bool()>& done) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = limit ? Clock::now() + *limit : Clock::time_point::max();
  while (true) {
    int received = -1;
    if (done && done()) return "done";
    if (!limit && !done) {
      received = sigwaitinfo(&signals, nullptr);
    } else {
      auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) return "time limit";
      if (done) left = std::min<Clock::duration>(left, std::chrono::milliseconds(100));
      const auto secs = std::chrono::duration_cast<std::chrono::seconds>(left);
      timespec timeout{};
      timeout.tv_sec = static_cast<std::time_t>(secs.count());
      timeout.tv_nsec = static_cast<long>(std::chrono::nanoseconds(left - secs).count());
      received = sigtimedwait(&signals, nullptr, &timeout);
    }
    if (received == SIGINT) return "SIGINT";
    if (received == SIGTERM) return "SIGTERM";
    // -1: EINTR (another signal's handler ran) or EAGAIN (the time limit); the loop checks.
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<std::chrono::seconds> limit;
  std::optional<int> orders;
  analytics::ServiceOptions options;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--verbose" || arg == "-v") {
      verbose = true;
    } else if (arg == "--seconds") {
      const char* value = i + 1 < argc ? argv[++i] : "";
      const std::optional<int> seconds = parse_count(value, 86400);
      if (!seconds) {
        std::fprintf(stderr, "order_analytics: --seconds expects a whole number from 1 to 86400, "
                             "got '%s'\n", value);
        return 2;
      }
      limit = std::chrono::seconds(*seconds);
    } else if (arg == "--orders") {
      const char* value = i + 1 < argc ? argv[++i] : "";
      orders = parse_count(value, 1000000000);
      if (!orders) {
        std::fprintf(stderr, "order_analytics: --orders expects a whole number from 1 to 1000000000, "
                             "got '%s'\n", value);
        return 2;
      }
    } else if (arg == "--group" || arg == "--tally") {
      const char* value = i + 1 < argc ? argv[++i] : "";
      if (*value == '\0') {
        std::fprintf(stderr, "order_analytics: %s expects a value\n", argv[i - 1]);
        return 2;
      }
      (arg == "--group" ? options.group : options.tally_file) = value;
    } else if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "order_analytics: unknown argument '%s'\n", argv[i]);
      print_usage(stderr);
      return 2;
    }
  }
  spdlog::set_pattern("[%l] %v");
  spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);

  // Block the stop signals before any thread starts, so that every thread inherits the mask and
  // only wait_for_stop() receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (const int error = pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr); error != 0) {
    std::fprintf(stderr, "order_analytics: cannot block SIGINT and SIGTERM (error %d)\n", error);
    return 2;
  }

  std::optional<analytics::Service> service;
  try {
    const notifications::BridgeConfig config = notifications::config_from_environment();
    if (analytics::in_process_only(config.url)) {
      spdlog::warn("{} connects transports within one process only: this process will receive "
                   "nothing from order_service, which runs analytics itself for this URL",
                   notifications::redact_url(config.url));
    }
    service.emplace(config, options);
  } catch (const notifications::ConfigError& e) {
    std::fprintf(stderr, "order_analytics: %s\n", e.what());
    return 2;
  } catch (const notifications::TransportError& e) {
    std::fprintf(stderr, "order_analytics: %s\n", e.what());
    return 2;
  } catch (const std::runtime_error& e) {  // the tally file
    std::fprintf(stderr, "order_analytics: %s\n", e.what());
    return 2;
  }
  if (!options.tally_file.empty()) {
    spdlog::info("tally kept in {}; counted before this start: {}", options.tally_file,
                 analytics::describe(service->counts()));
  }

  // When the last order event arrived (steady clock ticks), for --orders.
  std::atomic<std::int64_t> last_arrival{std::chrono::steady_clock::now().time_since_epoch().count()};
  // Runs on the bridge's dispatcher thread; spdlog's default logger is thread-safe.
  const notifications::Subscription logging = service->notifier().subscribe(
      "order.>", [&last_arrival](const notifications::Event& event) {
        last_arrival.store(std::chrono::steady_clock::now().time_since_epoch().count());
        if (!spdlog::should_log(spdlog::level::debug)) return;
        spdlog::debug("{} from \"{}\"{}: {}", event.name(),
                      event.origin() ? event.origin()->producer : std::string("(local)"),
                      event.exception() ? " failed" : "", event.payload().dump());
      });

  spdlog::info("receiving order events via {}{} {}{}",
               notifications::redact_url(service->bridge().config().url),
               options.group.empty() ? "" : " in consumer group \"" + options.group + "\"",
               orders ? "until " + std::to_string(*orders) + " orders are counted, " : "",
               limit ? "for " + std::to_string(limit->count()) + " s at most" : "until SIGINT or SIGTERM");
  std::function<bool()> done;
  if (orders) {
    done = [&] {
      using Clock = std::chrono::steady_clock;
      const Clock::time_point last{Clock::duration(last_arrival.load())};
      return service->counts().placed >= static_cast<std::uint64_t>(*orders) &&
             Clock::now() - last >= std::chrono::milliseconds(500);
    };
  }
  const char* reason = wait_for_stop(stop_signals, limit, done);
  if (std::string_view(reason) == "done") reason = "orders counted";

  service->shutdown();  // delivers what the transport already holds, then stops
  const analytics::OrderCounts counts = service->counts();
  spdlog::info("stopped ({}); analytics, from remote events of {}: {}", reason,
               analytics::producer_list(counts), analytics::describe(counts));
  if (!options.tally_file.empty()) {
    spdlog::info("deliveries of events already in the tally (redelivered after a restart), not counted "
                 "again: {}", counts.already_counted);
  }
  spdlog::info("bridge {}", analytics::health_summary(service->bridge()));
  return 0;
}
