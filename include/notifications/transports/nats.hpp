// NATS transport: core NATS through cnats (libnats), in its own library target notifications::nats.
// Linking that target registers the "nats" and "tls" URL schemes with make_transport(); programs
// that do not link it never load libnats.
//
// Delivery guarantee: core NATS is at-most-once. While the connection is up, messages of one
// subject from one publisher arrive in order. While it is down, publishes go to cnats' reconnect
// buffer (reconnect_buffer_bytes) and, once that is full, stay in the Bridge's own queue (publish
// reports the refusal as transient). What the server had not yet delivered when it went away is
// lost without the publisher being told; receivers count such gaps (see the Bridge's "lost"
// counter). Choose JetStream or the SQLite outbox when nothing may be lost.
//
// Threads: cnats runs message callbacks on its own threads (one per subscription) and connection
// callbacks on one library-wide thread. Every callback of this transport only records (atomic
// counters, a state word) or hands off (the DeliveryHandler, which must only enqueue; a bounded
// queue of connection events that this transport's own thread logs). No callback blocks, runs
// user code or calls back into cnats.
//
// stop(deadline): flushes, then drains the connection (subscriptions hand over what they already
// hold; the publish buffer is written out), waits for cnats' closed signal, and destroys it.
// A drain refused while reconnecting is retried until the deadline; past the deadline the
// connection is closed and the messages subscriptions still held are counted as "discarded".
// stop() returns by its deadline plus a small constant (about 100 ms: the log thread's wake-up),
// whether the server is up, gone, or was never reached.
//
// By default (without retry_on_failed_connect) an unreachable server fails configure() (and
// start()) with a TransportError; with it, start() returns at once and connects in the background.
// Subscriptions made before the first connection (or while reconnecting) reach the server when it
// is made. A failed connect names the servers, what happened, what to check and which credentials
// were offered (user name, token, credentials file, nkey or none; never a secret).
//
// flush(deadline) is true only when the server answered a PING sent after everything published
// before the call; while the connection is down (publishes wait in cnats' reconnect buffer) it
// waits for the reconnect, or returns false at the deadline. Messages written to a connection
// that broke before a flush confirmed them may be lost with it (cnats keeps only what is published
// once it knows the connection is down): flush() is then false, even after a reconnect, and the
// caller publishes them again (the Bridge with a durable outbox does; duplicates keep the id).
//
// Headers: off by default. Core NATS neither deduplicates on Nats-Msg-Id nor needs the others,
// and the envelope body carries the id, the trace context and its own format, while cnats builds
// a header map per message that costs more than the rest of a publish (docs/benchmarks.md). With
// `headers` set, Message::id and Message::headers are sent when the server of the current
// connection supports headers, asked again after every (re)connect; a publish before the first
// connect (cnats knows no server yet) sends that message's body alone, without switching headers
// off. Without it, every message is its body alone.
//
// Message::id travels as the "Nats-Msg-Id" header (set after Message::headers, so it wins over a
// header of that name; JetStream deduplicates on it). On receive, a "Nats-Msg-Id" header becomes
// Message::id and is not listed in Message::headers. A subscription with DeliveryOptions::headers
// false reads no header, so its messages have an empty id; so do messages sent without headers.
//
// Capabilities (kNatsCapabilities; capabilities() adds a write_delay of 1 ms without send_asap,
// as cnats' flusher waits that long before it writes): ordered, consumer_groups, needs_server. Not persistent,
// exactly_once or acknowledgements; no dedupe window (core NATS does not deduplicate), no durable
// consumers, start positions, nak ordering or ordered delivery option: subscribe() refuses
// DeliveryOptions durable, start (other than new_only), ack_wait, max_deliveries and ordered
// with a TransportError naming the option. Delivery::settle and in_progress are empty and
// Delivery::redelivery is 0. PublishResult::published counts messages written to cnats' buffer
// (flush() confirms they reached the server); nothing is stored.
//
// max_message_bytes(): the server's max_payload as announced on the last (re)connect; 0 before
// the first connect and after stop. A message larger than that (body plus headers) fails for
// good: publish() returns its index in `published`, transient = false, and an error naming its
// size and the limit; it is never retried (health: "too_large").
//
// Logging: connection events and per-message errors (slow consumer, asynchronous errors) are
// logged by the transport's own thread, at most one line a second per reason (event kind and
// status), the next line counting what was suppressed; text from the server is escaped.
//
// Fork: cnats must not be used across fork(). See notifications/fork.hpp (prepare_fork /
// after_fork) for pre-fork servers. In a child forked without after_fork() the transport touches
// neither cnats nor any lock: publish() fails for good, flush() is false, health() says
// "connection": "forked_child", stop() returns at once (the connection belongs to the parent).
//
// URL: nats://[user:password@|token@]host[:port][,host[:port]...][?key=value&...]; "tls://" is
// the same with TLS required. Query keys and TransportConfig::options keys (the URL wins) are the
// fields of NatsOptions below, by the same names; durations in milliseconds with an "_ms"
// suffix. Unknown keys and bad values throw TransportError naming them. Credentials never
// appear in errors, logs or health().
//
// health(): kind, state, connection ("connecting", "connected", "reconnecting", "draining",
// "disconnected", "closed"), server (the URL in use, credentials removed), servers, name,
// disconnects, reconnects, published, publish_errors, received, slow_consumer_dropped (over the
// transport's life, subscriptions since closed included), slow_consumer_events, async_errors,
// lame_duck, handler_errors, events_unlogged (connection events past the log queue's bound),
// discarded, pending, buffered_bytes (cnats' socket write buffer), reconnect_buffered_bytes (an
// estimate of what waits in cnats' reconnect buffer: bytes published while disconnected since the
// last (re)connect; cnats 3.4 does not expose the buffer's size), max_payload, too_large,
// subscriptions, last_error.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "notifications/transport.hpp"

