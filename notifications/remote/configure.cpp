// configure(), configure_routes(), configured_bridges() and shutdown(): the bridges this library
// attaches to the default notifier, one per route, kept in route order until shutdown().
//
// Thread-safety: every function may be called from any thread; the attached list is guarded by
// one mutex, never held while a bridge starts or shuts down. Concurrent configure calls each
// attach their routes; the last to finish stays attached, the others' bridges are shut down.
#include <algorithm>
#include <chrono>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transport.hpp"
#include "process/ids.hpp"
#include "process/log.hpp"
#include "process/thread_safety.hpp"

namespace notifications {

using detail::MutexLock;

namespace {

using Clock = std::chrono::steady_clock;
using Bridges = std::vector<std::shared_ptr<Bridge>>;

detail::Mutex attached_mutex;
Bridges attached NOTIFICATIONS_GUARDED_BY(attached_mutex);  // in route order

Bridges take_attached() {
  MutexLock lock(attached_mutex);
  return std::exchange(attached, {});
}

// Shuts `bridges` down in reverse order within one deadline, `timeout` from now, and adds their
// reports up: clean when every one is; detail lists each route's, in route order (with a single
// bridge, its own detail).
ShutdownReport shutdown_all(const Bridges& bridges, std::chrono::milliseconds timeout) {
  ShutdownReport total;
  if (bridges.empty()) {
    total.detail = "no bridge configured";
    return total;
  }
  const Clock::time_point deadline = Clock::now() + timeout;
  std::vector<ShutdownReport> reports(bridges.size());
  for (std::size_t i = bridges.size(); i-- > 0;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    reports[i] = bridges[i]->shutdown(std::max(left, std::chrono::milliseconds::zero()));
  }
  for (std::size_t i = 0; i < bridges.size(); ++i) {
    const ShutdownReport& report = reports[i];
    total.clean = total.clean && report.clean;
    total.sent += report.sent;
    total.confirmed += report.confirmed;
    total.undelivered += report.undelivered;
    total.inbound_undelivered += report.inbound_undelivered;
    total.durable_returned += report.durable_returned;
    total.durable_unfinished += report.durable_unfinished;
    if (bridges.size() == 1) {
      total.detail = report.detail;
    } else {
      if (i > 0) total.detail += "; ";
      total.detail += "route \"" + bridges[i]->config().name + "\": " + report.detail;
    }
  }
  return total;
}

void warn_unknown_variables() {
  for (const std::string& name : unknown_environment_variables()) {
    detail::log(detail::LogLevel::warn,
                "notifications: environment variable {} is not one this library reads (it reads "
                "NOTIFICATIONS_URL, NOTIFICATIONS_CONFIG, NOTIFICATIONS_APP, NOTIFICATIONS_PREFIX, "
                "NOTIFICATIONS_FORWARD, NOTIFICATIONS_SUBSCRIBE, NOTIFICATIONS_GROUP): a typo?",
                detail::wire_text(name, 80));
  }
}

std::string environment_reason() {
  const std::string source = environment_source();
  return source.empty() ? "the default: neither NOTIFICATIONS_URL nor NOTIFICATIONS_CONFIG is set"
                        : "from " + source;
}

// True when a route of `routes` names the outbox file of a bridge in `bridges`: that bridge must
// close the file before a new one opens it (one writer per database file).
bool shares_an_outbox_file(const std::vector<BridgeConfig>& routes, const Bridges& bridges) {
  for (const BridgeConfig& route : routes) {
    if (route.outbox.path.empty()) continue;
    const auto path = std::filesystem::path(route.outbox.path).lexically_normal();
    for (const auto& bridge : bridges) {
      const std::string& other = bridge->config().outbox.path;
      if (!other.empty() && std::filesystem::path(other).lexically_normal() == path) return true;
    }
  }
  return false;
}

}  // namespace

std::shared_ptr<Bridge> configure() {
  warn_unknown_variables();
  return configure_routes(routes_from_environment(), environment_reason()).front();
}

std::shared_ptr<Bridge> configure(BridgeConfig config) { return configure(std::move(config), "given in code"); }

std::shared_ptr<Bridge> configure(BridgeConfig config, const std::string& why) {
  std::vector<BridgeConfig> routes;
  routes.push_back(std::move(config));
  return configure_routes(std::move(routes), why).front();
}

std::vector<std::shared_ptr<Bridge>> configure_routes() {
  warn_unknown_variables();
  return configure_routes(routes_from_environment(), environment_reason());
}

std::vector<std::shared_ptr<Bridge>> configure_routes(std::vector<BridgeConfig> routes, const std::string& why) {
  if (routes.empty()) throw ConfigError("routes: expected at least one route, got none");
  for (std::size_t i = 0; i < routes.size(); ++i) {
    try {
      routes[i].validate();
    } catch (const ConfigError& e) {
      std::string_view reason = e.what();
      constexpr std::string_view kPrefix = "[notifications.config] ";
      if (reason.starts_with(kPrefix)) reason.remove_prefix(kPrefix.size());
      throw ConfigError("routes[" + std::to_string(i) + "]: " + std::string(reason));
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (routes[i].name == routes[j].name) {
        throw ConfigError("routes[" + std::to_string(i) + "]: the name \"" + routes[i].name +
                          "\" is also routes[" + std::to_string(j) + "]'s (route names must be distinct)");
      }
    }
  }
  {
    Bridges previous;
    {
      MutexLock lock(attached_mutex);
      if (shares_an_outbox_file(routes, attached)) previous = std::exchange(attached, {});
    }
    if (!previous.empty()) (void)shutdown_all(previous, std::chrono::seconds(5));
  }

  // One instance id for every route: a route never delivers what another route of this process
  // forwarded (echo suppression compares instance ids).
  BridgeHooks hooks;
  hooks.instance_id = detail::random_uuid();
  Bridges bridges;
  bridges.reserve(routes.size());
  for (BridgeConfig& route : routes) {
    TransportConfig transport_config{route.url, route.transport};
    bridges.push_back(std::make_shared<Bridge>(default_notifier(), make_transport(transport_config),
                                               std::move(route), hooks));
  }
  for (std::size_t i = 0; i < bridges.size(); ++i) {
    try {
      bridges[i]->start();
    } catch (...) {
      const Bridges started(bridges.begin(), bridges.begin() + static_cast<std::ptrdiff_t>(i));
      (void)shutdown_all(started, std::chrono::seconds(5));
      throw;
    }
    const BridgeConfig& config = bridges[i]->config();
    const std::string url = redact_url(config.url);
    const bool in_process = url.rfind("memory://", 0) == 0 || url.rfind("mock://", 0) == 0;
    detail::log(detail::LogLevel::info, "notifications: bridge \"{}\" route \"{}\" started on {} ({}){}",
                config.app, config.name, url, why,
                in_process ? "; events reach only bridges in this process" : "");
  }
  Bridges previous;
  {
    MutexLock lock(attached_mutex);
    previous = std::exchange(attached, bridges);
  }
  if (!previous.empty()) (void)shutdown_all(previous, std::chrono::seconds(5));
  return bridges;
}

std::vector<std::shared_ptr<Bridge>> configured_bridges() {
  MutexLock lock(attached_mutex);
  return attached;
}

ShutdownReport shutdown(std::chrono::milliseconds timeout) { return shutdown_all(take_attached(), timeout); }

}  // namespace notifications
