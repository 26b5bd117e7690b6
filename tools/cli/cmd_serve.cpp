// `notifications serve --http ADDR` (docs/cli.md): receives the events other programs publish, as
// tail does, and serves them over HTTP: GET /events (Server-Sent Events, EventStream), GET / (a
// page that shows them in a browser), GET /metrics and GET /health (the bridge's, as
// notifications::prometheus serves them).
//
// Threads: the bridge's threads receive and dispatch the events to the EventStream, whose threads
// hand them to the HTTP server's (civetweb) threads, one per connected client. The main thread
// blocks SIGINT and SIGTERM before any of them starts (they inherit the mask), waits for one with
// sigtimedwait, then shuts down in reverse order: the stream (its clients get the "shutdown"
// event), the server, the bridge.
//
// Built only with notifications::prometheus (NOTIFICATIONS_CLI_SERVE); without it the command is
// still listed and says what it needs.
#include <memory>
#include <string>

#include "commands.hpp"

#if NOTIFICATIONS_CLI_SERVE
#include <arpa/inet.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "notifications/event_stream.hpp"
#include "notifications/notifier.hpp"
#include "notifications/prometheus.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/sqlite.hpp"
#include "notifications/transport.hpp"
#endif

namespace notifications::cli {

namespace {

struct ServeArgs {
  std::string http;
  std::string pattern = ">";
  std::string token;
  bool allow_non_loopback = false;
  std::size_t max_connections = 100;
  std::size_t replay = 10000;
  double heartbeat_seconds = 15;
};

#if NOTIFICATIONS_CLI_SERVE

struct HttpAddress {
  std::string host;  // numeric, without brackets
  std::uint16_t port = 0;
  bool loopback = false;
};

// "HOST:PORT" with a numeric IPv4 host, or "[IPv6]:PORT"; port 0 lets the system choose.
HttpAddress parse_http_address(const std::string& text) {
  const std::string shown = "--http \"" + printable(text) + "\"";
  const std::string form = " (expected HOST:PORT with a numeric address, e.g. 127.0.0.1:8080 or [::1]:8080; port 0: any free port)";
  HttpAddress address;
  std::string port_text;
  bool bracketed = false;
  if (!text.empty() && text[0] == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      throw UsageError(shown + ": no ']:PORT' after the IPv6 address" + form);
    }
    address.host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
    bracketed = true;
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string::npos) throw UsageError(shown + ": no port" + form);
    address.host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (address.host.find(':') != std::string::npos) {
      throw UsageError(shown + ": an IPv6 address goes in brackets" + form);
    }
  }
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port_text) > 65535) {
    throw UsageError(shown + ": the port must be a number from 0 to 65535" + form);
  }
  address.port = static_cast<std::uint16_t>(std::stoul(port_text));
  unsigned char bytes[16];
  if (!bracketed && ::inet_pton(AF_INET, address.host.c_str(), bytes) == 1) {
    address.loopback = bytes[0] == 127;
  } else if (bracketed && ::inet_pton(AF_INET6, address.host.c_str(), bytes) == 1) {
    static const unsigned char kLoopback6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    address.loopback = std::equal(bytes, bytes + 16, kLoopback6);
  } else {
    throw UsageError(shown + ": \"" + printable(address.host) + "\" is not a numeric " +
                     (bracketed ? "IPv6" : "IPv4") + " address" + form);
  }
  return address;
}

