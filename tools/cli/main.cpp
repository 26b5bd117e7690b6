// `notifications`: see and drive a bus from a shell (docs/cli.md).
#include <exception>
#include <iostream>
#include <sstream>
#include <string>

#include "commands.hpp"

namespace {

// The first argument that is neither an option nor the value of a shared option: the command's
// name. CLI11 alone would only say "A subcommand is required" for a misspelt one.
std::string first_word(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--url" || arg == "--config" || arg == "--route") {
      ++i;
      continue;
    }
    if (!arg.empty() && arg[0] == '-') continue;
    return arg;
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  using namespace notifications::cli;
  CLI::App app{"notifications: see and drive a notifications bus from a shell", "notifications"};
  app.require_subcommand(1);
  // Subcommands made after this inherit it: the shared options below are accepted after the
  // subcommand's name too ("notifications tail --url nats://...").
  app.fallthrough();
  app.footer(
      "Exit codes: 0 ok, 1 failed, 2 bad arguments or configuration, 3 transport unreachable, "
      "4 not found.\nThe URL comes from --url, else --config, else NOTIFICATIONS_URL / "
      "NOTIFICATIONS_CONFIG. docs/cli.md has the details.");
  GlobalOptions options;
  app.add_option("--url", options.url, "transport URL (nats://, tls://, sqlite://, ...)");
  app.add_option("--config", options.config, "JSON configuration file, as NOTIFICATIONS_CONFIG");
  app.add_option("--route", options.route, "the route to use when the configuration holds several");
  app.add_flag("--json", options.json, "output for scripts: JSON instead of text");
  app.add_flag("--verbose", options.verbose, "the library's log lines from info up (on stderr)");
  int exit_code = kOk;
  add_tail_command(app, options, exit_code);
  add_publish_command(app, options, exit_code);
  add_health_command(app, options, exit_code);
  add_outbox_command(app, options, exit_code);
  add_dlq_command(app, options, exit_code);
  add_serve_command(app, options, exit_code);
  const std::string word = first_word(argc, argv);
  const CLI::App& commands = app;
  bool known = false;
  std::string names;
  for (const CLI::App* command : commands.get_subcommands([](const CLI::App*) { return true; })) {
    known = known || command->check_name(word);
    names += (names.empty() ? "" : ", ") + command->get_name();
  }
  if (!word.empty() && !known) {
    std::cerr << "notifications: unknown command \"" << printable(word) << "\" (the commands: " << names
              << "; see notifications --help)\n";
    return kUsage;
  }
  try {
    set_up_logging();
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11's messages echo arguments, which may be a URL with credentials given in the wrong place.
    std::ostringstream out;
    std::ostringstream err;
    const int code = app.exit(e, out, err);
    std::cout << out.str();
    std::cerr << without_credentials(err.str());
    return code == 0 ? kOk : kUsage;
  } catch (const std::exception& e) {
    std::cerr << "notifications: " << without_credentials(e.what()) << "\n";
    return kFailed;
  }
  return exit_code;
}
