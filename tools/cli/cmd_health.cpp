// `notifications health` (docs/cli.md): connects as a program would, with its configuration, and
// reports whether the transport is reachable: a connection and a round trip (NATS: a PING the
// server answered), or the file opened (sqlite://). Opens no file that does not exist.
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transport.hpp"
#include "notifications/transports/sqlite.hpp"

namespace notifications::cli {

namespace {

struct HealthArgs {
  double timeout_seconds = 5.0;
};

std::string text_of(const nlohmann::json& value) {
  return value.is_string() ? value.get<std::string>() : value.dump();
}

void print_human(const BridgeConfig& config, const nlohmann::json& health, bool ok) {
  const nlohmann::json transport = health.value("transport", nlohmann::json::object());
  const auto row = [](const std::string& key, const std::string& value) {
    std::cout << std::left << std::setw(16) << key << value << "\n";
  };
  row("status", ok ? "ok" : "unreachable");
  row("url", redact_url(config.url));
  row("transport", text_of(transport.value("kind", nlohmann::json("?"))) + " (" +
                       text_of(transport.value("state", nlohmann::json("?"))) + ")");
  for (const char* key : {"connection", "server", "max_payload", "reconnects", "path", "last_sequence", "poll_errors"}) {
    if (transport.contains(key)) row(key, text_of(transport[key]));
  }
  row("app", config.app);
  row("prefix", config.prefix);
  if (transport.contains("last_error") && !text_of(transport["last_error"]).empty()) {
    row("last_error", text_of(transport["last_error"]));
  }
  std::cout.flush();
}

int health(const GlobalOptions& options, const HealthArgs& args) {
  const BridgeConfig config = command_bridge_config(resolve_transport_config(options), {}, {});
  require_existing_file(config);
  const auto timeout = std::chrono::milliseconds(static_cast<long long>(args.timeout_seconds * 1000));
  Notifier notifier;
  std::unique_ptr<Bridge> bridge = start_bridge(notifier, config);
  const auto started = std::chrono::steady_clock::now();
  bool ok = wait_connected(*bridge, timeout);
  if (ok) {
    const auto left = timeout - std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    ok = bridge->flush(std::max(left, std::chrono::milliseconds(100)));  // a round trip with the server
  }
  const nlohmann::json health = bridge->health();
  bridge->shutdown(std::chrono::milliseconds(1000));
  if (options.json) {
    const nlohmann::json out{{"ok", ok}, {"url", redact_url(config.url)}, {"health", health}};
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    print_human(config, health, ok);
  }
  if (!ok) {
    throw Unreachable("no working connection to " + redact_url(config.url) + " within " +
                      std::to_string(args.timeout_seconds) + " s");
  }
  return kOk;
}

}  // namespace

void add_health_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  auto args = std::make_shared<HealthArgs>();
  CLI::App* command = app.add_subcommand(
      "health", "connect with the configuration and report the transport's health; exit 0 when it is reachable, 3 when not");
  command->add_option("--timeout", args->timeout_seconds, "seconds to wait for a connection and a round trip (default 5)")
      ->check(CLI::Range(0.001, 3600.0));
  command->callback([&options, &exit_code, args] {
    exit_code = run_command("health", options, [&] { return health(options, *args); });
  });
}

}  // namespace notifications::cli