namespace notifications {

inline constexpr TransportCapabilities kNatsCapabilities{
    .ordered = true, .consumer_groups = true, .needs_server = true};

// Thread-safety: a plain value.
struct NatsOptions {
  std::vector<std::string> servers{"nats://127.0.0.1:4222"};  // tried in random order (a cluster)
  // Authentication: at most one of user/password, token, creds_file, nkey_seed_file.
  std::string user;
  std::string password;
  std::string token;
  std::string creds_file;      // a .creds file (user JWT and NKey seed)
  std::string nkey_public;     // with nkey_seed_file: the user's public NKey ("U...")
  std::string nkey_seed_file;  // a file holding the user's NKey seed ("SU...")
  // TLS: required when `tls` is true or any server URL is "tls://".
  bool tls = false;
  std::string tls_ca_file;    // trusted CA certificates (PEM)
  std::string tls_cert_file;  // client certificate chain (PEM), with tls_key_file
  std::string tls_key_file;
  std::string tls_hostname;   // expected name in the server certificate, when not the host
  std::string name = "notifications";  // the connection name the server shows
  int max_reconnect = -1;              // attempts per outage; -1 = forever
  std::chrono::milliseconds reconnect_wait{250};
  std::chrono::milliseconds reconnect_jitter{100};
  std::size_t reconnect_buffer_bytes = 8 * 1024 * 1024;
  std::chrono::milliseconds ping_interval{10'000};
  int max_pings_out = 2;
  std::chrono::milliseconds connect_timeout{2'000};
  bool retry_on_failed_connect = false;  // true: start() succeeds while no server is reachable
  bool send_asap = false;  // true: write each publish at once (lower latency, more syscalls)
  bool no_echo = true;     // the server does not send a connection's own messages back to it
  // true: publish Message::id (as Nats-Msg-Id) and Message::headers (a Bridge's Content-Type
  // and traceparent) as NATS headers, for tools that read them. false (the default): bodies
  // only; the envelope body carries the same fields, and cnats' header map per message costs
  // more than the rest of a publish (docs/benchmarks.md has the figures).
  bool headers = false;
  int pending_messages_limit = 65'536;           // per subscription, before slow-consumer drops
  int pending_bytes_limit = 64 * 1024 * 1024;    // per subscription
};

// A NATS transport, not started (start() connects). Throws TransportError for invalid options.
std::unique_ptr<Transport> make_nats_transport(NatsOptions options);

// The options that make_transport() uses for a "nats://" or "tls://" URL and config.options.
// Throws TransportError naming the URL (credentials redacted) and the bad key or value.
NatsOptions nats_options_from_config(const TransportConfig& config);

// Registers the "nats" and "tls" schemes. Linking notifications::nats does this before main();
// calling it again is harmless.
void register_nats_transport();

}  // namespace notifications
