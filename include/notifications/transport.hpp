// Transport: what carries envelopes between processes (memory, mock, NATS, SQLite, ...).
//
// The model is spdlog's sinks: a small interface (Transport), a base class (TransportBase) that
// owns the lifecycle checks and locking so a transport fills in a few hooks, and creation through
// factories registered by URL scheme. No third-party type appears here.
//
// Thread-safety: every Transport member may be called from any thread. The Bridge calls
// publish() from its one sender thread only. Delivery handlers run on a thread of the transport
// (or of its client library): they must only hand the delivery off (enqueue it) and return; they
// must not block, throw, or call back into the transport. The structs (TransportCapabilities,
// Message, Settlement, StartPosition, DeliveryOptions, Delivery, PublishResult, TransportConfig)
// are values; Delivery::settle and Delivery::in_progress may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/errors.hpp"

namespace notifications {

using Deadline = std::chrono::steady_clock::time_point;

namespace detail {
struct HandlerCalls;  // notifications/transport/transport_base.cpp
}  // namespace detail

// A transport could not be created, started or used: bad URL, option, credentials, server.
class TransportError : public Error {
 public:
  explicit TransportError(const std::string& message) : Error("transport", message) {}
};

// One message on the wire: a subject, an encoded body, headers where the transport has them, and
// an id.
//
// Message::id is the message's identity for deduplication (the Bridge sets it to the envelope's
// id). The core writes no transport-specific header for it: each transport maps it to its own
// mechanism and back (NATS: the Nats-Msg-Id header, written from `id` on publish and read into
// `id` on receive; memory and mock: carried as this field). Empty: the message has no id (no
// header is written; a receiver sees "").
struct Message {
  std::string subject;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string id = {};

  // The value of the first header named `key` (case-sensitive), or "" when absent.
  std::string header(std::string_view key) const {
    for (const auto& [k, v] : headers) {
      if (k == key) return v;
    }
    return {};
  }
};

// What a transport guarantees; the conformance suite switches cases on these, and the Bridge reads
// them (dedupe_window sizes its redelivery suppression). A field that is false (or zero) promises
// nothing; a transport states in its public header which fields hold for it.
// Thread-safety: a plain value.
struct TransportCapabilities {
  bool persistent = false;        // messages published before a subscriber exists reach it later
  bool exactly_once = false;      // a repeated message id is delivered once
  bool ordered = false;           // messages of one subject arrive in publish order
  bool consumer_groups = false;   // each member group receives every message once
  // A nak()ed delivery is redelivered; Delivery::settle, Delivery::in_progress and
  // DeliveryOptions::ack_wait / max_deliveries are honoured, and Delivery::redelivery counts.
  bool acknowledgements = false;
  bool needs_server = false;      // talks to a server that tests must start
  // How long the transport (or its server) remembers a published Message::id and stores a second
  // message with that id no more; zero = it does not deduplicate by id.
  std::chrono::milliseconds dedupe_window{0};
  // DeliveryOptions::durable is honoured: a named consumer keeps its position across subscribe
  // calls, restarts and processes.
  bool durable_consumers = false;
  // DeliveryOptions::start positions other than StartPosition::new_only() are honoured.
  bool start_positions = false;
  // With acknowledgements: a nak()ed (or expired) delivery may be redelivered after later
  // messages of the same subject were delivered (JetStream's default). False with
  // acknowledgements: a redelivery comes before anything later.
  bool nak_may_be_overtaken = false;
  // DeliveryOptions::ordered is honoured: no delivery before the previous one was settled.
  bool ordered_delivery_option = false;
  // How long a published message may wait inside the transport before it is written, so that
  // writes are batched (NATS without send_asap: cnats' flusher waits 1 ms); zero = written at
  // once. A Bridge's sender that is kept busy by a steady stream of events gathers them for a
  // quarter of this before it publishes, instead of being woken for each one.
  std::chrono::microseconds write_delay{0};
};

// How a delivery is settled on transports with acknowledgements.
enum class Settle { ack, nak, term };

// A settle request: the outcome, and for a nak how long the transport should wait before it
// redelivers (zero: its own default). Built implicitly from a Settle: settle(Settle::ack).
struct Settlement {
  Settlement(Settle how) : outcome(how) {}  // NOLINT: implicit on purpose
  Settlement(Settle how, std::chrono::milliseconds wait) : outcome(how), delay(wait) {}
  // A nak with a backoff: redeliver no sooner than `delay` from now.
  static Settlement nak_after(std::chrono::milliseconds delay) { return {Settle::nak, delay}; }

