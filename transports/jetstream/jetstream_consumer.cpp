// One subscription of the JetStream transport (jetstream_consumer.hpp): what pull and push share,
// and the pull loop.
#include "jetstream_consumer.hpp"

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <functional>
#include <limits>
#include <utility>

#include "jetstream_errors.hpp"

namespace notifications::jetstream_detail {

namespace {

using Clock = std::chrono::steady_clock;
using detail::LogLevel;

constexpr const char* kIdHeader = "Nats-Msg-Id";
constexpr std::string_view kAckPrefix = "$JS.ACK.";

// A fetched message with what settles it: the JetStream acknowledgement protocol, published to
// the message's reply subject on the transport's connection. Destroyed (with its natsMsg) when
// the last Delivery copy holding it goes.
// Thread-safety: settle and in_progress may be called from any thread (an atomic flag, and the
// subscription's life lock shared while cnats is called).
class HeldMessage {
 public:
  HeldMessage(natsMsg* msg, natsConnection* nc, std::shared_ptr<SubscriptionLife> life,
              std::shared_ptr<ConsumerCounters> counters)
      : msg_(msg), nc_(nc), life_(std::move(life)), counters_(std::move(counters)) {}
  ~HeldMessage() { natsMsg_Destroy(msg_); }
  HeldMessage(const HeldMessage&) = delete;
  HeldMessage& operator=(const HeldMessage&) = delete;

  void settle(Settlement how) {
    if (settled_.exchange(true)) return;  // settle once; later calls do nothing
    std::string body;
    switch (how.outcome) {
      case Settle::ack:
        body = "+ACK";
        counters_->acked.fetch_add(1, std::memory_order_relaxed);
        break;
      case Settle::nak:
        body = how.delay.count() > 0 ? "-NAK {\"delay\":" + std::to_string(nanos(how.delay)) + "}" : "-NAK";
        counters_->naked.fetch_add(1, std::memory_order_relaxed);
        break;
      case Settle::term:
        body = "+TERM";
        counters_->terminated.fetch_add(1, std::memory_order_relaxed);
        break;
    }
    if (!send(body)) return;
  }

