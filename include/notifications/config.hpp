// Bridge configuration: from code, from a JSON file named by NOTIFICATIONS_CONFIG, and from the
// environment (NOTIFICATIONS_URL and friends override the file).
//
// Thread-safety: BridgeConfig, RetryPolicy, RedeliveryPolicy and OutboxConfig are values, ConfigError an immutable exception; the loading functions are safe from any thread (they
// read the environment, which the program must not modify concurrently).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/errors.hpp"
#include "notifications/outbox.hpp"  // OverflowPolicy, Durability
#include "notifications/transport.hpp"  // StartPosition

namespace notifications {

// A configuration value was unknown, of the wrong type, or out of range. The message names the
// key, the value (credentials redacted) and what was expected.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& message) : Error("config", message) {}
};

struct RetryPolicy {
  std::chrono::milliseconds initial{50};
  std::chrono::milliseconds max{5000};
  double multiplier = 2.0;
  double jitter = 0.2;    // +-20% of each wait, at random
  int max_attempts = 0;   // 0: keep retrying until shutdown's deadline
};

// How a Bridge suppresses redeliveries (docs/bridge.md, "Redeliveries"): it remembers the
// Message::id of what it delivered, within a window bounded by time and by count (the oldest id
// is forgotten first), and a delivery of a remembered id is not delivered again: it is counted in
// health()["counters"]["redeliveries_suppressed"] (not as a drop, loss or sequence gap) and
// acknowledged where the transport has acknowledgements. Active only on transports that may
// deliver an id twice (TransportCapabilities::acknowledgements or persistent).
struct RedeliveryPolicy {
  // 0: the default, the longer of 2 minutes (JetStream's dedupe window) and the transport's
  // TransportCapabilities::dedupe_window. Otherwise 1 ms .. 1 day.
  std::chrono::milliseconds window{0};
  // Ids remembered at most, 0 .. 10000000; 0 turns suppression off.
  std::size_t window_count = 65536;
};

// The file where an outbox keeps events (durability async or sync, or overflow spill): a SQLite
// database in WAL mode, written by one connection of one process (a second process opening it
// is refused, naming the file). Needs the notifications::sqlite component (docs/outbox.md).
struct OutboxConfig {
  // WAL with synchronous=NORMAL survives a process crash (SIGKILL) with every committed event;
  // FULL also survives an OS crash or power loss, at a higher cost per commit.
  enum class Synchronous { normal, full };

  std::string path;  // the database file; its folder must exist. Empty: no file.
  Synchronous synchronous = Synchronous::normal;
  std::chrono::milliseconds busy_timeout{5000};  // waiting for another connection's lock, 0 .. 600000
  // The file's size bound in pages of 4096 bytes (PRAGMA max_page_count); 0: SQLite's default
  // (no practical bound). Past it, pushes are refused and counted; committed rows stay.
  std::size_t max_pages = 0;
};

struct BridgeConfig {
  // A route's name, for logs and health (routes_from_json names unnamed routes "route<N>").
  std::string name = "default";
  std::string url = "memory://";            // picks the transport by scheme
  std::string app = "app";                  // producer name in envelopes
  std::string prefix = "notifications";     // subjects are <prefix>.<event name>
  std::vector<std::string> forward{">"};    // local patterns sent to the transport
  std::vector<std::string> subscribe{">"};  // remote patterns received (subject patterns, no prefix)
  std::string group;                        // consumer group for subscribe; empty: every process gets every event
  // Where the subscriptions start reading, on transports that keep messages (their capabilities
  // say start_positions; others refuse anything but new_only when the bridge starts). A consumer
  // group that a persistent transport already knows resumes at its own position instead.
  StartPosition start = StartPosition::new_only();
  std::size_t queue_capacity = 65536;
  // Bytes the outbound queue may hold, and the inbound queue too, each (an event's name, payload
  // and headers as queued, plus a fixed per-item cost). Past it, events are refused as past
  // queue_capacity. 0: no byte bound.
  std::size_t queue_max_bytes = 64 * 1024 * 1024;
  OverflowPolicy overflow = OverflowPolicy::block;
  std::chrono::milliseconds block_timeout{100};
  std::size_t batch_size = 256;
  RetryPolicy retry;
  RedeliveryPolicy redelivery;
  // How accepted events are kept until the transport confirmed them (notifications/outbox.hpp).
  // async and sync, and overflow spill, need outbox.path.
  Durability durability = Durability::none;
  OutboxConfig outbox;
  nlohmann::json transport = nlohmann::json::object();  // transport-specific options
  // Payload keys whose values never leave the process (docs/configuration.md, "Payload
  // redaction"): before a forwarded event is serialised, the value of every payload member that
  // a rule matches becomes the string "[REDACTED]", so the wire, the outbox (memory or file) and
  // every log line or health() field see only that. Local subscribers see the payload as given.
  // A rule is 1 or more segments separated by single dots; a segment is 1 or more of ASCII
  // letters, digits, '_', '-' and '*' ('*': any run of bytes within one key). Letters match
  // ignoring ASCII case. A rule matches a member whose path of keys from the payload's top ends
  // with the rule's segments (array elements add no key): "password" matches that key at any
  // depth, "card.number" a "number" inside a "card" object at any depth, "*token*"
  // "access_token" and "TokenId". A matched value of any type (also an object or array) is
  // replaced whole; a redacted "traceparent" member is not sent as the traceparent either. At most
  // 256 rules of at most 256 bytes each. Empty: nothing is redacted, at no cost.
  std::vector<std::string> redact;