  Settle outcome;
  std::chrono::milliseconds delay{0};  // only for Settle::nak; ignored otherwise
};

// Where a new subscription (or a durable consumer created by it) starts reading. Only
// new_only() is honoured by transports without TransportCapabilities::start_positions; the others
// are refused at subscribe (TransportError naming "start").
struct StartPosition {
  enum class Kind { new_only, all_retained, from_time, from_sequence };

  static StartPosition new_only() { return {}; }
  static StartPosition all_retained() { return {Kind::all_retained, {}, 0}; }
  static StartPosition from_time(std::chrono::system_clock::time_point at) { return {Kind::from_time, at, 0}; }
  // The transport's own sequence numbers (a stream sequence), not the envelope's.
  static StartPosition from_sequence(std::uint64_t sequence) { return {Kind::from_sequence, {}, sequence}; }

  Kind kind = Kind::new_only;
  std::chrono::system_clock::time_point time{};  // from_time only
  std::uint64_t sequence = 0;                     // from_sequence only
};

// How to subscribe. Built implicitly from a group name, so subscribe(pattern, "workers", handler)
// and subscribe(pattern, "", handler) read as before.
//
// Every option that is not at its default must be honoured: a transport that cannot honour one
// (its capabilities say which it can) refuses the subscription with a TransportError naming the
// option ("durable", "start", "ack_wait", "max_deliveries", "ordered"); it never ignores one.
// TransportBase::subscribe checks this against capabilities() for every transport built on it.
struct DeliveryOptions {
  DeliveryOptions() = default;
  DeliveryOptions(std::string consumer_group) : group(std::move(consumer_group)) {}  // NOLINT: implicit on purpose
  DeliveryOptions(const char* consumer_group) : group(consumer_group) {}            // NOLINT: implicit on purpose

