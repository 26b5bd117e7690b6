// The JetStream transport. Contract: include/notifications/transports/jetstream.hpp.
//
// It owns a NATS transport for the connection (connecting, reconnecting, logging connection
// events, flushing and draining at stop, fork handling) and adds a JetStream context on that
// connection: provisioning, publishing with acknowledgements, and pull consumers
// (jetstream_consumer.hpp). It drives the NATS transport's lifecycle itself: it stops using the
// connection before it stops, or prepares for fork, the NATS transport.
#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "jetstream_consumer.hpp"
#include "jetstream_errors.hpp"
#include "nats_extension.hpp"
#include "transport/kit.hpp"
#include "notifications/transports/jetstream.hpp"

namespace notifications {

void validate_jetstream_options(const JetStreamOptions& options);  // jetstream_options.cpp

namespace {

using namespace jetstream_detail;
using Clock = std::chrono::steady_clock;
using detail::LogLevel;

// Room for the Nats-Msg-Id header that every publish carries, taken off the server's max_payload.
constexpr std::size_t kIdHeaderRoom = 128;
// health() asks the server for the stream's and each consumer's state, waiting at most this long.
constexpr std::int64_t kHealthWaitMs = 200;
constexpr std::uint64_t kNoGeneration = std::numeric_limits<std::uint64_t>::max();

std::int64_t millis_until(Deadline deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return std::max<std::int64_t>(left, 1);
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "\"" : ", \"") + detail::wire_text(item) + "\"";
  return "[" + out + "]";
}

// The acknowledgements of the batch being published, shared with cnats' acknowledgement handler,
// which runs on a cnats thread: it only records an outcome under a short lock.
// Thread-safety: members are atomics or guarded by `mutex`.
struct PublishAcks {
  enum class Outcome : unsigned char { unknown, stored, duplicate, failed };
  detail::Mutex mutex;
  // The messages of the batch in flight, by the natsMsg cnats hands back (a message stays
  // allocated until its acknowledgement came, so no later one can share its address meanwhile).
  std::unordered_map<const natsMsg*, std::size_t> index NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<Outcome> outcomes NOTIFICATIONS_GUARDED_BY(mutex);
  std::string error NOTIFICATIONS_GUARDED_BY(mutex);  // the first negative acknowledgement's text
  std::atomic<std::uint64_t> stored{0};
  std::atomic<std::uint64_t> duplicates{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::int64_t> pending{0};  // sent, acknowledgement not yet come
};

void on_publish_ack(jsCtx* /*js*/, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure) {
  auto* acks = static_cast<PublishAcks*>(closure);
  acks->pending.fetch_sub(1, std::memory_order_relaxed);
  auto outcome = PublishAcks::Outcome::failed;
  if (ack != nullptr) {
    outcome = ack->Duplicate ? PublishAcks::Outcome::duplicate : PublishAcks::Outcome::stored;
    (ack->Duplicate ? acks->duplicates : acks->stored).fetch_add(1, std::memory_order_relaxed);
  } else {
    acks->failed.fetch_add(1, std::memory_order_relaxed);
  }
  {
    detail::MutexLock lock(acks->mutex);
    const auto it = acks->index.find(msg);
    if (it != acks->index.end()) {  // else: of a batch that stopped waiting for it
      acks->outcomes[it->second] = outcome;
      if (outcome == PublishAcks::Outcome::failed && acks->error.empty() && error != nullptr) {
        acks->error = std::string("the server did not store message ") + std::to_string(it->second) + ": " +
                      natsStatus_GetText(error->Err) +
                      (error->ErrText != nullptr ? std::string(": ") + detail::wire_text(error->ErrText) : "");
      }
      acks->index.erase(it);
    }
  }
  natsMsg_Destroy(msg);
}

// The connection settings that keep a publisher's messages in order in the stream across a
// broken connection. cnats replays what it buffered while it knew the connection was down, and
// what waited in its write buffer, once it reconnects; what it had written to the broken socket
// is gone. The Bridge sends that again, after the replayed (later) messages: the stream would
// store them out of order (the conformance case Reconnect saw it under TSan). Written at once
// (send_asap) and with no reconnect buffer, a batch that meets a broken connection stops there
// (publish() reports the rest as not published) and nothing later reaches the stream first.
JetStreamOptions ordered_connection(JetStreamOptions options) {
  options.connection.send_asap = true;
  options.connection.reconnect_buffer_bytes = 0;
  return options;
}

// Thread-safety: as every Transport, all members may be called from any thread. TransportBase
// serialises the lifecycle; publishes are serialised here (one batch's acknowledgements at a time).
class JetStreamTransport final : public TransportBase {
 public:
  explicit JetStreamTransport(JetStreamOptions options) : options_(ordered_connection(std::move(options))) {
    validate_jetstream_options(options_);
    if (make_nats_transport(options_.connection) == nullptr) throw TransportError("jetstream: no NATS transport");
  }
  ~JetStreamTransport() override {
    try {
      stop(Clock::now() + std::chrono::seconds(5));
    } catch (...) {  // a destructor must not throw
    }
    if (forked_without_after_fork()) {
      // The parent's threads and cnats objects: not ours to join or destroy in this child.
      for (auto& [id, consumer] : consumers_) consumer->abandon();
      for (auto& consumer : retired_) consumer->abandon();
      (void)acks_.release();  // cnats' handler may still name it in the parent's image
    }
  }

