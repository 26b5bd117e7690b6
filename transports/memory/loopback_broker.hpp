// Private: the in-process broker shared by the memory and mock transports. Not installed; nothing
// outside transports/ and the tests may include it.
//
// A Broker (process-wide, by namespace and name) holds the subscriptions of every Endpoint bound
// to it. An Endpoint is one transport's side: its subscriptions, delivery threads and counters.
// Delivery rules are documented in include/notifications/transports/memory.hpp.
//
// Lock order: Endpoint mutex -> Broker mutex -> Subscription mutex -> Acks mutex (the timers of
// acknowledgements); a flush/wait mutex is taken alone. No lock is held while a handler runs.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/transport.hpp"

namespace notifications::loopback {

// The tokens of a valid subject pattern ("a.*.>" -> {"a", "*", ">"}).
std::vector<std::string> pattern_tokens(std::string_view pattern);
// Whether a valid subject matches a pattern's tokens: '*' matches exactly one token, '>' (last)
// one or more tokens, any other token itself.
bool subject_matches(const std::vector<std::string>& pattern, std::string_view subject);
bool subject_matches(std::string_view pattern, std::string_view subject);

// Thread-safety: a plain value.
struct EndpointOptions {
  std::string space;  // broker namespace: "memory" or "mock"
  std::string broker = "default";
  bool inline_delivery = false;
  std::size_t max_pending = 65536;
  // Acknowledgements (memory.hpp): every delivery must be settled; unsettled ones are
  // redelivered after the ack wait. False: deliveries carry no settle function, nothing is kept.
  bool acknowledgements = false;
  std::chrono::milliseconds ack_wait{30000};  // default DeliveryOptions::ack_wait, >= 1 ms
  std::uint32_t max_deliveries = 0;           // default DeliveryOptions::max_deliveries; 0: no limit
};

// Fills `options` from a "<scheme>://<broker>?mode=..&max_pending=..&acknowledgements=..&
// ack_wait_ms=..&max_deliveries=.." URL and config.options (same keys; the URL wins). Throws
// TransportError naming the redacted URL and the bad part.
void apply_config(const TransportConfig& config, std::string_view scheme, EndpointOptions& options);

// Throws TransportError when the broker name, max_pending or ack_wait is invalid.
void validate(const EndpointOptions& options);

// The outcome of routing one message. Thread-safety: a plain value.
struct RouteResult {
  bool ok = true;
  bool transient = true;
  std::string error;
};

// One transport's side of a broker.
// Thread-safety: every member may be called from any thread; subscribe/unsubscribe/close are
// serialised by the caller (TransportBase), route/publish/flush/health/set_paused may run
// concurrently with anything.
class Endpoint {
 public:
  // Binds to the broker named in options (creating it if needed). Validates the options.
  explicit Endpoint(EndpointOptions options);
  // close(now) when still open: discards what is queued, joins the threads.
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  const EndpointOptions& options() const;

  // Hands a copy of `message` to every matching subscription of the broker (one member per
  // matching group), or to none when one of them is full or the subject is invalid. Inline
  // subscriptions are delivered on this thread before it returns, when no other thread is
  // delivering to them. `count` adds the message to the "published" counter. `redeliver` (the
  // mock's fault): each subscription gets the message twice in a row, the second Delivery with
  // redelivery 1 (both count as delivered).
  RouteResult route(const Message& message, bool count = true, bool redeliver = false);
  // Routes each message in order; stops at the first refused one.
  PublishResult publish(std::span<const Message> batch);

  // Throws TransportError when closed. Starts the delivery thread in queued mode (and, with
  // acknowledgements, the endpoint's timer thread at its first subscription). Reads
  // options.group, and with acknowledgements options.ack_wait and options.max_deliveries (zero:
  // the endpoint's defaults); the caller (TransportBase) refused what cannot be honoured.
  void subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                 DeliveryHandler handler);
  // Unknown ids are ignored. Discards what the subscription still holds (counted); does not wait
  // for a handler call in progress. With acknowledgements, the unsettled deliveries of a plain
  // subscription are discarded (counted); those of a group member stay, and go to another member
  // of its group when their ack wait (or nak delay) ends.
  void unsubscribe(std::uint64_t id);
  // True when every message routed by this endpoint has been handed to a handler or discarded.
  bool flush(Deadline deadline);
  // Removes the subscriptions from the broker, stops the timer thread, delivers what they hold
  // until `deadline`, discards the rest, waits for handler calls in progress and joins the
  // threads; then discards what is unsettled (counted). Idempotent.
  void close(Deadline deadline);
  // Fork support, called by the transport with its lifecycle lock held (no subscribe,
  // unsubscribe or close meanwhile). prepare_fork asks every delivery thread to leave its loop
  // with its queue kept and joins it; a thread still in a handler at `deadline` is left running
  // (logged). after_fork starts the delivery threads again; in a child it first discards, counted
  // as discarded, what the subscriptions held at the fork (the parent delivers it).
  void prepare_fork(Deadline deadline);
  void after_fork(bool in_child);
  // Paused subscriptions keep receiving into their queues (within max_pending) but deliver
  // nothing until unpaused. Applies to later subscriptions too. Unpausing wakes the delivery
  // threads of queued subscriptions; inline ones wait for deliver_held() or their next message.
  void set_paused(bool paused);
  // Delivers, on this thread, what unpaused inline subscriptions hold and no thread delivers.
  void deliver_held();

  std::size_t delivered() const;
  // True once delivered() >= count; false when the deadline passed first.
  bool wait_delivered(std::size_t count, Deadline deadline) const;
  nlohmann::json health() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace notifications::loopback