  // Non-empty: the subscription is a member of this consumer group; each message goes to one member.
  std::string group;
  // False: the handler does not read Message::headers, and the transport may leave them empty
  // (on NATS, reading a message's headers costs about as much as the rest of its delivery).
  bool headers = true;
  // Non-empty: the name of a durable consumer (needs durable_consumers). Same name: same position.
  std::string durable;
  // Where reading starts (needs start_positions unless new_only).
  StartPosition start;
  // How long an unsettled delivery waits before it is redelivered; zero: the transport's default
  // (needs acknowledgements when non-zero).
  std::chrono::milliseconds ack_wait{0};
  // How often a message is delivered at most (first delivery included); zero: the transport's
  // default (needs acknowledgements when non-zero).
  std::uint32_t max_deliveries = 0;
  // True: no delivery before the previous one was settled (needs ordered_delivery_option).
  bool ordered = false;
};

// The first option of `options` that a transport with `capabilities` cannot honour, or "" when
// it can honour all of them: "durable", "start", "ack_wait", "max_deliveries" or "ordered".
std::string unsupported_delivery_option(const TransportCapabilities& capabilities, const DeliveryOptions& options);

// One received message.
//
// On transports without acknowledgements `settle` and `in_progress` are empty and `redelivery`
// is 0. Otherwise `settle` must be called exactly once, from any thread, after the message was
// handled; `in_progress` may be called any number of times before that, from any thread, to tell
// the transport the handler is still working (it restarts the ack wait).
struct Delivery {
  Message message;
  std::function<void(Settlement)> settle;
  std::function<void()> in_progress;
  // How many times this message was delivered to this consumer before (0 on the first delivery).
  // A redelivery carries the same Message::id.
  std::uint32_t redelivery = 0;
  // A hint from the transport: it hands this handler another delivery right after this call
  // returns (its client library holds more messages of this subscription), unless the
  // subscription ends first. A handler that queues deliveries for another thread may leave that
  // thread asleep until the last one of the run. Ignoring it is always correct.
  bool more_follows = false;
};
using DeliveryHandler = std::function<void(Delivery&&)>;

// The outcome of publishing a batch: the first `published` messages were accepted, in order;
// the rest were not. `transient` says whether retrying the rest may succeed.
//
// What "accepted" means depends on the transport's capabilities:
// - not persistent (memory, mock, NATS core): handed to the transport, which delivers it to the
//   subscriptions it has now (NATS: written to the client library's buffer; flush() confirms it
//   left the process).
// - persistent: durably stored, or acknowledged by the server as stored. A message the transport
//   only sent, without the store's confirmation, is not counted; publishing it again is safe
//   within dedupe_window (same Message::id).
struct PublishResult {
  std::size_t published = 0;
  bool transient = true;
  std::string error;  // empty on full success; never contains credentials
};

class Transport {
 public:
  virtual ~Transport() = default;

  // "memory", "mock", "nats", ...
  virtual std::string kind() const = 0;
  virtual TransportCapabilities capabilities() const = 0;

  // Connects. Throws TransportError on configuration errors; transient connection failures may
  // be retried by the transport in the background (see its documentation).
  virtual void start() = 0;
  // Publishes in order. Never throws; reports what was accepted.
  virtual PublishResult publish(std::span<const Message> batch) = 0;
  // Receives messages whose subject matches `pattern` (NATS wildcards), as `options` say.
  // Returns an id for unsubscribe(). Throws TransportError (e.g. an invalid pattern or group, or
  // a DeliveryOptions field its capabilities() do not cover, named in the message).
  virtual std::uint64_t subscribe(const std::string& pattern, const DeliveryOptions& options,
                                  DeliveryHandler handler) = 0;
  // Stops deliveries to that subscription (also while stop() drains). Deliveries already handed
  // to the handler stay handed. When it returns, the handler is never called again and no call of it is running on another
  // thread: like std::stop_callback's destructor, it waits for such a call to return, so it must
  // not be called while holding a lock that handler takes, and two handlers running on two
  // threads must not unsubscribe each other. Called from inside the handler (or from any handler
  // running on this thread) it does not wait for that call; a later stop() or unsubscribe() of
  // the same id from another thread does.
  virtual void unsubscribe(std::uint64_t id) = 0;
  // Waits until everything published so far has left this process (or is stored, for persistent
  // transports). False when the deadline passed first, or when something published may have been
  // lost on the way (NATS: it was written to a connection that broke before a flush covered it);
  // the caller that keeps its messages (a durable outbox) sends them again, and a later flush
  // covers only what was published after that answer.
  virtual bool flush(Deadline deadline) = 0;
  // Lets subscriptions hand over what they already hold, then closes. Idempotent. When it
  // returns, no handler is called again, and none is running on another thread unless one was
  // still running at the deadline (logged, and counted in health as "handlers_running_at_stop").
  virtual void stop(Deadline deadline) = 0;
  // State and counters as JSON; never contains credentials.
  virtual nlohmann::json health() const = 0;
  // The largest Message::body (plus headers) that this transport can carry now, in bytes; 0 when
  // it has no limit or does not know it yet (NATS learns the server's max_payload on connect).
  // The Bridge refuses larger events at once (a counted drop) instead of retrying them.
  virtual std::size_t max_message_bytes() const { return 0; }