  void in_progress() {
    if (settled_.load()) return;
    if (send("+WPI")) counters_->in_progress.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  // False when not sent: the subscription is closed (counted; the server delivers the message
  // again after ack_wait) or the connection refused it.
  bool send(const std::string& body) {
    detail::SharedMutexReadLock lock(life_->mutex);
    if (!life_->open) {
      counters_->unsettled_at_close.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    const char* reply = natsMsg_GetReply(msg_);
    if (reply == nullptr || natsConnection_PublishString(nc_, reply, body.c_str()) != NATS_OK) {
      counters_->settle_errors.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  natsMsg* msg_;
  natsConnection* nc_;
  std::shared_ptr<SubscriptionLife> life_;
  std::shared_ptr<ConsumerCounters> counters_;
  std::atomic<bool> settled_{false};
};

// FNV-1a, for a consumer name that tells patterns apart.
std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// RFC 3339 in UTC with all nine digits of the fraction.
std::string rfc3339_nanos(std::chrono::system_clock::time_point at) {
  const auto since = std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count();
  std::int64_t seconds = since / 1'000'000'000;
  std::int64_t fraction = since % 1'000'000'000;
  if (fraction < 0) {
    fraction += 1'000'000'000;
    --seconds;
  }
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm utc{};
  gmtime_r(&t, &utc);
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%09lldZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<long long>(fraction));
  return text;
}

void set_start(nlohmann::json& config, const StartPosition& start) {
  switch (start.kind) {
    case StartPosition::Kind::new_only:
      config["deliver_policy"] = "new";
      break;
    case StartPosition::Kind::all_retained:
      config["deliver_policy"] = "all";
      break;
    case StartPosition::Kind::from_time:
      config["deliver_policy"] = "by_start_time";
      config["opt_start_time"] = rfc3339_nanos(start.time);
      break;
    case StartPosition::Kind::from_sequence:
      config["deliver_policy"] = "by_start_sequence";
      config["opt_start_seq"] = std::max<std::uint64_t>(start.sequence, 1);
      break;
  }
}

}  // namespace

std::string consumer_name(const std::string& pattern, const DeliveryOptions& options) {
  if (!options.durable.empty()) return options.durable;
  if (options.group.empty()) return {};
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(fnv1a(pattern)));
  return options.group + "_" + hash;
}

Consumer::Consumer(natsConnection* nc, jsCtx* js, const JetStreamOptions& transport_options, std::string pattern,
                   DeliveryOptions options, DeliveryHandler handler, std::shared_ptr<ConsumerCounters> counters,
                   std::function<void()> ensure_stream)
    : nc_(nc),
      js_(js),
      transport_options_(transport_options),
      pattern_(std::move(pattern)),
      options_(std::move(options)),
      handler_(std::move(handler)),
      durable_name_(consumer_name(pattern_, options_)),
      counters_(std::move(counters)),
      ensure_stream_(std::move(ensure_stream)) {
  // The server refuses these in a consumer name; say so before asking it.
  for (const char c : durable_name_) {
    if (c == '.' || c == '*' || c == '>' || c == ' ' || c == '\t' || c == '/' || c == '\\') {
      throw TransportError(std::string("jetstream: ") + (options_.durable.empty() ? "group" : "durable") + " \"" +
                           detail::wire_text(durable_name_) + "\": a consumer name must not contain '.', '*', '>', "
                           "'/', '\\' or whitespace");
    }
  }
}

Consumer::~Consumer() { close(Clock::now() + transport_options_.fetch_wait + kRequestGrace); }

std::string Consumer::name() const {
  detail::MutexLock lock(mutex_);
  return consumer_.empty() ? durable_name_ : consumer_;
}

std::string Consumer::last_error() const {
  detail::MutexLock lock(mutex_);
  return last_error_;
}

void Consumer::note_error(const std::string& text) {
  detail::MutexLock lock(mutex_);
  last_error_ = text;
}

natsStatus Consumer::ensure_consumer(std::string& name, std::string& deliver, std::string& why, bool& permanent) {
  permanent = false;
  if (ensure_stream_) ensure_stream_();
  jsErrCode code = static_cast<jsErrCode>(0);
  const std::string& stream = transport_options_.stream;
  // A durable consumer by its name; an ephemeral one that exists already is used again.
  const std::string known = durable_name_.empty() ? name : durable_name_;
  jsConsumerInfo* info = nullptr;
  natsStatus s = NATS_NOT_FOUND;
  if (!known.empty()) s = js_GetConsumerInfo(&info, js_, stream.c_str(), known.c_str(), nullptr, &code);
  if (s == NATS_OK) {
    const std::string filter = info->Config->FilterSubject == nullptr ? "" : info->Config->FilterSubject;
    const std::string existing_deliver = info->Config->DeliverSubject == nullptr ? "" : info->Config->DeliverSubject;
    jsConsumerInfo_Destroy(info);
    if (push() == existing_deliver.empty()) {
      permanent = true;
      why = std::string("consumer \"") + known + "\" of stream \"" + stream + "\" is a " +
            (push() ? "pull" : "push") + " consumer, and consumer_type is " + (push() ? "push" : "pull") + ": " +
            (options_.durable.empty() ? "give the group another name" : "give the durable another name") +
            " (option \"" + (options_.durable.empty() ? "group" : "durable") + "\"), or change consumer_type";
      return NATS_ERR;
    }
    if (filter != pattern_) {
      permanent = true;
      why = std::string("consumer \"") + known + "\" of stream \"" + stream + "\" reads \"" +
            detail::wire_text(filter) + "\", not \"" + detail::wire_text(pattern_) + "\": " +
            (options_.durable.empty() ? "give the group another name" : "give the durable another name") +
            " (option \"" + (options_.durable.empty() ? "group" : "durable") + "\")";
      return NATS_ERR;
    }
    name = known;
    deliver = existing_deliver;
    return NATS_OK;
  }
  if (s != NATS_NOT_FOUND && code != JSConsumerNotFoundErr) {
    why = describe_js(transport_options_, "reading consumer \"" + known + "\"", s, code);
    return s;
  }
  // Created with the JetStream API's own request, not js_AddConsumer: cnats 3.4.1 writes the
  // fraction of opt_start_time without its leading zeros (0.05 s becomes ".5"), which moved a
  // from_time start up to 0.9 s later (the conformance case StartPositionsAreHonoured, now and
  // then).
  nlohmann::json config{{"ack_policy", "explicit"},
                        {"ack_wait", nanos(options_.ack_wait.count() > 0 ? options_.ack_wait : transport_options_.ack_wait)},
                        {"filter_subject", pattern_},
                        {"replay_policy", "instant"}};
  if (push()) {
    // The server pushes to `deliver`; a group's members share it as a queue group. It allows flow
    // control and heartbeats only without a deliver group.
    config["deliver_subject"] = deliver;
    if (!options_.group.empty()) {
      config["deliver_group"] = options_.group;
    } else {
      config["flow_control"] = true;
      config["idle_heartbeat"] = nanos(transport_options_.idle_heartbeat);
    }
  } else {
    config["max_waiting"] = transport_options_.max_waiting;
  }
  const std::uint32_t max_deliveries =
      options_.max_deliveries > 0 ? options_.max_deliveries : transport_options_.max_deliveries;
  config["max_deliver"] = max_deliveries > 0 ? static_cast<std::int64_t>(max_deliveries) : -1;
  if (options_.ordered) config["max_ack_pending"] = 1;
  set_start(config, options_.start);
  std::string subject = "$JS.API.CONSUMER.CREATE." + stream;
  if (!durable_name_.empty()) {
    config["durable_name"] = durable_name_;
    subject = "$JS.API.CONSUMER.DURABLE.CREATE." + stream + "." + durable_name_;
  } else {
    // Ephemeral: removed at close, or by the server once nobody asked for this long. Created
    // again after a loss from the message after the last one handed over.
    config["inactive_threshold"] = nanos(transport_options_.inactive_threshold);
    if (const std::uint64_t last = last_stream_sequence_.load(); last > 0) {
      config.erase("opt_start_time");
      config["deliver_policy"] = "by_start_sequence";
      config["opt_start_seq"] = last + 1;
    }
  }
  const std::string request = nlohmann::json{{"stream_name", stream}, {"config", config}}.dump();
  natsMsg* reply = nullptr;
  s = natsConnection_Request(&reply, nc_, subject.c_str(), request.data(), static_cast<int>(request.size()),
                             transport_options_.api_timeout.count());
  const std::string what = "creating a consumer of stream \"" + stream + "\" for \"" + pattern_ + "\"";
  if (s != NATS_OK) {
    why = describe_js(transport_options_, what, s, static_cast<jsErrCode>(0));
    return s;
  }
  const char* data = natsMsg_GetData(reply);
  const nlohmann::json answer =
      nlohmann::json::parse(data == nullptr ? "" : std::string(data, static_cast<std::size_t>(natsMsg_GetDataLength(reply))),
                            nullptr, false);
  natsMsg_Destroy(reply);
  if (answer.is_discarded() || !answer.is_object()) {
    why = what + ": the server's answer is not JSON";
    return NATS_ERR;
  }
  if (const auto error = answer.find("error"); error != answer.end() && error->is_object()) {
    code = static_cast<jsErrCode>(error->value("err_code", 0));
    why = what + ": JetStream error " + std::to_string(static_cast<int>(code)) + ": " +
          detail::wire_text(error->value("description", std::string("(no description)")));
    permanent = is_configuration_error(code);
    return NATS_ERR;
  }
  name = answer.value("name", durable_name_);
  return NATS_OK;
}

natsStatus Consumer::subscribe_sync(const std::string& subject, natsSubscription** sub) {
  // A push consumer's deliver group: its members share the deliver subject as a queue group.
  const bool queue = push() && !options_.group.empty();
  natsStatus s = queue ? natsConnection_QueueSubscribeSync(sub, nc_, subject.c_str(), options_.group.c_str())
                       : natsConnection_SubscribeSync(sub, nc_, subject.c_str());
  if (s == NATS_OK) s = natsSubscription_SetPendingLimits(*sub, -1, -1);
  if (s != NATS_OK) {
    note_error(describe_js(transport_options_, std::string("subscribing to the ") + (push() ? "deliver subject" : "pull inbox"),
                           s, static_cast<jsErrCode>(0)));
    natsSubscription_Destroy(*sub);
    *sub = nullptr;
  }
  return s;
}

bool Consumer::open_now() {
  std::string name;
  {
    detail::MutexLock lock(mutex_);
    name = consumer_;
  }
  // Pull: the inbox the pull requests name. Push: subscribed before the consumer is created, so
  // that the server's first pushes find this subscription.
  natsInbox* inbox = nullptr;
  if (natsInbox_Create(&inbox) != NATS_OK) {
    note_error("jetstream: cannot create an inbox name");
    return false;
  }
  std::string deliver = inbox;
  natsInbox_Destroy(inbox);
  natsSubscription* sub = nullptr;
  if (subscribe_sync(deliver, &sub) != NATS_OK) return false;
  const auto unsubscribe = [](natsSubscription* s) {
    natsSubscription_Unsubscribe(s);
    natsSubscription_Destroy(s);
  };
  const std::string inbox_name = deliver;
  std::string why;
  bool permanent = false;
  natsStatus ensured = NATS_ERR;
  try {
    ensured = ensure_consumer(name, deliver, why, permanent);
  } catch (...) {  // the stream could not be provisioned
    unsubscribe(sub);
    throw;
  }
  if (ensured != NATS_OK) {
    unsubscribe(sub);
    if (permanent) throw TransportError("jetstream: " + why);
    note_error(why);
    return false;
  }
  if (push() && deliver != inbox_name) {
    // An existing push consumer: read through its own deliver subject.
    unsubscribe(sub);
    sub = nullptr;
    if (subscribe_sync(deliver, &sub) != NATS_OK) return false;
  }
  detail::MutexLock lock(mutex_);
  consumer_ = name;
  if (closing_ || sub_ != nullptr) {
    // Closed meanwhile (or opened by the thread): this one is not needed.
    unsubscribe(sub);
    return true;
  }
  sub_ = sub;
  inbox_ = inbox_name;
  return true;
}

void Consumer::start() {
  thread_ = std::make_unique<std::thread>([this] {
    detail::name_this_thread("ntf-js-fetch");
    if (push()) {
      run_push();
    } else {
      run();
    }
    {
      detail::MutexLock lock(mutex_);
      finished_ = true;
    }
    closing_changed_.notify_all();
  });
}

void Consumer::read_failed(natsStatus status, const std::string& what, std::chrono::milliseconds& retry) {
  counters_->fetch_errors.fetch_add(1, std::memory_order_relaxed);
  note_error(describe_js(transport_options_, "reading " + what + " of \"" + pattern_ + "\"", status,
                         static_cast<jsErrCode>(0)));
  pause(retry);
  retry = std::min(retry * 2, kLastRetry);
}

void Consumer::pause(std::chrono::milliseconds delay) {
  detail::UniqueMutexLock lock(mutex_);
  const auto until = Clock::now() + delay;
  while (!closing_ && Clock::now() < until) lock.wait_until(closing_changed_, until);
}

bool Consumer::send_pull_request() {
  std::string subject;
  std::string inbox;
  {
    detail::MutexLock lock(mutex_);
    subject = "$JS.API.CONSUMER.MSG.NEXT." + transport_options_.stream + "." + consumer_;
    inbox = inbox_;
  }
  const std::string request = "{\"batch\":" + std::to_string(transport_options_.fetch_batch) +
                              ",\"expires\":" + std::to_string(nanos(transport_options_.fetch_wait)) + "}";
  const natsStatus s = natsConnection_PublishRequestString(nc_, subject.c_str(), inbox.c_str(), request.c_str());
  if (s != NATS_OK) {
    note_error(describe_js(transport_options_, "sending a pull request for \"" + pattern_ + "\"", s, static_cast<jsErrCode>(0)));
    return false;
  }
  counters_->pull_requests.fetch_add(1, std::memory_order_relaxed);
  return true;
}

Consumer::Read Consumer::classify(natsMsg* msg) const {
  const char* reply = natsMsg_GetReply(msg);
  if (reply != nullptr && std::string_view(reply).substr(0, kAckPrefix.size()) == kAckPrefix) return Read::message;
  const char* status = nullptr;
  if (natsMsgHeader_Get(msg, "Status", &status) == NATS_OK && status != nullptr) {
    const std::string_view code = status;
    if (code == "100") return Read::heartbeat;
    if (code == "503") return Read::consumer_missing;  // no responders: no such consumer (yet)
  }
  return Read::request_over;  // 404 no messages, 408 expired, 409 limits: this request is done
}

void Consumer::run() {
  std::chrono::milliseconds retry = kFirstRetry;
  bool in_flight = false;     // a pull request is with the server
  bool check_consumer = false;  // the server said the consumer is not there: ask again
  int received = 0;           // messages the request in flight brought
  // Requests that may still send a status: the one in flight, and any taken as lost (their end
  // may still come). Only ever an upper bound, for the more_follows hint.
  int open_requests = 0;
  // A request was taken as lost: which request a later message or status belongs to is unknown
  // until none is open again, so no hint meanwhile.
  bool lost_any = false;
  Clock::time_point request_end{};
  for (std::uint64_t round = 0; round < std::numeric_limits<std::uint64_t>::max(); ++round) {
    natsSubscription* sub = nullptr;
    bool closing = false;
    {
      detail::MutexLock lock(mutex_);
      closing = closing_;
      sub = sub_;
    }
    if (closing && !in_flight) return;
    if (sub == nullptr || check_consumer) {
      if (closing) return;
      bool opened = false;
      try {
        if (sub == nullptr) {
          opened = open_now();
        } else {
          std::string name;
          {
            detail::MutexLock lock(mutex_);
            name = consumer_;
          }
          std::string why;
          std::string deliver;
          bool permanent = false;
          opened = ensure_consumer(name, deliver, why, permanent) == NATS_OK;
          if (opened) {
            detail::MutexLock lock(mutex_);
            consumer_ = name;
          } else {
            note_error(why);
          }
        }
      } catch (const std::exception& e) {  // refused for good: logged, and tried again later
        note_error(e.what());
        detail::log(LogLevel::error, "notifications jetstream: {}", e.what());
      }
      if (opened) {
        if (check_consumer) counters_->consumers_recreated.fetch_add(1, std::memory_order_relaxed);
        check_consumer = false;
      } else {
        pause(retry);
        retry = std::min(retry * 2, kLastRetry);
      }
      continue;
    }
    if (!in_flight && !closing) {
      if (!send_pull_request()) {
        counters_->fetch_errors.fetch_add(1, std::memory_order_relaxed);
        pause(retry);
        retry = std::min(retry * 2, kLastRetry);
        continue;
      }
      in_flight = true;
      ++open_requests;
      received = 0;
      request_end = Clock::now() + transport_options_.fetch_wait + kRequestGrace;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(request_end - Clock::now());
    natsMsg* msg = nullptr;
    const natsStatus s = natsSubscription_NextMsg(&msg, sub, std::max<std::int64_t>(left.count(), 1));
    if (s == NATS_TIMEOUT) {
      if (Clock::now() >= request_end) {  // its end was lost with a connection
        in_flight = false;
        lost_any = true;
      }
      continue;
    }
    if (s != NATS_OK) {
      in_flight = false;
      lost_any = true;
      if (closing) return;
      read_failed(s, "the pull inbox", retry);
      continue;
    }
    switch (classify(msg)) {
      case Read::message:
        retry = kFirstRetry;
        if (++received >= transport_options_.fetch_batch) {
          in_flight = false;  // a full batch ends the request without a status
          open_requests = std::max(0, open_requests - 1);
        }
        if (closed_.load(std::memory_order_acquire)) {
          counters_->not_handed_at_close.fetch_add(1, std::memory_order_relaxed);
          natsMsg_Destroy(msg);
        } else {
          deliver(msg, sub, lost_any ? std::numeric_limits<int>::max() : open_requests);
        }
        break;
      case Read::heartbeat:
        natsMsg_Destroy(msg);
        break;
      case Read::consumer_missing:
        natsMsg_Destroy(msg);
        in_flight = false;
        open_requests = std::max(0, open_requests - 1);
        check_consumer = true;
        counters_->fetch_errors.fetch_add(1, std::memory_order_relaxed);
        note_error("the server has no consumer \"" + name() + "\" of stream \"" + transport_options_.stream +
                   "\" (or JetStream is not ready): creating it again");
        pause(retry);
        retry = std::min(retry * 2, kLastRetry);
        break;
      case Read::request_over:
        natsMsg_Destroy(msg);
        in_flight = false;
        open_requests = std::max(0, open_requests - 1);
        if (open_requests == 0) lost_any = false;
        break;
    }
  }
}

void Consumer::deliver(natsMsg* msg, natsSubscription* sub, int open_requests) {
  auto held = std::make_shared<HeldMessage>(msg, nc_, life_, counters_);
  Delivery delivery;
  const char* subject = natsMsg_GetSubject(msg);
  delivery.message.subject = subject == nullptr ? "" : subject;
  const char* data = natsMsg_GetData(msg);
  if (data != nullptr) delivery.message.body.assign(data, static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
  const char* id = nullptr;
  if (natsMsgHeader_Get(msg, kIdHeader, &id) == NATS_OK && id != nullptr) delivery.message.id = id;
  if (options_.headers) {
    const char** keys = nullptr;
    int count = 0;
    if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
      for (int k = 0; k < count; ++k) {
        if (std::string_view(keys[k]) == kIdHeader) continue;
        const char** values = nullptr;
        int n = 0;
        if (natsMsgHeader_Values(msg, keys[k], &values, &n) == NATS_OK) {
          for (int v = 0; v < n; ++v) delivery.message.headers.emplace_back(keys[k], values[v]);
          std::free(static_cast<void*>(values));
        }
      }
      std::free(static_cast<void*>(keys));
    }
  }
  jsMsgMetaData* meta = nullptr;
  if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
    delivery.redelivery = meta->NumDelivered > 1 ? static_cast<std::uint32_t>(meta->NumDelivered - 1) : 0;
    last_stream_sequence_.store(meta->Sequence.Stream, std::memory_order_relaxed);
    jsMsgMetaData_Destroy(meta);
  }
  counters_->delivered.fetch_add(1, std::memory_order_relaxed);
  if (delivery.redelivery > 0) counters_->redelivered.fetch_add(1, std::memory_order_relaxed);
  delivery.settle = [held](Settlement how) { held->settle(how); };
  delivery.in_progress = [held] { held->in_progress(); };
  // The inbox also receives the status that ends a pull request (408, 404, 409), which is not
  // handed over: a hint taken from any pending message left the Bridge's dispatcher asleep on a
  // request's last delivery when that status was already there (seen under ASan: deliveries
  // waited for their ack wait, ConcurrentPublishersOneConsumerGroup). Each open request sends at
  // most one status, so with more messages pending than open requests, a delivery follows.
  int pending = 0;
  delivery.more_follows = natsSubscription_GetPending(sub, &pending, nullptr) == NATS_OK && pending > open_requests;
  handler_(std::move(delivery));
}

void Consumer::drop_subscription() {
  natsSubscription* sub = nullptr;
  {
    detail::MutexLock lock(mutex_);
    std::swap(sub, sub_);
  }
  if (sub != nullptr) {
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
  }
}

void Consumer::begin_close() {
  {
    detail::MutexLock lock(mutex_);
    closing_ = true;
    closed_.store(true, std::memory_order_release);
  }
  closing_changed_.notify_all();
}

void Consumer::adopt(const std::string& name) {
  detail::MutexLock lock(mutex_);
  if (durable_name_.empty()) consumer_ = name;
}

bool Consumer::close(Deadline deadline, bool keep_consumer) {
  begin_close();
  if (thread_ && thread_->get_id() == std::this_thread::get_id()) {
    return false;  // see the header: the thread ends after the handler returns
  }
  if (thread_ && thread_->joinable()) {
    // The pull request in flight ends by itself within fetch_wait; past the deadline it is cut
    // short (the subscription is unsubscribed, which ends the read), at the price described in
    // the header. A push consumer has no request to wait for: its read ends now.
    detail::UniqueMutexLock lock(mutex_);
    if (push() && sub_ != nullptr) natsSubscription_Unsubscribe(sub_);
    while (!finished_ && Clock::now() < deadline) lock.wait_until(closing_changed_, deadline);
    if (!finished_ && sub_ != nullptr) {
      counters_->requests_cut_short.fetch_add(1, std::memory_order_relaxed);
      natsSubscription_Unsubscribe(sub_);
    }
    lock.unlock();
    thread_->join();
  }
  {
    detail::SharedMutexWriteLock lock(life_->mutex);
    if (!life_->open) return true;  // closed before
    life_->open = false;
  }
  drop_subscription();
  std::string ephemeral;
  {
    detail::MutexLock lock(mutex_);
    if (durable_name_.empty()) ephemeral = consumer_;
  }
  resume_point_.store(last_stream_sequence_.load());
  const bool connected = nc_ != nullptr && natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED;
  if (ephemeral.empty() || !connected) return true;
  jsOptions wait;
  jsOptions_Init(&wait);
  wait.Wait = std::max<std::int64_t>(1, std::min<std::int64_t>(
      transport_options_.api_timeout.count(),
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
  jsConsumerInfo* info = nullptr;
  if (js_GetConsumerInfo(&info, js_, transport_options_.stream.c_str(), ephemeral.c_str(), &wait, nullptr) == NATS_OK) {
    resume_point_.store(info->AckFloor.Stream);
    jsConsumerInfo_Destroy(info);
  }
  // An ephemeral consumer goes with its subscription (the server would remove it after
  // inactive_threshold anyway), unless it is kept for after fork(); a durable one keeps its
  // position for the next.
  if (!keep_consumer) js_DeleteConsumer(js_, transport_options_.stream.c_str(), ephemeral.c_str(), &wait, nullptr);
  return true;
}

void Consumer::abandon() {
  (void)thread_.release();  // the parent's thread: it does not exist in this child
  detail::MutexLock lock(mutex_);
  closing_ = true;
  closed_.store(true);
  sub_ = nullptr;  // the parent's cnats object
}

nlohmann::json Consumer::health(jsCtx* js, const std::string& stream) const {
  const std::string consumer = name();
  nlohmann::json h{{"pattern", pattern_},
                   {"consumer", consumer},
                   {"durable", !durable_name_.empty()},
                   {"pending", -1},
                   {"ack_pending", -1},
                   {"redelivered", -1}};
  if (consumer.empty() || js == nullptr) return h;
  jsOptions options;
  jsOptions_Init(&options);
  options.Wait = 200;
  jsConsumerInfo* info = nullptr;
  if (js_GetConsumerInfo(&info, js, stream.c_str(), consumer.c_str(), &options, nullptr) == NATS_OK) {
    h["pending"] = info->NumPending;
    h["ack_pending"] = info->NumAckPending;
    h["redelivered"] = info->NumRedelivered;
    jsConsumerInfo_Destroy(info);
  }
  return h;
}

}  // namespace notifications::jetstream_detail
