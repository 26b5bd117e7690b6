// Memory transport: a loopback between any number of transports in one process. Needs no
// outside library and no server; for tests, samples and single-process apps.
//
// Transports created with the same broker name exchange messages; a broker lives while any
// transport created with its name lives. Subjects match NATS-style ('*' one token, '>' the rest).
// A non-empty subscribe group is a consumer group identified by (pattern, group), as NATS queue
// groups are: each message goes to one member of it, round-robin; every group and every plain
// subscription gets its own copy. Messages of one subject from one publisher arrive in publish
// order at each subscription. No persistence: a message published while nothing matches is
// accepted and reaches no one.
//
// Delivery mode, a property of the transport that SUBSCRIBES:
//   queued (default): publish() copies each message into the queue of every matching
//     subscription and returns; each subscription has its own delivery thread that calls its
//     handler, one message at a time.
//   inline: the handler runs on the publishing thread before publish() returns (deterministic
//     unit tests). Calls are still one at a time per subscription: when another thread is already
//     delivering to it, or a handler publishes to its own subscription, the message is queued and
//     delivered by the thread already delivering, right after its current call. Messages an
//     inline subscription still holds at stop() are delivered on the thread calling stop().
//
// Back-pressure, never silent loss: a subscription holds at most max_pending undelivered
// messages. When one that a message must reach is full, publish() accepts nothing more from the
// batch and returns {published = messages before it, transient = true, error naming the
// subscription}; the message is delivered to all its subscriptions or to none. Messages still
// queued when a subscription is unsubscribed, or when stop()'s deadline passes, are discarded and
// counted in health() as "discarded".
//
// flush(deadline) waits until every message this transport published has been handed to a handler
// (or discarded). stop(deadline) removes this transport's subscriptions from the broker, lets them
// hand over everything they hold until the deadline, discards the rest, then waits for handler
// calls in progress and joins the threads. When stop() returns no handler of this transport runs.
// The destructor calls stop() with a 5 s deadline if the transport is still started.
//
// Handlers may call publish() and unsubscribe() on any transport, including their own, without
// deadlock; they must not call start(), stop() or flush() of their own transport. A handler that
// throws is counted in health() as "handler_errors" and its message counts as delivered.
// unsubscribe() does not wait for a call in progress on another thread.
//
// Fork (notifications/fork.hpp): prepare_fork() parks the delivery threads (a handler still
// running at its deadline is logged and left to finish), after_fork() restarts them in the parent
// and the child. Each process then has its own copy of the brokers; the child discards, counted
// as "discarded", what its subscriptions held at the fork (the parent delivers it).
//
// URL: "memory://" (broker "default") or "memory://<broker>?mode=inline|queued&max_pending=<n>";
// TransportConfig::options may hold the same keys: {"mode": "inline", "max_pending": 100}; the URL
// wins. Unknown keys throw TransportError naming them.
//
// Message::id is carried as the field itself (no header); a receiver sees the id that was published.
//
// Capabilities: ordered, consumer_groups; not persistent, exactly_once, acknowledgements or
// needs_server; no dedupe window, durable consumers, start positions, nak ordering or ordered
// delivery option. subscribe() refuses DeliveryOptions durable, start (other than new_only),
// ack_wait, max_deliveries and ordered with a TransportError naming the option. Delivery::settle
// and in_progress are empty and Delivery::redelivery is 0 (the mock can fake redeliveries).
// PublishResult::published counts messages handed to every matching subscription. health(): kind, state, broker, mode, max_pending, subscriptions, published,
// delivered, pending, unflushed, refused_full, discarded, handler_errors.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "notifications/transport.hpp"

namespace notifications {

inline constexpr TransportCapabilities kMemoryCapabilities{.ordered = true, .consumer_groups = true};

// Thread-safety: a plain value.
struct MemoryOptions {
  std::string broker = "default";  // letters, digits, '_', '-', '.'
  bool inline_delivery = false;    // false: queued mode
  std::size_t max_pending = 65536; // per subscription, >= 1
};

// A memory transport, not started. Throws TransportError for an invalid broker name or
// max_pending == 0.
std::unique_ptr<Transport> make_memory_transport(MemoryOptions options = {});

// The options that make_transport() uses for a "memory://..." URL and config.options. Throws
// TransportError naming the URL (credentials redacted) and the bad part: an unknown query or
// option key, a bad mode or max_pending, an invalid broker name.
MemoryOptions memory_options_from_config(const TransportConfig& config);

}  // namespace notifications