  std::string kind() const override { return "jetstream"; }
  TransportCapabilities capabilities() const override {
    TransportCapabilities capabilities = kJetStreamCapabilities;
    capabilities.dedupe_window = options_.duplicate_window;
    return capabilities;
  }
  std::size_t max_message_bytes() const override {
    if (forked_without_after_fork() || core_ == nullptr) return 0;
    const std::size_t max = core_->max_message_bytes();
    return max > kIdHeaderRoom ? max - kIdHeaderRoom : max;
  }

 protected:
  void do_start() override {
    generation_.store(detail::fork_generation());
    auto core = make_nats_transport(options_.connection);
    core->start();
    {
      detail::SharedMutexWriteLock lock(context_mutex_);
      core_ = std::move(core);
    }
    try {
      open_context();
      if (connected()) provision();
    } catch (...) {
      close_context(Clock::now());
      core_->stop(Clock::now() + std::chrono::seconds(2));
      detail::SharedMutexWriteLock lock(context_mutex_);
      core_.reset();
      throw;
    }
  }

  PublishResult do_publish(std::span<const Message> batch) override {
    if (forked_without_after_fork()) {
      return PublishResult{0, false, "jetstream: used in a forked child without notifications::after_fork()"};
    }
    detail::MutexLock serial(publish_mutex_);
    // Published while reconnecting, messages would wait in cnats' reconnect buffer for
    // acknowledgements that cannot come before the reconnect: refused now, sent again then.
    if (!connected()) return PublishResult{0, true, "jetstream: not connected to the server (reconnecting)"};
    try {
      ensure_provisioned();
    } catch (const std::exception& e) {
      return PublishResult{0, true, e.what()};
    }
    {
      detail::MutexLock lock(acks_->mutex);
      acks_->index.clear();
      acks_->outcomes.assign(batch.size(), PublishAcks::Outcome::unknown);
      acks_->error.clear();
    }
    const auto deadline = Clock::now() + options_.publish_timeout;
    std::size_t sent = 0;
    std::string send_error;
    bool permanent = false;
    for (const Message& m : batch) {
      natsMsg* msg = nullptr;
      natsStatus s = natsMsg_Create(&msg, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size()));
      for (std::size_t h = 0; s == NATS_OK && h < m.headers.size(); ++h) {
        s = natsMsgHeader_Add(msg, m.headers[h].first.c_str(), m.headers[h].second.c_str());
      }
      if (s == NATS_OK) {
        detail::MutexLock lock(acks_->mutex);
        acks_->index[msg] = sent;
      }
      // No MaxWait per message: cnats 3.4.1 keeps such messages in a list sorted by deadline,
      // inserted by a walk from one end (a batch of 4,096 published at 13,000/s, against 58,000/s
      // for 256); the batch's wait below bounds them all, and renew_publish_context() forgets
      // the ones that never got an answer.
      jsPubOptions publish_options;
      jsPubOptions_Init(&publish_options);
      if (!m.id.empty()) publish_options.MsgId = m.id.c_str();
      if (s == NATS_OK) {
        acks_->pending.fetch_add(1, std::memory_order_relaxed);  // before: its acknowledgement may come at once
        s = js_PublishMsgAsync(publish_js_, &msg, &publish_options);
        if (s != NATS_OK) acks_->pending.fetch_sub(1, std::memory_order_relaxed);
      }
      if (s != NATS_OK) {
        if (msg != nullptr) {
          detail::MutexLock lock(acks_->mutex);
          acks_->index.erase(msg);
        }
        natsMsg_Destroy(msg);
        permanent = s == NATS_MAX_PAYLOAD;
        send_error = describe_js(options_, "jetstream: publishing message " + std::to_string(sent) + " to \"" +
                                     detail::wire_text(m.subject) + "\"",
                                 s, static_cast<jsErrCode>(0));
        break;
      }
      ++sent;
    }
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = millis_until(deadline);
    const natsStatus complete = sent == 0 ? NATS_OK : js_PublishAsyncComplete(publish_js_, &wait);
    if (complete != NATS_OK) renew_publish_context();
    PublishResult result;
    {
      detail::MutexLock lock(acks_->mutex);
      while (result.published < sent && (acks_->outcomes[result.published] == PublishAcks::Outcome::stored ||
                                         acks_->outcomes[result.published] == PublishAcks::Outcome::duplicate)) {
        ++result.published;
      }
      if (result.published < sent) {
        result.error = acks_->error.empty() ? "jetstream: no acknowledgement from the server within publish_timeout_ms (" +
                                                  std::to_string(options_.publish_timeout.count()) + " ms)"
                                            : "jetstream: " + acks_->error;
      }
      acks_->index.clear();  // late acknowledgements of this batch change nothing now
    }
    if (complete != NATS_OK && result.published < sent) publish_timeouts_.fetch_add(1, std::memory_order_relaxed);
    if (result.published == sent && sent < batch.size()) {
      result.error = send_error;
      result.transient = !permanent;
    }
    published_.fetch_add(result.published, std::memory_order_relaxed);
    if (!result.error.empty()) note_error(result.error);
    return result;
  }

