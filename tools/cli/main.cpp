// `notifications`: see and drive a bus from a shell (docs/cli.md).
#include <exception>
#include <iostream>

#include "commands.hpp"

int main(int argc, char** argv) {
  using namespace notifications::cli;
  CLI::App app{"notifications: see and drive a notifications bus from a shell", "notifications"};
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 ok, 1 failed, 2 bad arguments or configuration, 3 transport unreachable, "
      "4 not found.\nThe URL comes from --url, else --config, else NOTIFICATIONS_URL / "
      "NOTIFICATIONS_CONFIG.");
  GlobalOptions options;
  app.add_option("--url", options.url, "transport URL (nats://, tls://, sqlite://, ...)");
  app.add_option("--config", options.config, "JSON configuration file, as NOTIFICATIONS_CONFIG");
  app.add_flag("--json", options.json, "output for scripts: JSON instead of text");
  int exit_code = kOk;
  add_tail_command(app, options, exit_code);
  add_publish_command(app, options, exit_code);
  add_health_command(app, options, exit_code);
  add_outbox_command(app, options, exit_code);
  add_dlq_command(app, options, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kOk : kUsage;
  } catch (const std::exception& e) {
    std::cerr << "notifications: " << e.what() << "\n";
    return kFailed;
  }
  return exit_code;
}
