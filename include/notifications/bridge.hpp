// Bridge: carries a Notifier's events to other processes through a Transport, and delivers
// theirs to it as remote events. Application code keeps calling instrument(); only
// configuration decides where events go.
//
//   outbound: instrumenting thread -> forward listener (puts the event, its payload
//             serialised, into the outbox: a bounded in-memory queue unless BridgeHooks::outbox
//             gives another; never waits on the network) -> sender thread (takes a batch,
//             encodes envelopes, publishes, settles what the transport confirmed; a transient
//             failure releases the rest, which is retried with backoff, keeping order)
//   inbound:  transport thread (only enqueues) -> dispatcher thread (decodes, publishes onto the
//             Notifier as a remote event)
//
// A process never receives its own forwarded events back, and never forwards a remote event.
//
// Lifecycle: the constructor wires everything and starts no thread; start() connects and starts
// the threads; shutdown(timeout) stops accepting, drains the outbound queue, flushes the
// transport, lets it hand over what its subscriptions hold, stops the dispatcher and closes, in
// that order. Every event accepted before shutdown() is delivered, or counted and logged as
// dropped by reason when the deadline passes first; events after it are refused and counted.
//
// Thread-safety: every member may be called from any thread, concurrently, including from
// listeners of remote events (shutdown() called on the dispatcher thread does not wait for that
// thread). The destructor shuts down (5 s) if shutdown() was not called. BridgeHooks and
// ShutdownReport are values; the hooks themselves run on the threads their comments name.
//
// Ending the process: a started bridge that was not shut down is shut down by the library's exit
// hook when the process exits (a return from main, std::exit from any thread) or terminates (an
// exception escaping main), within 2 s, with a warning; shutdown_on_signals()
// (notifications/signals.hpp) does the same for SIGTERM and SIGINT. In a child forked without
// prepare_fork()/after_fork() (notifications/fork.hpp) the bridge refuses every event (counted as
// dropped "forked_child", said once on stderr, health()["state"] "forked_child") and never
// blocks.
//
// Deadlines: shutdown(timeout) returns within the timeout plus about 100 ms whatever the
// transport and the listeners do; a listener still running then is left to finish on the
// dispatcher thread (which keeps the bridge's state alive; the Notifier must outlive shutdown())
// and what was not delivered is counted in the report.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/config.hpp"
#include "notifications/durable.hpp"
#include "notifications/metrics.hpp"
#include "notifications/notifier.hpp"
#include "notifications/outbox.hpp"
#include "notifications/transport.hpp"

namespace notifications {

// Collaborators of a Bridge besides its notifier and transport; all optional.
struct BridgeHooks {
  // Receives every inbound message that could not be decoded, with the reason and the headers it
  // arrived with. Runs on the dispatcher thread; must not throw (exceptions are caught and
  // counted). Setting it makes the Bridge read every message's headers (on NATS, a noticeable
  // cost per message: docs/benchmarks.md).
  std::function<void(const Message& message, std::string_view reason)> dead_letter;
  // This process's instance id in envelopes; default: a random UUID.
  std::string instance_id{};
  // Where accepted events wait until the transport confirmed them (notifications/outbox.hpp);
  // default (null): make_memory_outbox(config.queue_capacity, config.queue_max_bytes,
  // config.batch_size). An outbox serves one Bridge; the Bridge applies config.overflow and
  // config.block_timeout to its push() calls, while its bounds are its own.
  std::shared_ptr<Outbox> outbox = nullptr;
  // Told of each published event, remote delivery and durable handler call, with its latency
  // (notifications/metrics.hpp), on the bridge's own threads; null (default): nothing is timed.
  std::shared_ptr<BridgeObserver> observer = nullptr;
};

// What shutdown() did.
struct ShutdownReport {
  // Everything accepted was confirmed by the transport, nothing received was left undelivered
  // (durable_unfinished included), and every thread returned in time.
  bool clean = true;
  std::uint64_t sent = 0;       // handed to the transport over the bridge's life
  // Of those, covered by a successful transport flush (NATS: a round trip with the server after
  // they were written): what is known to have left the process. Events that a transport only
  // buffered (cnats' reconnect buffer during an outage) are sent but not confirmed.
  std::uint64_t confirmed = 0;
  // Left in a durable outbox's file (BridgeConfig::durability, overflow spill) for the next
  // start, which sends them first: not lost, not undelivered. Includes events an earlier run left
  // that this one did not get to send.
  std::uint64_t kept = 0;
  // Accepted but neither confirmed nor kept (deadline, errors, only buffered).
  std::uint64_t undelivered = 0;
  // Received from the transport but not delivered to local listeners: discarded at the deadline,
  // or left with a listener that had not returned by then.
  std::uint64_t inbound_undelivered = 0;
  // Durable handlers (subscribe_durable): deliveries given back to the transport for redelivery
  // (not lost), and events not handled: calls still running at the deadline (left to finish on
  // their threads) and local retries a transport without acknowledgements cannot redeliver.
  std::uint64_t durable_returned = 0;
  std::uint64_t durable_unfinished = 0;
  std::string detail;           // human-readable summary
};

class Bridge {
 public:
  // Validates `config` (throws ConfigError) and wires the bridge; starts nothing.
  Bridge(Notifier& notifier, std::shared_ptr<Transport> transport, BridgeConfig config,
         BridgeHooks hooks = {});
  ~Bridge();
  Bridge(const Bridge&) = delete;
  Bridge& operator=(const Bridge&) = delete;