  void do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                    DeliveryHandler handler) override {
    auto consumer = std::make_shared<Consumer>(connection_unlocked(), js_, options_, pattern, options, std::move(handler), counters_,
                                                [this] { ensure_provisioned(); });
    // Refusals that retrying cannot mend are thrown here when the server can be asked now; else
    // the fetch thread keeps trying (and logs such a refusal).
    if (connected() && provisioned_.load()) consumer->open_now();
    consumer->start();
    detail::MutexLock lock(consumers_mutex_);
    consumers_[id] = std::move(consumer);
  }

  void do_unsubscribe(std::uint64_t id) override {
    if (forked_without_after_fork()) return;
    std::shared_ptr<Consumer> consumer;
    {
      detail::MutexLock lock(consumers_mutex_);
      const auto it = consumers_.find(id);
      if (it == consumers_.end()) return;
      consumer = std::move(it->second);
      consumers_.erase(it);
    }
    // An unsubscribe has no deadline: it waits for the pull request in flight (fetch_wait).
    if (!consumer->close(Clock::now() + options_.fetch_wait + std::chrono::seconds(1))) {
      // From inside its own handler: its thread ends after the handler; finished at stop.
      detail::MutexLock lock(consumers_mutex_);
      retired_.push_back(std::move(consumer));
    }
  }

  // True when every publish so far was acknowledged (or refused) and what this process sent
  // since (settlements) reached the server, before the deadline.
  bool do_flush(Deadline deadline) override {
    if (forked_without_after_fork() || core_ == nullptr) return false;
    bool acknowledged = true;
    {
      // publish() waits for its batch's acknowledgements before it returns: nothing is left
      // unacknowledged once it does, except what it reported as not published.
      detail::MutexLock serial(publish_mutex_);
      if (publish_js_ != nullptr) {
        jsPubOptions wait;
        jsPubOptions_Init(&wait);
        wait.MaxWait = millis_until(deadline);
        acknowledged = js_PublishAsyncComplete(publish_js_, &wait) == NATS_OK;
      }
    }
    return core_->flush(deadline) && acknowledged;
  }

  void do_stop(Deadline deadline) override {
    close_consumers(deadline);
    close_context(deadline);
    if (core_ != nullptr) core_->stop(deadline);
  }

