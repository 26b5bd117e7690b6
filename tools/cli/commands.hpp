// The parts of the `notifications` command. main.cpp builds the CLI11 app and the options every
// command shares; each cmd_*.cpp adds one subcommand. docs/cli.md is the user's guide.
//
// Thread-safety: a command runs on the main thread; what it starts (a Bridge, its threads) it
// shuts down before its callback returns.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "notifications/config.hpp"

namespace notifications::cli {

// The command's exit codes (also in `notifications --help` and docs/cli.md).
enum ExitCode : int {
  kOk = 0,
  kFailed = 1,       // the command ran and what it did failed (a publish not confirmed, ...)
  kUsage = 2,        // bad arguments or configuration: the message names what to fix
  kUnreachable = 3,  // the transport could not be reached (server down, file missing)
  kNotFound = 4,     // the outbox row or dead letter named does not exist
};

// What every command takes.
struct GlobalOptions {
  std::string url;     // --url: a transport URL, as NOTIFICATIONS_URL
  std::string config;  // --config: a JSON configuration file, as NOTIFICATIONS_CONFIG
  bool json = false;   // --json: output for scripts (one JSON document, or one per line for streams)
};

// The configuration a command works with: --url over --config over the environment, as the
// library's own configure() reads it. Throws ConfigError naming the bad key or value.
BridgeConfig resolve_config(const GlobalOptions& options);

// Each adds its subcommand to `app`; the subcommand's callback sets `exit_code` (an ExitCode).
void add_tail_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_publish_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_health_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_outbox_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_dlq_command(CLI::App& app, const GlobalOptions& options, int& exit_code);

}  // namespace notifications::cli
