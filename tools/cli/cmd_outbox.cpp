// `notifications outbox` (docs/cli.md).
#include "commands.hpp"

namespace notifications::cli {

void add_outbox_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  (void)options;
  app.add_subcommand("outbox", "not written yet")->callback([&exit_code] { exit_code = kFailed; });
}

}  // namespace notifications::cli