  // Each subscription is carried across fork(): the parent reads through its ephemeral consumers
  // again (kept on the server), a child creates its own from their acknowledgement floors, and
  // durable ones are the same consumers in every process.
  void do_prepare_fork(Deadline deadline) override {
    const auto consumers = take_consumers();
    for (const auto& [id, consumer] : consumers) consumer->begin_close();
    for (const auto& [id, consumer] : consumers) {
      consumer->close(deadline, /*keep_consumer=*/true);
      if (id == kRetired) continue;
      fork_consumers_.push_back(ForkConsumer{id, consumer->pattern(), consumer->options(), consumer->handler(),
                                             consumer->name(), consumer->resume_point()});
    }
    close_context(deadline);
    core_->prepare_fork(deadline);
  }

  void do_after_fork(bool in_child) override {
    core_->after_fork(in_child);
    generation_.store(detail::fork_generation());
    try {
      open_context();
      // The stream was there before fork(); only its presence is checked again, when connected.
      provisioned_.store(false);
      if (connected()) provision();
    } catch (const std::exception& e) {
      note_error(std::string("after fork: ") + e.what());
    }
    for (ForkConsumer& c : fork_consumers_) {
      try {
        auto consumer = std::make_shared<Consumer>(connection_unlocked(), js_, options_, c.pattern, c.options, c.handler, counters_,
                                                [this] { ensure_provisioned(); });
        if (!in_child) consumer->adopt(c.consumer);
        consumer->resume_after(c.resume_point);
        consumer->start();
        detail::MutexLock lock(consumers_mutex_);
        consumers_[c.id] = std::move(consumer);
      } catch (const std::exception& e) {
        note_error("after fork, subscription \"" + c.pattern + "\": " + e.what());
      }
    }
    fork_consumers_.clear();
  }

  nlohmann::json do_health() const override {
    if (forked_without_after_fork()) {
      return nlohmann::json{{"connection", "forked_child"},
                            {"forked_child", true},
                            {"published", published_.load()},
                            {"last_error", "used in a forked child without notifications::after_fork()"}};
    }
    // Against a concurrent start, stop or fork, which replace core_ and js_.
    detail::SharedMutexReadLock context_lock(context_mutex_);
    nlohmann::json h = core_ != nullptr ? core_->health() : nlohmann::json::object();
    h.erase("kind");
    h.erase("state");
    h["stream"] = options_.stream;
    h["provision"] = options_.provision == JetStreamOptions::Provision::create ? "create" : "verify";
    h["provisioned"] = provisioned_.load();
    h["published"] = published_.load();
    h["duplicates"] = acks_->duplicates.load();
    h["publish_failed"] = acks_->failed.load();
    h["publish_timeouts"] = publish_timeouts_.load();
    h["acks_pending"] = std::max<std::int64_t>(0, acks_->pending.load());
    h["stream_messages"] = -1;
    h["stream_bytes"] = -1;
    h["last_sequence"] = -1;
    jsCtx* js = js_;
    if (js != nullptr && connected()) {
      jsOptions wait;
      jsOptions_Init(&wait);
      wait.Wait = kHealthWaitMs;
      jsStreamInfo* info = nullptr;
      if (js_GetStreamInfo(&info, js, options_.stream.c_str(), &wait, nullptr) == NATS_OK) {
        h["stream_messages"] = info->State.Msgs;
        h["stream_bytes"] = info->State.Bytes;
        h["last_sequence"] = info->State.LastSeq;
        jsStreamInfo_Destroy(info);
      }
    }
    const ConsumerCounters& c = *counters_;
    h["pull_requests"] = c.pull_requests.load();
    h["fetch_errors"] = c.fetch_errors.load();
    h["delivered"] = c.delivered.load();
    h["redelivered"] = c.redelivered.load();
    h["acked"] = c.acked.load();
    h["naked"] = c.naked.load();
    h["terminated"] = c.terminated.load();
    h["in_progress"] = c.in_progress.load();
    h["settle_errors"] = c.settle_errors.load();
    h["unsettled_at_close"] = c.unsettled_at_close.load();
    h["not_handed_at_close"] = c.not_handed_at_close.load();
    h["requests_cut_short"] = c.requests_cut_short.load();
    h["consumers_recreated"] = c.consumers_recreated.load();
    h["consumer_type"] = options_.consumer_type == JetStreamOptions::ConsumerType::push ? "push" : "pull";
    h["flow_control_replies"] = c.flow_control_replies.load();
    nlohmann::json subscriptions = nlohmann::json::array();
    std::vector<std::shared_ptr<Consumer>> consumers;
    {
      detail::MutexLock lock(consumers_mutex_);
      for (const auto& [id, consumer] : consumers_) consumers.push_back(consumer);
    }
    for (const auto& consumer : consumers) {
      subscriptions.push_back(consumer->health(connected() ? js : nullptr, options_.stream));
      if (const std::string e = consumer->last_error(); !e.empty() && last_error().empty()) h["last_error"] = e;
    }
    h["subscriptions"] = std::move(subscriptions);
    if (const std::string e = last_error(); !e.empty()) h["last_error"] = e;
    return h;
  }

