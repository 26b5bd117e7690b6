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
// Message, DeliveryOptions, Delivery, PublishResult, TransportConfig) are values.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
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

// A transport could not be created, started or used: bad URL, option, credentials, server.
class TransportError : public Error {
 public:
  explicit TransportError(const std::string& message) : Error("transport", message) {}
};

// One message on the wire: a subject, an encoded body, and headers where the transport has them.
struct Message {
  std::string subject;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

  // The value of the first header named `key` (case-sensitive), or "" when absent.
  std::string header(std::string_view key) const {
    for (const auto& [k, v] : headers) {
      if (k == key) return v;
    }
    return {};
  }
};

// What a transport guarantees; the conformance suite switches cases on these.
struct TransportCapabilities {
  bool persistent = false;        // messages published before a subscriber exists reach it later
  bool exactly_once = false;      // a repeated message id is delivered once
  bool ordered = false;           // messages of one subject arrive in publish order
  bool consumer_groups = false;   // each member group receives every message once
  bool acknowledgements = false;  // a nak()ed delivery is redelivered
  bool needs_server = false;      // talks to a server that tests must start
};

// How a delivery is settled on transports with acknowledgements.
enum class Settle { ack, nak, term };

// How to subscribe. Built implicitly from a group name, so subscribe(pattern, "workers", handler)
// and subscribe(pattern, "", handler) read as before.
struct DeliveryOptions {
  DeliveryOptions() = default;
  DeliveryOptions(std::string consumer_group) : group(std::move(consumer_group)) {}  // NOLINT: implicit on purpose
  DeliveryOptions(const char* consumer_group) : group(consumer_group) {}            // NOLINT: implicit on purpose

  // Non-empty: the subscription is a member of this consumer group; each message goes to one member.
  std::string group;
  // False: the handler does not read Message::headers, and the transport may leave them empty
  // (on NATS, reading a message's headers costs about as much as the rest of its delivery).
  bool headers = true;
};

// One received message. `settle` is empty on transports without acknowledgements; otherwise it
// must be called exactly once, from any thread, after the message was handled.
struct Delivery {
  Message message;
  std::function<void(Settle)> settle;
};
using DeliveryHandler = std::function<void(Delivery&&)>;

// The outcome of publishing a batch: the first `published` messages were accepted, in order;
// the rest were not. `transient` says whether retrying the rest may succeed.
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
  // Returns an id for unsubscribe(). Throws TransportError (e.g. an invalid pattern or group).
  virtual std::uint64_t subscribe(const std::string& pattern, const DeliveryOptions& options,
                                  DeliveryHandler handler) = 0;
  // Stops deliveries to that subscription. Deliveries already handed to the handler stay handed.
  virtual void unsubscribe(std::uint64_t id) = 0;
  // Waits until everything published so far has left this process (or is stored, for persistent
  // transports). False when the deadline passed first.
  virtual bool flush(Deadline deadline) = 0;
  // Lets subscriptions hand over what they already hold, then closes. Idempotent.
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
// - subscribe() is refused (TransportError) before start() and after stop(); unsubscribe() then
//   does nothing. start() after stop() throws; a start() whose do_start threw may be retried.
// - publish() takes no lock and never throws; before start or after stop it accepts nothing
//   (transient = false). do_publish never runs during or after do_stop.
// - stop() is idempotent and allowed from created; a concurrent second stop() waits for the
//   first. The base serialises start/stop/subscribe/unsubscribe; do_stop runs without the lock,
//   so a handler may unsubscribe while the transport drains.
// - health() adds "kind" and "state" ("stopping" while do_stop runs) to do_health().
// - Derived destructors must call stop() themselves (the base cannot call their hooks).
// - Fork (notifications/fork.hpp): start() registers the transport with the process's fork
//   registry and stop() removes it, so prepare_fork()/after_fork() reach every started transport,
//   with or without a Bridge. prepare_fork() takes the lifecycle lock and keeps it until
//   after_fork() (no start, stop, subscribe or unsubscribe runs across fork()) and calls
//   do_prepare_fork when started; after_fork() calls do_after_fork when started. A prepare_fork()
//   while prepared, or an after_fork() while not, does nothing: a Bridge and the registry both ask.
// - In a child process forked after start() without after_fork(true) (notifications/fork.hpp),
//   the base runs no hook and takes no lock another thread may have held at fork(): publish()
//   refuses (transient = false), flush() is false, subscribe() throws, unsubscribe() does
//   nothing, stop() only marks the transport stopped, health() says "forked_child".
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