  // Validates every field; throws ConfigError naming the first bad key.
  void validate() const;
};

// Parses a JSON object. Unknown keys, wrong types and bad values throw ConfigError naming the
// key path (e.g. "retry.initial_ms"), the value and what was expected. Keys:
//   url, app, prefix, forward, subscribe, group, start ("new" | "all" | a UTC time
//   "2026-11-30T04:00:00Z" | {"sequence": N >= 1}), queue_capacity (1 .. 10000000),
//   queue_max_bytes (0: no byte bound, else 4096 .. 1099511627776 = 1 TiB),
//   overflow ("block" | "drop_newest" | "drop_oldest" | "spill"), block_timeout_ms, batch_size,
//   retry { initial_ms, max_ms, multiplier, jitter, max_attempts },
//   redelivery { window_ms (0: default, else 1 .. 86400000), window_count (0: off .. 10000000) },
//   durability ("none" | "async" | "sync"),
//   outbox { path (non-empty), synchronous ("normal" | "full"), busy_timeout_ms (0 .. 600000),
//            max_pages (0: SQLite's default, else 1 .. 2147483647) },
//   transport { ... }, name (a subject token),
//   redact (an array of rules, see BridgeConfig::redact; errors name the rule, "redact[2]")
// durability async or sync, and overflow spill, need outbox.path; an outbox.path that neither
// uses is refused too (it would suggest a durability the configuration does not have).
// A "routes" key is refused here (several bridges): read such a configuration with
// routes_from_json().
BridgeConfig config_from_json(const nlohmann::json& json);

// A configuration of one or more routes. Without "routes", the object is one route. With
// "routes": [ {...}, ... ] (1 to 256 elements), each element is a route: the keys outside "routes" are defaults that
// each route's own keys replace (whole values: a route's "forward" replaces the default list, its
// "retry" object replaces the default object). Errors name the route ("routes[1].forward[0]").
// Routes get distinct names ("route<N>" when unnamed, N its position from 1; a repeated name is
// an error) and distinct outbox files (two routes naming one outbox.path, compared lexically
// normalised, is an error). "name" outside "routes" is refused; an empty "routes" array too. The
// defaults are read on their own first, so that a wrong type or range there names the top-level
// key; rules that span keys (url, patterns, outbox.path) are checked per route. An event that matches the forward
// patterns of several routes is forwarded by each of them.
std::vector<BridgeConfig> routes_from_json(const nlohmann::json& json);
std::vector<BridgeConfig> routes_from_text(std::string_view text, std::string_view source = "config");
// As config_from_environment(), for a file that may hold routes. The environment variables
// (NOTIFICATIONS_URL and friends) override a single route; with several routes they are refused
// (ConfigError naming the variable), as they could not say which route they mean.
std::vector<BridgeConfig> routes_from_environment();
// Parses JSON text; a syntax error is a ConfigError naming `source` and the position.
BridgeConfig config_from_text(std::string_view text, std::string_view source = "config");

// Defaults, then the file named by NOTIFICATIONS_CONFIG (if set), then the environment:
// NOTIFICATIONS_URL, NOTIFICATIONS_APP, NOTIFICATIONS_PREFIX, NOTIFICATIONS_FORWARD and
// NOTIFICATIONS_SUBSCRIBE (comma-separated patterns), NOTIFICATIONS_GROUP, NOTIFICATIONS_START
// ("new", "all" or a UTC time, as the "start" key), NOTIFICATIONS_REDACT (comma-separated
// rules, as the "redact" key; replaces the file's list).
BridgeConfig config_from_environment();

std::string to_string(OverflowPolicy policy);
// "new", "all", "2026-11-30T04:00:00Z" (whole seconds, UTC) or "sequence N".
std::string to_string(const StartPosition& start);
std::string to_string(Durability durability);
std::string to_string(OutboxConfig::Synchronous synchronous);

// Names of environment variables that look like this library's (they start with
// "NOTIFICATION", in any case) but that config_from_environment() does not read: typos such as
// NOTIFICATION_URL. configure() warns about each.
std::vector<std::string> unknown_environment_variables();
// Where config_from_environment() takes the URL from: "NOTIFICATIONS_URL",
// "NOTIFICATIONS_CONFIG (<path>)", or "" when neither is set (the default, memory://).
std::string environment_source();

}  // namespace notifications