 private:
  struct ForkConsumer {
    std::uint64_t id;
    std::string pattern;
    DeliveryOptions options;
    DeliveryHandler handler;
    std::string consumer;        // its name on the server
    std::uint64_t resume_point;  // Consumer::resume_point()
  };
  static constexpr std::uint64_t kRetired = 0;  // the id take_consumers() gives retired consumers

  // core_'s connection; read by the calls that TransportBase never runs beside start, stop or fork.
  natsConnection* connection_unlocked() const { return core_ == nullptr ? nullptr : nats_detail::connection_of(*core_); }

  bool connected() const {
    if (core_ == nullptr) return false;
    natsConnection* nc = nats_detail::connection_of(*core_);
    return nc != nullptr && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
  }

  void open_context() {
    jsCtx* js = make_context();
    jsCtx* publishing = nullptr;
    try {
      publishing = make_context();
    } catch (...) {
      jsCtx_Destroy(js);
      throw;
    }
    {
      detail::MutexLock serial(publish_mutex_);
      publish_js_ = publishing;
    }
    detail::SharedMutexWriteLock lock(context_mutex_);
    js_ = js;
  }

  // The publishing context, made again after a batch whose acknowledgements did not all come:
  // cnats would keep the unanswered ones pending forever (they count against max_pending_acks).
  void renew_publish_context() NOTIFICATIONS_REQUIRES(publish_mutex_) {
    jsCtx* fresh = nullptr;
    try {
      fresh = make_context();
    } catch (const std::exception& e) {
      note_error(e.what());
      return;  // the old one stays
    }
    jsCtx_Destroy(publish_js_);
    publish_js_ = fresh;
    acks_->pending.store(0, std::memory_order_relaxed);
  }

  jsCtx* make_context() {
    natsConnection* nc = nats_detail::connection_of(*core_);
    if (nc == nullptr) throw TransportError("jetstream: the NATS connection is not open");
    jsOptions js_options;
    jsOptions_Init(&js_options);
    js_options.Wait = options_.api_timeout.count();
    js_options.PublishAsync.MaxPending = options_.max_pending_acks;
    js_options.PublishAsync.AckHandler = on_publish_ack;
    js_options.PublishAsync.AckHandlerClosure = acks_.get();
    js_options.PublishAsync.StallWait = options_.publish_timeout.count();
    jsCtx* js = nullptr;
    const natsStatus s = natsConnection_JetStream(&js, nc, &js_options);
    if (s != NATS_OK) throw TransportError(describe_js(options_, "jetstream: creating the JetStream context", s, static_cast<jsErrCode>(0)));
    return js;
  }

  // Waits for the acknowledgements still due (until the deadline) and destroys the context.
  void close_context(Deadline deadline) {
    {
      detail::MutexLock serial(publish_mutex_);
      if (publish_js_ != nullptr && connected()) {
        jsPubOptions wait;
        jsPubOptions_Init(&wait);
        wait.MaxWait = millis_until(deadline);
        js_PublishAsyncComplete(publish_js_, &wait);
      }
      jsCtx_Destroy(publish_js_);
      publish_js_ = nullptr;
    }
    if (js_ == nullptr) return;
    jsCtx* js = nullptr;
    {
      detail::SharedMutexWriteLock lock(context_mutex_);
      std::swap(js, js_);
    }
    jsCtx_Destroy(js);
    provisioned_.store(false);
  }

  // Every consumer, by subscription id (kRetired for those closed from inside their handler),
  // taken out of the maps.
  std::vector<std::pair<std::uint64_t, std::shared_ptr<Consumer>>> take_consumers() {
    std::vector<std::pair<std::uint64_t, std::shared_ptr<Consumer>>> consumers;
    detail::MutexLock lock(consumers_mutex_);
    for (auto& [id, consumer] : consumers_) consumers.emplace_back(id, std::move(consumer));
    for (auto& consumer : retired_) consumers.emplace_back(kRetired, std::move(consumer));
    consumers_.clear();
    retired_.clear();
    return consumers;
  }