int serve(const GlobalOptions& options, const ServeArgs& args) {
  check_pattern_argument("--pattern", args.pattern);
  const HttpAddress address = parse_http_address(args.http);
  if (!address.loopback && !args.allow_non_loopback) {
    throw UsageError("--http " + printable(args.http) +
                     ": not a loopback address; events name hosts, users and errors, so serving them elsewhere "
                     "needs --allow-non-loopback and --token");
  }
  if (!address.loopback && args.token.empty()) {
    throw UsageError("--http " + printable(args.http) + ": serving events on an address that is not loopback needs --token");
  }
  for (const char c : args.token) {  // never echoed
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= 0x20 || byte >= 0x7f) {
      throw UsageError("--token: only printable ASCII without spaces (it travels in a header and a URL)");
    }
  }
  const BridgeConfig config = command_bridge_config(resolve_transport_config(options), {}, {args.pattern});

  EventStreamOptions stream_options;
  stream_options.pattern = Pattern(args.pattern);
  stream_options.max_connections = args.max_connections;
  stream_options.replay_events = args.replay;
  stream_options.heartbeat_interval = std::chrono::milliseconds(static_cast<long long>(args.heartbeat_seconds * 1000));
  stream_options.redact = config.redact;  // what the configuration keeps off the wire stays off the page
  stream_options.producer = config.app;
  if (config.url.rfind("sqlite://", 0) == 0) {
    // A browser further behind than the ring, or one that saw an earlier run of this command,
    // is replayed from the file (docs/event_stream.md, "Further back: a history").
    stream_options.history =
        make_sqlite_event_history(sqlite_options_from_config(TransportConfig{config.url, config.transport}).path,
                                  config.prefix);
  }
  stream_options.validate();  // ConfigError naming the option: exit 2

  const sigset_t blocked = stop_signals();
  ::pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
  Notifier notifier;
  auto events = std::make_shared<EventStream>(notifier, stream_options);
  std::shared_ptr<Bridge> bridge = start_bridge(notifier, config);
  // Subscribed once a flush returned (as tail): events published after the "serving" line are
  // received. Retried while a transport that connects in the background has not connected yet.
  bool stopped = false;
  bool subscribed = false;
  while (!subscribed && !stopped) {
    subscribed = bridge->flush(std::chrono::milliseconds(250));
    stopped = stop_signal_within(std::chrono::milliseconds(0));
  }
  if (!subscribed) {
    bridge->shutdown(std::chrono::milliseconds(1000));
    return kOk;
  }
  auto metrics = std::make_shared<prometheus::BridgeMetrics>();
  metrics->add("serve", bridge);
  events->start();
  std::unique_ptr<prometheus::MetricsServer> server;
  try {
    prometheus::MetricsServerOptions server_options;
    server_options.address = address.host;
    server_options.port = address.port;
    server_options.allow_non_loopback = args.allow_non_loopback;
    server_options.events = events;
    server_options.bearer_token = args.token;
    server = std::make_unique<prometheus::MetricsServer>(metrics, server_options);
  } catch (...) {
    events->shutdown(std::chrono::milliseconds(1000));
    bridge->shutdown(std::chrono::milliseconds(1000));
    throw;  // a port in use: exit 1, naming the address
  }
  const std::string line = "serving " + server->url() + "/ (events at /events)\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);

  while (!stop_signal_within(std::chrono::milliseconds(1000))) {
  }
  events->shutdown(std::chrono::milliseconds(2000));
  server.reset();
  metrics->remove("serve");
  bridge->shutdown(std::chrono::milliseconds(2000));
  return kOk;
}

#endif  // NOTIFICATIONS_CLI_SERVE

}  // namespace

void add_serve_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* command = app.add_subcommand(
      "serve", "serve the events other programs publish over HTTP: /events (Server-Sent Events), / (a page), "
               "/metrics and /health (Ctrl-C ends)");
#if NOTIFICATIONS_CLI_SERVE
  command->add_option("--http", args->http, "HOST:PORT to listen on, numeric (127.0.0.1:8080, [::1]:8080; port 0: any free port)")
      ->required();
  command->add_option("--pattern", args->pattern,
                      "event names to serve: a name, or wildcards ('*' one token, '>' the rest; default '>': every event)");
  command->add_option("--token", args->token,
                      "a bearer token every request must carry (Authorization: Bearer, or ?access_token= in the page's URL)");
  command->add_flag("--allow-non-loopback", args->allow_non_loopback,
                    "listen on an address other than loopback (needs --token)");
  command->add_option("--max-connections", args->max_connections, "event-stream clients at most (default 100)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{10000}));
  command->add_option("--replay", args->replay, "events kept for clients that reconnect (default 10000; 0: none)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{10000000}));
  command->add_option("--heartbeat", args->heartbeat_seconds, "seconds between heartbeats of a quiet stream (default 15)")
      ->check(CLI::Range(0.1, 3600.0));
  command->callback([&options, &exit_code, args] {
    exit_code = run_command("serve", options, [&] { return serve(options, *args); });
  });
#else
  command->allow_extras();
  command->callback([&options, &exit_code] {
    exit_code = run_command("serve", options, []() -> int {
      throw UsageError(
          "this build has no HTTP server: serve needs the notifications::prometheus component "
          "(prometheus-cpp; Debian: prometheus-cpp-dev), then rebuild");
    });
  });
#endif
}

}  // namespace notifications::cli