  // Fork support (notifications/fork.hpp), called with the Bridge's threads parked, so no
  // publish, subscribe or flush runs meanwhile. prepare_fork closes what cannot cross fork()
  // (connections, threads) and keeps the subscriptions; after_fork reopens both, in the parent
  // and in the child, retrying in the background when the server cannot be reached. Defaults: do
  // nothing (a transport that cannot cross fork() says so in its documentation).
  virtual void prepare_fork(Deadline deadline) { (void)deadline; }
  virtual void after_fork(bool in_child) { (void)in_child; }
};

// Lifecycle and locking for transports: created -> started -> stopped, checked once here.
// Its promises, each with a test named TransportBasePromiseN_... (tests/transport/
// test_transport_base.cpp; 9 in tests/process/test_fork_transports.cpp):
// 1. subscribe() is refused (TransportError) before start() and after stop(); unsubscribe() then
//    does nothing.
// 2. A start() whose do_start threw leaves the transport created, and may be retried; start() on
//    a started transport does nothing; start() after stop() throws.
// 3. publish() takes no lock and never throws; before start or after stop it accepts nothing
//    (transient = false).
// 4. do_publish never runs during or after do_stop: stop() refuses new publishes at once, waits
//    for the ones in flight, then runs do_stop.
// 5. stop() is idempotent and allowed from created (no hook runs then); a concurrent second
//    stop() waits for the first.
// 6. The base serialises start/stop/subscribe/unsubscribe, but do_stop runs without the lock, so
//    a handler may unsubscribe while the transport drains.
// 7. health() adds "kind" and "state" ("stopping" while do_stop runs) to do_health().
// 8. In a child process forked after start() without after_fork(true) (notifications/fork.hpp),
//    the base runs no hook and takes no lock another thread may have held at fork(): publish()
//    refuses (transient = false), flush() is false, subscribe() throws, unsubscribe() does
//    nothing, stop() only marks the transport stopped, health() says "forked_child".
// 9. Fork (notifications/fork.hpp): start() registers the transport with the process's fork
//    registry and stop() removes it, so prepare_fork()/after_fork() reach every started
//    transport, with or without a Bridge. prepare_fork() takes the lifecycle lock and keeps it
//    until after_fork() (no start, stop, subscribe or unsubscribe runs across fork()) and calls
//    do_prepare_fork when started; after_fork() calls do_after_fork when started. A prepare_fork()
//    while prepared, or an after_fork() while not, does nothing: a Bridge and the registry both ask.
// 10. Handlers: subscribe() hands do_subscribe a wrapper of the handler. After unsubscribe(id)
//    returns, that wrapper calls the handler no more and no call of it runs on another thread
//    (it waits, outside the lifecycle lock, for calls in progress; not for one on its own
//    thread). After do_stop, stop() does the same for every subscription, waiting at most until
//    its deadline; calls still running then are logged and counted ("handlers_running_at_stop").
//    Deliveries that reach a closed wrapper are counted ("discarded_after_unsubscribe"), and one
//    with settle() is nak'ed. unsubscribe() while do_stop drains closes the handler too. A
//    closed handler's call still running (it unsubscribed itself, or outlived a deadline) is
//    waited for by later stop() and unsubscribe() calls. In a child set up by after_fork(true)
//    only the forking thread's own calls count as running.
// Derived destructors must call stop() themselves (the base cannot call their hooks).
class TransportBase : public Transport {
 public:
  enum class State { created, started, stopped };

  // Leaves the fork registry if stop() did not (it must have been called: see above).
  ~TransportBase() override;