  // Closes every consumer by `deadline` (see Consumer::close): all stop fetching first, so that
  // their pull requests end together.
  void close_consumers(Deadline deadline) {
    const auto consumers = take_consumers();
    for (const auto& [id, consumer] : consumers) consumer->begin_close();
    for (const auto& [id, consumer] : consumers) consumer->close(deadline);
  }

  // provision() unless it is done, or while not connected (then asking cannot help: the caller's
  // own request fails, and it tries again later). Called by publishes and by consumers, so that a
  // process that only subscribes, started while the server was away, provisions the stream too.
  void ensure_provisioned() {
    if (provisioned_.load(std::memory_order_acquire) || !connected()) return;
    detail::MutexLock lock(provision_mutex_);
    if (!provisioned_.load(std::memory_order_acquire)) provision_locked();
  }

  // Creates or checks the stream (see the header's "Provisioning"); throws TransportError.
  void provision() {
    detail::MutexLock lock(provision_mutex_);
    provision_locked();
  }

  void provision_locked() NOTIFICATIONS_REQUIRES(provision_mutex_) {
    const std::string& name = options_.stream;
    jsErrCode code = static_cast<jsErrCode>(0);
    jsStreamInfo* info = nullptr;
    natsStatus s = js_GetStreamInfo(&info, js_, name.c_str(), nullptr, &code);
    const bool verify = options_.provision == JetStreamOptions::Provision::verify;
    if (s == NATS_NO_RESPONDERS) {
      throw TransportError("jetstream: no JetStream at " + redact_url(core_health_server()) +
                           ": the server runs without JetStream (nats-server -js), or it is not enabled for this account");
    }
    if (s == NATS_OK) {
      std::vector<std::string> existing;
      for (int i = 0; i < info->Config->SubjectsLen; ++i) existing.emplace_back(info->Config->Subjects[i]);
      const jsStreamConfig& have = *info->Config;
      const bool limits_differ = have.Duplicates != nanos(options_.duplicate_window) ||
                                 have.MaxAge != nanos(options_.max_age) || have.MaxMsgs != options_.max_messages ||
                                 have.MaxBytes != options_.max_bytes;
      jsStreamInfo_Destroy(info);
      std::vector<std::string> missing;
      for (const std::string& subject : options_.subjects) {
        if (std::find(existing.begin(), existing.end(), subject) == existing.end()) missing.push_back(subject);
      }
      if (verify) {
        if (!missing.empty()) {
          throw TransportError("jetstream: stream \"" + name + "\" does not store subjects " + joined(missing) +
                               " (it stores " + joined(existing) + "); provision=verify leaves it as it is: add them "
                               "to the stream, or change \"subjects\"");
        }
      } else if (!missing.empty() || limits_differ) {
        std::vector<std::string> subjects = existing;
        subjects.insert(subjects.end(), missing.begin(), missing.end());
        write_stream(subjects, /*update=*/true);
      }
    } else if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) {
      if (verify) {
        throw TransportError("jetstream: stream \"" + name + "\" does not exist, and provision=verify does not create "
                             "it: create it (subjects " + joined(options_.subjects) + "), or use provision=create "
                             "with credentials that may");
      }
      write_stream(options_.subjects, /*update=*/false);
    } else {
      throw TransportError(describe_js(options_, "jetstream: reading stream \"" + name + "\"", s, code));
    }
    provisioned_.store(true, std::memory_order_release);
  }

  void write_stream(const std::vector<std::string>& subjects, bool update) {
    std::vector<const char*> subject_ptrs;
    for (const std::string& s : subjects) subject_ptrs.push_back(s.c_str());
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = options_.stream.c_str();
    config.Subjects = subject_ptrs.data();
    config.SubjectsLen = static_cast<int>(subject_ptrs.size());
    config.Storage = options_.file_storage ? js_FileStorage : js_MemoryStorage;
    config.Replicas = options_.replicas;
    config.Duplicates = nanos(options_.duplicate_window);
    config.MaxAge = nanos(options_.max_age);
    config.MaxMsgs = options_.max_messages;
    config.MaxBytes = options_.max_bytes;
    jsErrCode code = static_cast<jsErrCode>(0);
    jsStreamInfo* info = nullptr;
    const natsStatus s = update ? js_UpdateStream(&info, js_, &config, nullptr, &code)
                                : js_AddStream(&info, js_, &config, nullptr, &code);
    jsStreamInfo_Destroy(info);
    if (s == NATS_OK) {
      detail::log(LogLevel::info, "notifications jetstream: stream \"{}\" {} (subjects {})", options_.stream,
                  update ? "updated" : "created", joined(subjects));
      return;
    }
    if (code == JSStreamSubjectOverlapErr) {
      throw TransportError("jetstream: stream \"" + options_.stream + "\": subjects " + joined(subjects) +
                           " overlap with another stream's subjects; a subject may belong to one stream only: "
                           "change \"subjects\", or use that stream (\"stream\")");
    }
    throw TransportError(describe_js(options_, std::string("jetstream: ") + (update ? "updating" : "creating") + " stream \"" +
                                         options_.stream + "\"",
                                     s, code));
  }

  std::string core_health_server() const {
    try {
      return core_->health().value("server", std::string());
    } catch (...) {
      return {};
    }
  }

  void note_error(const std::string& text) {
    detail::MutexLock lock(error_mutex_);
    last_error_ = text;
  }
  std::string last_error() const {
    detail::MutexLock lock(error_mutex_);
    return last_error_;
  }

  bool forked_without_after_fork() const {
    const std::uint64_t generation = generation_.load(std::memory_order_relaxed);
    return generation != kNoGeneration && generation != detail::fork_generation();
  }

  const JetStreamOptions options_;
  // Written (exclusively) by the lifecycle calls only: start, stop and fork, which TransportBase
  // never runs beside publish or subscribe, so these read core_ and js_ without it; health(),
  // which may run beside anything, reads them under it.
  mutable detail::SharedMutex context_mutex_;
  // The NATS transport whose connection this one uses; made by each start.
  std::unique_ptr<Transport> core_;
  // The JetStream context on core_'s connection, for the JetStream API (streams, consumers).
  jsCtx* js_ = nullptr;
  detail::Mutex provision_mutex_;  // one provision() at a time (publishes, consumers, start)
  std::atomic<bool> provisioned_{false};
  std::atomic<std::uint64_t> generation_{kNoGeneration};
  // Lives as long as the transport: cnats' acknowledgement handler may run after a batch ended.
  std::unique_ptr<PublishAcks> acks_ = std::make_unique<PublishAcks>();
  detail::Mutex publish_mutex_;  // one batch at a time
  // The context that publishes (its own, so that it can be made again: see renew_publish_context).
  jsCtx* publish_js_ NOTIFICATIONS_GUARDED_BY(publish_mutex_) = nullptr;
  std::atomic<std::uint64_t> published_{0};
  std::atomic<std::uint64_t> publish_timeouts_{0};
  std::shared_ptr<ConsumerCounters> counters_ = std::make_shared<ConsumerCounters>();
  mutable detail::Mutex consumers_mutex_;
  std::map<std::uint64_t, std::shared_ptr<Consumer>> consumers_ NOTIFICATIONS_GUARDED_BY(consumers_mutex_);
  // Closed from inside their own handler; their threads are joined at stop.
  std::vector<std::shared_ptr<Consumer>> retired_ NOTIFICATIONS_GUARDED_BY(consumers_mutex_);
  std::vector<ForkConsumer> fork_consumers_;  // between prepare_fork and after_fork
  mutable detail::Mutex error_mutex_;
  std::string last_error_ NOTIFICATIONS_GUARDED_BY(error_mutex_);
};

}  // namespace

std::unique_ptr<Transport> make_jetstream_transport(JetStreamOptions options) {
  return std::make_unique<JetStreamTransport>(std::move(options));
}

void register_jetstream_transport() {
  register_nats_transport();  // cnats' own fork handling
  register_transport("jetstream", [](const TransportConfig& config) {
    return make_jetstream_transport(jetstream_options_from_config(config));
  });
}

}  // namespace notifications

// Linking notifications::jetstream registers the scheme before main(); the target's link options
// name this symbol so that the linker keeps this object file.
extern "C" int notifications_jetstream_registered;
int notifications_jetstream_registered = [] {
  notifications::register_jetstream_transport();
  return 1;
}();
