// The configuration every command resolves from --url, --config and the environment.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "notifications/transport.hpp"

namespace notifications::cli {

namespace {

std::string read_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError("--config \"" + path + "\": cannot read it (" + std::strerror(errno) +
                      "): give the path of a JSON configuration file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string route_names(const std::vector<BridgeConfig>& routes) {
  std::string names;
  for (const BridgeConfig& route : routes) names += (names.empty() ? "" : ", ") + route.name;
  return names;
}

// The route --route names, or the only one.
BridgeConfig pick_route(std::vector<BridgeConfig> routes, const std::string& wanted, const std::string& source) {
  if (!wanted.empty()) {
    for (BridgeConfig& route : routes) {
      if (route.name == wanted) return std::move(route);
    }
    throw ConfigError("--route \"" + wanted + "\": " + source + " has no such route (it has: " +
                      route_names(routes) + ")");
  }
  if (routes.size() > 1) {
    throw ConfigError(source + " holds " + std::to_string(routes.size()) + " routes (" + route_names(routes) +
                      "): pick one with --route NAME");
  }
  return std::move(routes.front());
}

std::string scheme_of(const std::string& url) {
  const auto colon = url.find("://");
  return colon == std::string::npos ? std::string() : url.substr(0, colon);
}

}  // namespace

BridgeConfig resolve_config(const GlobalOptions& options) {
  BridgeConfig config;
  if (!options.config.empty()) {
    config = pick_route(routes_from_text(read_config_file(options.config), options.config),
                        options.route, "--config \"" + options.config + "\"");
  } else {
    config = pick_route(routes_from_environment(), options.route, "NOTIFICATIONS_CONFIG");
  }
  if (!options.url.empty()) config.url = options.url;
  return config;
}

BridgeConfig resolve_transport_config(const GlobalOptions& options) {
  BridgeConfig config = resolve_config(options);
  const std::string scheme = scheme_of(config.url);
  if (scheme == "memory" || scheme == "mock") {
    std::string from = "--url";
    if (options.url.empty()) {
      from = !options.config.empty() ? "--config \"" + options.config + "\"" : environment_source();
      if (from.empty()) from = "the default, as neither --url, --config, NOTIFICATIONS_URL nor NOTIFICATIONS_CONFIG is set";
    }
    throw ConfigError("the transport URL is \"" + redact_url(config.url) + "\" (from " + from +
                      "), which crosses no process, so this command could reach no other program: pass "
                      "--url (nats://HOST:4222, tls://HOST:4222 or sqlite:///PATH/events.db) or set "
                      "NOTIFICATIONS_URL");
  }
  return config;
}

}  // namespace notifications::cli
