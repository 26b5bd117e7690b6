// order_analytics: the sample's analytics service (analytics.hpp) as a process of its own, for a
// transport that connects processes. It instruments nothing: it receives the order events that
// order_service forwards through the transport, tallies them, and prints the tally when it stops.
//
// Usage: order_analytics [--seconds N] [--verbose]
//   --seconds N    stop after N seconds (default: run until SIGINT or SIGTERM)
//   --verbose, -v  log each remote order event as it arrives
//
// Configuration as order_service's (NOTIFICATIONS_URL, NOTIFICATIONS_CONFIG, NOTIFICATIONS_PREFIX,
// ...), except what makes it the analytics service: app "analytics", forward nothing, subscribe
// "order.>" (analytics::service_config). Start it before order_service: a transport without
// persistence keeps nothing for late subscribers. With memory:// it receives nothing, since that
// transport connects transports within one process (order_service then runs analytics itself).
//
// Exits 0 when stopped by a signal or the time limit, 2 on a bad argument or a configuration or
// transport error.
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <optional>
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
  std::fputs("usage: order_analytics [--seconds N] [--verbose]\n"
             "  --seconds N    stop after N seconds (default: until SIGINT or SIGTERM)\n"
             "  --verbose, -v  log each remote order event as it arrives\n",
             to);
}

// A whole number of seconds, 1 to one day; nullopt otherwise.
std::optional<int> parse_seconds(std::string_view text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 1 || value > 86400) {
    return std::nullopt;
  }
  return value;
}

// Waits for one of the signals in `signals` (which the calling thread, and every thread, must
// have blocked) or until `limit` passes, when given. Returns the signal's name, or "time limit".
const char* wait_for_stop(const sigset_t& signals, std::optional<std::chrono::seconds> limit) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = limit ? Clock::now() + *limit : Clock::time_point::max();
  while (true) {
    int received = -1;
    if (!limit) {
      received = sigwaitinfo(&signals, nullptr);
    } else {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) return "time limit";
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
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--verbose" || arg == "-v") {
      verbose = true;
    } else if (arg == "--seconds") {
      const char* value = i + 1 < argc ? argv[++i] : "";
      const std::optional<int> seconds = parse_seconds(value);
      if (!seconds) {
        std::fprintf(stderr, "order_analytics: --seconds expects a whole number from 1 to 86400, "
                             "got '%s'\n", value);
        return 2;
      }
      limit = std::chrono::seconds(*seconds);
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
    service.emplace(config);
  } catch (const notifications::ConfigError& e) {
    std::fprintf(stderr, "order_analytics: %s\n", e.what());
    return 2;
  } catch (const notifications::TransportError& e) {
    std::fprintf(stderr, "order_analytics: %s\n", e.what());
    return 2;
  }

  // Runs on the bridge's dispatcher thread; spdlog's default logger is thread-safe.
  const notifications::Subscription logging = service->notifier().subscribe(
      "order.>", [](const notifications::Event& event) {
        if (!spdlog::should_log(spdlog::level::debug)) return;
        spdlog::debug("{} from \"{}\"{}: {}", event.name(),
                      event.origin() ? event.origin()->producer : std::string("(local)"),
                      event.exception() ? " failed" : "", event.payload().dump());
      });

  spdlog::info("receiving order events via {} {}",
               notifications::redact_url(service->bridge().config().url),
               limit ? "for " + std::to_string(limit->count()) + " s" : "until SIGINT or SIGTERM");
  const char* reason = wait_for_stop(stop_signals, limit);

  service->shutdown();  // delivers what the transport already holds, then stops
  const analytics::OrderCounts counts = service->counts();
  spdlog::info("stopped ({}); analytics, from remote events of {}: {}", reason,
               analytics::producer_list(counts), analytics::describe(counts));
  spdlog::info("bridge {}", analytics::health_summary(service->bridge()));
  return 0;
}
