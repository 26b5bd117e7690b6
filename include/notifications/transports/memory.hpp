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
// unsubscribe() waits for a call in progress on another thread (Transport::unsubscribe).
//
// Acknowledgements (opt-in: MemoryOptions::acknowledgements, URL "acknowledgements=true"), so
// that code settling deliveries (durable handlers) can be unit-tested without a server. Off (the
// default), nothing below exists: no settle functions, no timer thread, no counters.
// On, every Delivery carries settle and in_progress (callable from any thread) and a true
// redelivery count, and the transport keeps each delivery until it is settled:
//   - ack and term end it; nak redelivers it no sooner than Settlement::delay from now (a nak
//     without a delay: promptly); in_progress() restarts its ack wait.
//   - Unsettled after its ack wait (DeliveryOptions::ack_wait, else MemoryOptions::ack_wait), it
//     is redelivered ("expired"). A handler that throws leaves its delivery unsettled.
//   - max_deliveries (DeliveryOptions, else MemoryOptions; 0: no limit) counts every delivery,
//     the first included: once the last one is nak'd or expires, the message is dropped and
//     counted as "max_deliveries_reached", never redelivered.
//   - A redelivery carries the same Message::id and queues behind what reached the subscription
//     meanwhile (nak_may_be_overtaken). A plain subscription gets it again; in a consumer group
//     it goes to one member, round-robin among the members with room (it may be another member;
//     when none has room, the member that had it, or if that one left, the next in turn).
//   - Unsettled deliveries count against max_pending: a subscription holding max_pending of them
//     (queued plus unsettled) refuses more, as above.
//   - Threads: redeliveries are queued by the transport's timer thread ("ntf-memory-acks",
//     started by the first subscribe). In queued mode the subscription's delivery thread delivers
//     them; in inline mode the timer thread itself calls the handler (or the thread already
//     delivering to that subscription does: one call at a time per subscription, as always).
//   - Settling twice, settling a delivery that was redelivered or dropped since, or settling
//     after unsubscribe() or stop() does nothing and is counted ("stale_settlements", while the
//     transport exists; after its destruction it does nothing); never a crash or a deadlock,
//     from any thread, inside a handler too.
//   - unsubscribe() discards the unsettled deliveries of a plain subscription (counted as
//     "unsettled_discarded"); a group member's stay, and go to another member when their wait
//     ends (discarded and counted when no member is left). stop() stops the timers, delivers what
//     is queued as above, then discards every unsettled delivery (counted as
//     "unsettled_discarded"); a settle after that is stale.
//
// Fork (notifications/fork.hpp): prepare_fork() parks the delivery threads (a handler still
// running at its deadline is logged and left to finish), after_fork() restarts them in the parent
// and the child. Each process then has its own copy of the brokers; the child discards, counted
// as "discarded", what its subscriptions held at the fork (the parent delivers it). With
// acknowledgements the timer thread is parked and restarted alike, and the child discards the
// unsettled deliveries (counted as "unsettled_discarded"; the parent's handlers hold them).
//
// URL: "memory://" (broker "default") or "memory://<broker>?mode=inline|queued&max_pending=<n>
// &acknowledgements=true|false&ack_wait_ms=<n>&max_deliveries=<n>"; TransportConfig::options may
// hold the same keys: {"mode": "inline", "max_pending": 100, "acknowledgements": true (a JSON
// bool), "ack_wait_ms": 500, "max_deliveries": 3}; the URL wins. ack_wait_ms is 1 to 86400000
// (default 30000), max_deliveries 0 to 2^32-1 (default 0: no limit); both matter only with
// acknowledgements. Unknown keys and bad values throw TransportError naming them.
//
// Message::id is carried as the field itself (no header); a receiver sees the id that was published.
//
// Capabilities (kMemoryCapabilities): ordered, consumer_groups; not persistent, exactly_once,
// acknowledgements or needs_server; no dedupe window, durable consumers, start positions, nak
// ordering or ordered delivery option. subscribe() refuses DeliveryOptions durable, start (other
// than new_only), ack_wait, max_deliveries and ordered with a TransportError naming the option.
// Delivery::settle and in_progress are empty and Delivery::redelivery is 0 (the mock can fake
// redeliveries). With acknowledgements (kMemoryAckCapabilities): also acknowledgements and
// nak_may_be_overtaken, and ack_wait and max_deliveries are accepted; still not persistent, no
// durable consumers, start positions, dedupe window or ordered delivery option.
// PublishResult::published counts messages handed to every matching subscription. health(): kind,
// state, broker, mode, max_pending, subscriptions, published, delivered, pending, unflushed,
// refused_full, refused_invalid, discarded, handler_errors; with acknowledgements only, also
// acknowledgements (true), ack_wait_ms, max_deliveries (the defaults), unsettled (now: delivered,
// not yet acked, terminated or dropped, nak'd ones waiting for their redelivery included),
// acked, naked, terminated, in_progress (calls), redelivered, expired (ack waits that ran out),
// max_deliveries_reached, unsettled_discarded and stale_settlements (since the transport was
// made). "delivered" counts every handler call, redeliveries included.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "notifications/transport.hpp"

namespace notifications {

inline constexpr TransportCapabilities kMemoryCapabilities{.ordered = true, .consumer_groups = true};
// With MemoryOptions::acknowledgements: kMemoryCapabilities plus acknowledgements, and a nak'd or
// expired delivery may be overtaken (its redelivery queues behind what arrived meanwhile).
inline constexpr TransportCapabilities kMemoryAckCapabilities{.ordered = true,
                                                              .consumer_groups = true,
                                                              .acknowledgements = true,
                                                              .nak_may_be_overtaken = true};

// Thread-safety: a plain value.
struct MemoryOptions {
  std::string broker = "default";  // letters, digits, '_', '-', '.'
  bool inline_delivery = false;    // false: queued mode
  std::size_t max_pending = 65536; // per subscription, >= 1
  bool acknowledgements = false;   // true: capabilities() is kMemoryAckCapabilities (see above)
  std::chrono::milliseconds ack_wait{30000};  // default DeliveryOptions::ack_wait, >= 1 ms
  std::uint32_t max_deliveries = 0;           // default DeliveryOptions::max_deliveries; 0: no limit
};

// A memory transport, not started. Throws TransportError for an invalid broker name,
// max_pending == 0 or ack_wait below 1 ms.
std::unique_ptr<Transport> make_memory_transport(MemoryOptions options = {});

// The options that make_transport() uses for a "memory://..." URL and config.options. Throws
// TransportError naming the URL (credentials redacted) and the bad part: an unknown query or
// option key, a bad mode, max_pending, acknowledgements, ack_wait_ms or max_deliveries, an invalid
// broker name.
MemoryOptions memory_options_from_config(const TransportConfig& config);

}  // namespace notifications
