// Private to the JetStream transport: one subscription, read through a pull consumer (or, with
// consumer_type push, a push consumer: jetstream_push.cpp) by a thread of its own. That thread
// creates (or checks) the consumer, sends pull requests to it itself (one at a time, each a new
// request, so consuming resumes by itself after a reconnect), reads the answers from a
// subscription of its own inbox, creates the consumer again when the server lost it, and hands
// every message to the DeliveryHandler with settle and in_progress bound to that message. A push
// consumer sends no requests: the thread reads what the server pushes to the deliver subject,
// answers flow control, and asks for the consumer when even the heartbeats stopped.
//
// Why not cnats' pull subscriptions (js_PullSubscribe and natsSubscription_Fetch): in 3.4.1 a
// fetch returns only once its batch is full or its wait is over (a message that arrives alone
// waits for fetch_wait: 260 ms at p50 at 1,000 events/s), and a fetch that finds messages of an
// earlier request in its subscription writes past its array (docs/jetstream.md).
//
// Thread-safety: open_now(), close(), health() and settle calls may come from any thread; close()
// is idempotent. The connection and JetStream context passed to the constructor must outlive
// close().
#pragma once

#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "transport/kit.hpp"
#include "notifications/transports/jetstream.hpp"

namespace notifications::jetstream_detail {

// A duration as the JetStream API writes it: nanoseconds.
inline std::int64_t nanos(std::chrono::milliseconds ms) { return static_cast<std::int64_t>(ms.count()) * 1'000'000; }

// Waits between attempts to create a consumer or after a failed read: doubling up to the last.
inline constexpr std::chrono::milliseconds kFirstRetry{20};
inline constexpr std::chrono::milliseconds kLastRetry{1'000};
// A pull request whose end the server has not announced this long after its expiry is taken as
// lost (the connection broke, or the server restarted, while it waited); for a push consumer,
// the grace after twice idle_heartbeat of silence.
inline constexpr std::chrono::milliseconds kRequestGrace{1'000};

// Counters over the transport's life, shared with every delivery still held by someone.
struct ConsumerCounters {
  std::atomic<std::uint64_t> pull_requests{0};
  std::atomic<std::uint64_t> fetch_errors{0};
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> redelivered{0};
  std::atomic<std::uint64_t> acked{0};
  std::atomic<std::uint64_t> naked{0};
  std::atomic<std::uint64_t> terminated{0};
  std::atomic<std::uint64_t> in_progress{0};
  std::atomic<std::uint64_t> settle_errors{0};
  std::atomic<std::uint64_t> unsettled_at_close{0};
  std::atomic<std::uint64_t> not_handed_at_close{0};
  std::atomic<std::uint64_t> requests_cut_short{0};  // closed mid-request at a deadline
  std::atomic<std::uint64_t> consumers_recreated{0};
  std::atomic<std::uint64_t> flow_control_replies{0};  // push consumers
};

// Whether the messages of one subscription may still be settled: closing takes it exclusively,
// a settle shares it while it talks to cnats.
struct SubscriptionLife {
  detail::SharedMutex mutex;
  bool open NOTIFICATIONS_GUARDED_BY(mutex) = true;
};

// The name of the durable consumer for these options ("" for an ephemeral one): the durable name,
// or the group's name followed by a hash of the pattern.
std::string consumer_name(const std::string& pattern, const DeliveryOptions& options);

class Consumer {
 public:
  // `ensure_stream` is called before each attempt to create or check the consumer: it provisions
  // the stream when that was not done yet (a process that only subscribes, started while the
  // server was away), and throws TransportError when it cannot.
  Consumer(natsConnection* nc, jsCtx* js, const JetStreamOptions& transport_options, std::string pattern,
           DeliveryOptions options, DeliveryHandler handler, std::shared_ptr<ConsumerCounters> counters,
           std::function<void()> ensure_stream);
  ~Consumer();  // close(), waiting at most fetch_wait plus a second
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // Creates (or checks) the consumer and the inbox subscription now. Throws TransportError naming
  // what the server refused when retrying cannot help (a durable name bound to another pattern, a
  // pattern outside the stream); returns false when it should be retried (not connected, the
  // server did not answer), which the fetch thread then does.
  bool open_now();
  // Starts the fetch thread.
  void start();
  // Stops fetching and handing over, without waiting: close() then waits less when the pull
  // requests of several consumers end together.
  void begin_close();
  // Stops fetching, closes the subscription (an ephemeral consumer is removed, a durable one
  // kept) and makes later settles no-ops. It waits for the pull request in flight to end (within
  // fetch_wait), or until `deadline`, whichever comes first: nats-server 2.9 hands a message whose
  // pull request's subscription went away back to the consumer with its delivery count lowered,
  // and so may deliver an acknowledged message again (seen here: the conformance case
  // ContinueAfterSubscriberClose); only a deadline shorter than that wait cuts the request short
  // and takes that risk (the Bridge's redelivery suppression and a durable handler's inbox then
  // drop such a repeat). What the last request brings is not handed over; the server delivers it
  // again after ack_wait. Called from the fetch thread (from inside the handler) it only stops
  // fetching and delivering and returns false: the thread ends once the handler returns, and a
  // later close() from another thread (which the owner must make before destroying the Consumer)
  // finishes the job and returns true.
  // With `keep_consumer`, an ephemeral consumer is kept too (prepare_fork: the parent adopts it
  // again after fork()).
  bool close(Deadline deadline, bool keep_consumer = false);
  // Leaves the thread and the cnats objects alone: for a child forked without after_fork().
  void abandon();

  // Where a new ephemeral consumer for this subscription would start after close(): after the
  // consumer's acknowledgement floor as the server reported it at close (so that nothing it had
  // not acknowledged is skipped), or after the last message handed over when it could not be
  // asked; 0 when neither is known (the subscription's own start position applies).
  std::uint64_t resume_point() const { return resume_point_.load(); }
  // Before start(): a new ephemeral consumer begins after `sequence` (0: at the subscription's
  // start position); used for a subscription carried across fork().
  void resume_after(std::uint64_t sequence) { last_stream_sequence_.store(sequence); }
  // Before start(): reads through the existing ephemeral consumer `name` (the parent after fork(),
  // whose consumer close(deadline, true) kept), or creates one when the server no longer has it.
  void adopt(const std::string& name);

  const std::string& pattern() const { return pattern_; }
  const DeliveryOptions& options() const { return options_; }
  const DeliveryHandler& handler() const { return handler_; }
  // The consumer's name, "" while an ephemeral one is not created.
  std::string name() const;
  nlohmann::json health(jsCtx* js, const std::string& stream) const;
  std::string last_error() const;

 private:
  // What one message read from the inbox is.
  enum class Read { message, request_over, heartbeat, consumer_missing };

  bool push() const { return transport_options_.consumer_type == JetStreamOptions::ConsumerType::push; }
  void run();
  // The fetch thread of a push consumer (jetstream_push.cpp).
  void run_push();
  // Subscribes to `subject` (a push consumer with a group: as a queue subscription); notes the
  // error and returns it when cnats refuses.
  natsStatus subscribe_sync(const std::string& subject, natsSubscription** sub);
  // Creates the consumer (or reads it, to check that a durable one has this pattern). Returns the
  // cnats status, with what went wrong in `why`; the consumer's name in `name`.
  // Push: `deliver` is the subject a new consumer delivers to, and becomes an existing one's.
  natsStatus ensure_consumer(std::string& name, std::string& deliver, std::string& why, bool& permanent);
  bool send_pull_request();
  Read classify(natsMsg* msg) const;
  // Hands `msg` over; `open_requests` bounds the statuses that may still be pending in `sub`.
  void deliver(natsMsg* msg, natsSubscription* sub, int open_requests);
  void note_error(const std::string& text);
  // A failed read of the subscription (`what`: "the pull inbox", "the deliver subject"): counted,
  // noted, then a pause of `retry`, which doubles up to kLastRetry.
  void read_failed(natsStatus status, const std::string& what, std::chrono::milliseconds& retry);
  // Waits up to `delay` unless closing.
  void pause(std::chrono::milliseconds delay);
  // Unsubscribes and forgets the inbox subscription (close(), once the fetch thread ended).
  void drop_subscription();

  natsConnection* nc_;
  jsCtx* js_;
  const JetStreamOptions& transport_options_;
  const std::string pattern_;
  const DeliveryOptions options_;
  const DeliveryHandler handler_;
  const std::string durable_name_;  // "" for an ephemeral consumer
  std::shared_ptr<ConsumerCounters> counters_;
  const std::function<void()> ensure_stream_;
  std::shared_ptr<SubscriptionLife> life_ = std::make_shared<SubscriptionLife>();

  mutable detail::Mutex mutex_;
  std::condition_variable closing_changed_;  // on mutex_: closing_, finished_
  bool closing_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  std::atomic<bool> closed_{false};  // closing_, for the delivery loop's check without the lock
  bool finished_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;    // run() returned
  natsSubscription* sub_ NOTIFICATIONS_GUARDED_BY(mutex_) = nullptr;  // the inbox subscription
  std::string inbox_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::string consumer_ NOTIFICATIONS_GUARDED_BY(mutex_);  // the consumer's name once created
  std::string last_error_ NOTIFICATIONS_GUARDED_BY(mutex_);
  // The stream sequence of the last message handed over: an ephemeral consumer that the server
  // lost is created again from the one after it.
  std::atomic<std::uint64_t> last_stream_sequence_{0};
  std::atomic<std::uint64_t> resume_point_{0};  // see resume_point()
  std::unique_ptr<std::thread> thread_;
};

}  // namespace notifications::jetstream_detail
