// `notifications health` (docs/cli.md).
#include "commands.hpp"

namespace notifications::cli {

void add_health_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  (void)options;
  app.add_subcommand("health", "not written yet")->callback([&exit_code] { exit_code = kFailed; });
}

}  // namespace notifications::cli
