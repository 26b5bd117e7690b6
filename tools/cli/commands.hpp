// The parts of the `notifications` command. main.cpp builds the CLI11 app and the options every
// command shares; each cmd_*.cpp adds one subcommand. docs/cli.md is the user's guide.
//
// Thread-safety: a command runs on the main thread; what it starts (a Bridge, its threads) it
// shuts down before its callback returns.
#pragma once

#include <signal.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "notifications/bridge.hpp"
#include "notifications/config.hpp"
#include "notifications/event.hpp"

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
  std::string route;   // --route: which route of a configuration that holds several (by name)
  bool verbose = false;  // --verbose: the library's own log lines from info up (default: warnings)
};

// The configuration a command works with: --url over --config over the environment, as the
// library's own configure() reads it. Throws ConfigError naming the bad key or value.
BridgeConfig resolve_config(const GlobalOptions& options);

// As resolve_config, for the commands that talk to a transport (tail, publish, health): also
// refuses memory:// and mock:// (they cross no process, so the command could see nothing) with a
// ConfigError saying to pass --url or set NOTIFICATIONS_URL.
BridgeConfig resolve_transport_config(const GlobalOptions& options);

// ---- Shared by the commands (support.cpp) ------------------------------------------------------

// Bad arguments the library does not check itself (a payload that is not JSON, a bad count):
// exit 2, the message printed as is.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The transport could not be reached (start() failed, no connection within the timeout): exit 3.
// The message names the URL without credentials.
class Unreachable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Sends the library's log lines to standard error as "[level] text" (never to standard output,
// which carries the command's own output), from warnings up (notifications/logging.hpp). Called by
// main() before parsing.
void set_up_logging();

// Runs a command's body and maps what it throws to an exit code, printing
// "notifications <command>: <message>" on standard error: UsageError, ConfigError, InvalidSubject,
// InvalidPattern and a TransportError raised while wiring a bridge -> kUsage; Unreachable ->
// kUnreachable; anything else -> kFailed. Applies options.verbose first.
int run_command(const std::string& command, const GlobalOptions& options, const std::function<int()>& body);

// A copy of `config` fit for a short-lived command's own bridge: no durable outbox (the file
// belongs to the application: one writer per file), overflow spill -> block, no consumer group
// (a tail must observe, never take events from the group's members), and the given patterns.
BridgeConfig command_bridge_config(BridgeConfig config, std::vector<std::string> forward,
                                   std::vector<std::string> subscribe);

// Wires and starts a bridge: a TransportError while wiring (bad URL or option) propagates (exit
// 2); one from start() becomes Unreachable naming the redacted URL.
std::unique_ptr<Bridge> start_bridge(Notifier& notifier, const BridgeConfig& config);

// Throws Unreachable (exit 3) when `config` names a sqlite:// file that does not exist: a command
// must not create it (the transport would), and what it sends there would reach no one.
void require_existing_file(const BridgeConfig& config);

// True when the bridge's transport reports a working connection: NATS "connected"; transports
// without a server (sqlite) once started.
bool transport_connected(const nlohmann::json& bridge_health);

// Waits (bounded by `timeout`) until transport_connected; false when the time passed first.
bool wait_connected(const Bridge& bridge, std::chrono::milliseconds timeout);

// Throws UsageError, naming the argument as `label`, for a pattern that is a URL (given in the
// wrong place: its text is not quoted, it may hold credentials) or not a valid subject pattern.
void check_pattern_argument(std::string_view label, const std::string& pattern);

// ---- Stopping ---------------------------------------------------------------------------------

// SIGINT and SIGTERM. The long-running commands (tail, serve) block them in the main thread
// before they make a bridge (whose threads inherit the mask) and take them there with
// sigtimedwait: no library thread is ever interrupted, and no handler runs.
sigset_t stop_signals();
// Waits up to `wait` for SIGINT or SIGTERM; true when one came.
bool stop_signal_within(std::chrono::milliseconds wait);

// ---- Output ---------------------------------------------------------------------------------

// "14:03:27.512": the local time of day, to the millisecond.
std::string local_time_ms(std::chrono::system_clock::time_point time);
// `text` with the credentials of every URL in it ("scheme://..." up to a blank or a quote)
// replaced by "***": the user-info up to the word's last '@', and secret query values
// (token=, password=, ...). For echoing arguments, which may be a URL given in the wrong place.
std::string without_credentials(std::string_view text);
// `text` without credentials (as without_credentials) and with bytes outside printable ASCII and
// UTF-8 (control characters) replaced by '?'.
std::string printable(std::string_view text);
// The compact JSON of `value`, cut to at most `width` bytes (0: whole) at a character boundary,
// ending in "..." when cut. Never throws on invalid UTF-8 (replaced).
std::string compact_json(const nlohmann::json& value, std::size_t width);
// An event as one JSON object: name, id, time (RFC 3339 UTC), duration_ms, producer,
// producer_instance, transport, payload, exception ({type, message} or null), traceparent.
nlohmann::json event_to_json(const Event& event);

// Each adds its subcommand to `app`; the subcommand's callback sets `exit_code` (an ExitCode).
void add_tail_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_publish_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_health_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_outbox_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
void add_dlq_command(CLI::App& app, const GlobalOptions& options, int& exit_code);
// Without notifications::prometheus, `serve` only says that it needs it.
void add_serve_command(CLI::App& app, const GlobalOptions& options, int& exit_code);

}  // namespace notifications::cli