  void start() final;
  PublishResult publish(std::span<const Message> batch) final;
  std::uint64_t subscribe(const std::string& pattern, const DeliveryOptions& options,
                          DeliveryHandler handler) final;
  void unsubscribe(std::uint64_t id) final;
  bool flush(Deadline deadline) final;
  void stop(Deadline deadline) final;
  nlohmann::json health() const final;
  // See "Fork" above. Called by the thread that forks, prepare_fork before fork(), after_fork
  // after it in both processes; after_fork records that this process now owns the transport (in
  // a child) before calling do_after_fork.
  void prepare_fork(Deadline deadline) final;
  void after_fork(bool in_child) final;

  State state() const;

 protected:
  virtual void do_start() = 0;
  virtual PublishResult do_publish(std::span<const Message> batch) = 0;
  virtual void do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                            DeliveryHandler handler) = 0;
  virtual void do_unsubscribe(std::uint64_t id) = 0;
  virtual bool do_flush(Deadline deadline) = 0;
  virtual void do_stop(Deadline deadline) = 0;
  // Transport-specific fields; the base adds "kind" and "state".
  virtual nlohmann::json do_health() const = 0;
  // See Transport::prepare_fork and after_fork; run only while started. Defaults: nothing.
  virtual void do_prepare_fork(Deadline deadline) { (void)deadline; }
  virtual void do_after_fork(bool in_child) { (void)in_child; }

 private:
  mutable std::mutex lifecycle_;
  // Phase and the count of publish() calls in flight, packed; accessed only through
  // std::atomic_ref in transport.cpp, written under lifecycle_.
  State state_ = State::created;
  std::uint64_t next_subscription_ = 1;  // guarded by lifecycle_
  // The fork generation (notifications/process.hpp) that started the transport or adopted it in
  // after_fork(true); written before the phase becomes started, read after loading it.
  std::uint64_t generation_ = 0;
  // Between prepare_fork() and after_fork(); read and written only by the thread that forks.
  bool fork_prepared_ = false;
  // In the fork registry (process/fork_registry.hpp): set by start(), cleared by stop().
  std::atomic<bool> fork_registered_{false};
  bool in_forked_child() const;
  // After do_stop: closes every subscription's handler, waiting for calls until `deadline`.
  void close_handlers(Deadline deadline);
  // Drops closed handlers with no call running from closed_handler_calls_ (lifecycle_ held).
  void forget_finished_handlers();
  // The calls in progress of each subscription's handler (see promise 10), open ones and closed
  // ones whose calls may still run; both guarded by lifecycle_.
  std::map<std::uint64_t, std::shared_ptr<detail::HandlerCalls>> handler_calls_;
  std::map<std::uint64_t, std::shared_ptr<detail::HandlerCalls>> closed_handler_calls_;
  std::atomic<std::uint64_t> handlers_running_at_stop_{0};
  // Deliveries a transport handed over after their subscription was closed (not passed on).
  std::shared_ptr<std::atomic<std::uint64_t>> discarded_after_close_ = std::make_shared<std::atomic<std::uint64_t>>(0);
};

// Where and how to connect: the URL (its scheme picks the factory) and transport options.
struct TransportConfig {
  std::string url = "memory://";
  nlohmann::json options = nlohmann::json::object();
};

using TransportFactory = std::function<std::unique_ptr<Transport>(const TransportConfig&)>;

// Registers a factory for a URL scheme ("memory", "nats", ...); replaces an earlier one.
void register_transport(const std::string& scheme, TransportFactory factory);
// Creates the transport for config.url. Throws TransportError naming the URL (without its
// credentials) when the scheme is unknown or the factory refuses the configuration.
std::unique_ptr<Transport> make_transport(const TransportConfig& config);
// The URL with any user:password@ part replaced by "***@", for logs and errors.
std::string redact_url(std::string_view url);
// The parameters after the '?' of `url` (up to a '#'), in order, as written (not decoded); a
// parameter without '=' has an empty value; empty parameters ("a=1&&b=2") are skipped.
std::vector<std::pair<std::string, std::string>> url_query(std::string_view url);

}  // namespace notifications