  // Starts the transport, subscribes to the remote patterns, starts the sender and dispatcher
  // threads, and then starts forwarding. Throws TransportError when the transport cannot start.
  // Idempotent; refused (TransportError) after shutdown.
  void start();

  // Waits until every event accepted so far was handed to the transport and the transport
  // flushed it (counted as confirmed). False when `timeout` passed first, or when the transport
  // could not confirm what it was handed (NATS: written to a connection that broke since; without
  // a durable outbox those events may be lost, and receivers count them). For tests and orderly
  // hand-offs.
  bool flush(std::chrono::milliseconds timeout);

  // Waits until every message the transport handed this bridge so far was delivered to local
  // listeners (or counted as dropped or malformed). False when `timeout` passed first. With two
  // bridges in one process, sender.flush() then receiver.wait_delivered() is the point where a
  // test's listeners have seen everything.
  bool wait_delivered(std::chrono::milliseconds timeout);

  // See the lifecycle above. Idempotent: later calls return the first report.
  ShutdownReport shutdown(std::chrono::milliseconds timeout = std::chrono::seconds(5));

  // Durable handlers (notifications/durable.hpp, docs/durable.md): registers handler `name` (one
  // subject token, unique in this bridge) for remote events whose names match `pattern` (subject
  // pattern syntax, as BridgeConfig::subscribe; the bridge's prefix is added). It gets its own
  // transport subscription (consumer group or durable consumer named `name`), its own threads, and
  // every matching event, including those this process forwarded. Before start() it subscribes at
  // start(); after, at once. Throws DurableError naming a bad name, pattern or option, a repeated
  // name, an option the transport cannot honour, or a call after shutdown() began; TransportError
  // when the transport refuses the subscription. shutdown() stops the handlers first: no new
  // deliveries, the running call finishes within the deadline, what waits goes back to the
  // transport (naked) or, without acknowledgements, is counted as lost_at_shutdown.
  void subscribe_durable(const std::string& name, const std::string& pattern, DurableHandler handler,
                         DurableOptions options = {});
  // The store of handler `name`, to list, show and purge its dead letters. Throws DurableError
  // when no such handler was registered.
  std::shared_ptr<DurableStore> durable_store(const std::string& name) const;
  // Runs handler `name` again for its dead letter `id`, on its threads; true once the handler
  // succeeded and the letter is gone (false: it failed again, and the letter says so; or the
  // handler is not running; or `timeout` passed, the replay then going on). Throws DurableError
  // for an unknown handler or letter, or a letter of another handler.
  bool replay_dead_letter(const std::string& name, std::uint64_t id,
                          std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // {"state", "instance_id", "app", "transport": {...}, "queue": {"depth", "capacity", "lag_ms", ...},
  //  "inbound_queue": {...}, "counters": {"accepted", "sent", "failed", "retried", "replayed", "received",
  //  "malformed", "echo_suppressed", "lost", "sequence_resets", "redeliveries_suppressed",
  //  "observer_errors", "dropped": {reason: n}}, "redelivery": {...}, "last_error"}
  // "lag_ms" is the age of the oldest accepted event not yet sent (from the end of its block; 0
  // when none waits; docs/bridge.md). "observer_errors" counts exceptions BridgeHooks::observer
  // threw.
  // "replayed" counts the events a durable outbox (docs/outbox.md) held from an earlier run when
  // the bridge was made; they are sent first and counted in "accepted" too. "queue" then also
  // holds "outbox", "durability", "stored" and "spilled".
  // "lost" counts events this bridge never received although a later event of the same producer
  // instance and subject arrived (a gap in the envelopes' sequence): what an at-most-once
  // transport lost on the way. Counted between two received events of one stream: not before
  // the first one received nor after the last, and not for consumer groups (each member sees a
  // part of the stream).
  // "redeliveries_suppressed" counts deliveries of a Message::id this bridge had already
  // delivered within its redelivery window (BridgeConfig::redelivery): not delivered again, and
  // not counted as dropped, lost or a sequence gap. "redelivery": {"active", "window_ms",
  // "window_count"} says whether suppression runs (only on transports whose capabilities say they
  // may deliver an id twice: acknowledgements or persistent) and its window.
  //
  // Inbound promise, take then settle: on transports with acknowledgements a delivery is settled
  // only after it was handled (delivered to the listeners, or suppressed as a redelivery: ack;
  // malformed: term; refused by a full inbound queue or still queued at shutdown's deadline: nak).
  // A delivery waiting in the inbound queue is never acknowledged.
  nlohmann::json health() const;

  const std::string& instance_id() const noexcept;
  const BridgeConfig& config() const noexcept;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// A bridge for `notifier` with the transport that config.url and config.transport name
// (make_transport): one call instead of passing the URL twice. Wired, not started. Throws
// ConfigError or TransportError.
std::unique_ptr<Bridge> make_bridge(Notifier& notifier, BridgeConfig config, BridgeHooks hooks = {});

// Attaches a bridge configured from the environment (routes_from_environment) to the default
// notifier and starts it: the one line an application's main() adds. Returns the bridge, which
// stays alive until notifications::shutdown(). Calling it again replaces (and shuts down) the
// previous one. Throws ConfigError or TransportError. When NOTIFICATIONS_CONFIG holds several
// routes, it attaches them all (as configure_routes()) and returns the first.
// It logs which transport it chose and why (an environment variable, the config file, the
// default) for each route, and warns about environment variables that look like this library's
// but are not.
std::shared_ptr<Bridge> configure();
std::shared_ptr<Bridge> configure(BridgeConfig config);
// As configure(config); `why` says where the configuration came from, for the start-up log line.
std::shared_ptr<Bridge> configure(BridgeConfig config, const std::string& why);
// Attaches one bridge per route (routes_from_environment(), or `routes`) to the default notifier
// and starts them in order; returns them in route order. Every route is validated and wired
// before any starts; when one fails to start, those already started are shut down and the error
// is thrown, leaving attached what was. Replaces (and shuts down, after the new ones started)
// what an earlier configure() attached; when a new route names an outbox file that an attached
// bridge writes, the attached bridges are shut down before any new one is wired (one writer per
// file; a failure then leaves nothing attached). The routes of one call share one
// BridgeHooks::instance_id, so that no route delivers what another one forwarded.
std::vector<std::shared_ptr<Bridge>> configure_routes();
std::vector<std::shared_ptr<Bridge>> configure_routes(std::vector<BridgeConfig> routes, const std::string& why = "given in code");
// The bridges configure() or configure_routes() attached, in route order (empty: none).
std::vector<std::shared_ptr<Bridge>> configured_bridges();
// Shuts down the bridges attached by configure() or configure_routes(), if any, in reverse route
// order, all within `timeout`; the report adds theirs up (clean when every one is; with several
// routes, detail is "route \"<name>\": <detail>; ..." in route order).
ShutdownReport shutdown(std::chrono::milliseconds timeout = std::chrono::seconds(5));

// Makes the outbox a Bridge keeps its events in when config.durability is not none or
// config.overflow is spill (and BridgeHooks::outbox is not given). Registered by the
// notifications::sqlite component when it is linked; without it such a configuration is refused
// with a ConfigError saying which component to link.
using DurableOutboxFactory = std::shared_ptr<Outbox> (*)(const BridgeConfig& config);
void register_durable_outbox(DurableOutboxFactory factory);

}  // namespace notifications
