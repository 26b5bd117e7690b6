// `notifications dlq` (docs/cli.md).
#include "commands.hpp"

namespace notifications::cli {

void add_dlq_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  (void)options;
  app.add_subcommand("dlq", "not written yet")->callback([&exit_code] { exit_code = kFailed; });
}

}  // namespace notifications::cli
