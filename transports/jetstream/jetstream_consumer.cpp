// One pull subscription of the JetStream transport (jetstream_consumer.hpp).
#include "jetstream_consumer.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <utility>

#include "jetstream_errors.hpp"

namespace notifications::jetstream_detail {

namespace {

using Clock = std::chrono::steady_clock;
using detail::LogLevel;

constexpr const char* kIdHeader = "Nats-Msg-Id";
// Waits between attempts to create a consumer or after a failed fetch: doubling up to the last.
constexpr std::chrono::milliseconds kFirstRetry{20};
constexpr std::chrono::milliseconds kLastRetry{1'000};

std::int64_t nanos(std::chrono::milliseconds ms) { return static_cast<std::int64_t>(ms.count()) * 1'000'000; }

// A fetched message with what settles it. Destroyed (with its natsMsg) when the last Delivery
// copy holding it goes.
class HeldMessage {
 public:
  HeldMessage(natsMsg* msg, std::shared_ptr<SubscriptionLife> life, std::shared_ptr<ConsumerCounters> counters)
      : msg_(msg), life_(std::move(life)), counters_(std::move(counters)) {}
  ~HeldMessage() { natsMsg_Destroy(msg_); }
  HeldMessage(const HeldMessage&) = delete;
  HeldMessage& operator=(const HeldMessage&) = delete;

  void settle(Settlement how) {
    if (settled_.exchange(true)) return;  // settle once; later calls do nothing
    detail::SharedMutexReadLock lock(life_->mutex);
    if (!life_->open) {
      counters_->unsettled_at_close.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    natsStatus s = NATS_OK;
    switch (how.outcome) {
      case Settle::ack:
        s = natsMsg_Ack(msg_, nullptr);
        counters_->acked.fetch_add(1, std::memory_order_relaxed);
        break;
      case Settle::nak:
        s = how.delay.count() > 0 ? natsMsg_NakWithDelay(msg_, how.delay.count(), nullptr) : natsMsg_Nak(msg_, nullptr);
        counters_->naked.fetch_add(1, std::memory_order_relaxed);
        break;
      case Settle::term:
        s = natsMsg_Term(msg_, nullptr);
        counters_->terminated.fetch_add(1, std::memory_order_relaxed);
        break;
    }
    // Not sent (the connection is down): the server delivers the message again after ack_wait.
    if (s != NATS_OK) counters_->settle_errors.fetch_add(1, std::memory_order_relaxed);
  }

  void in_progress() {
    if (settled_.load()) return;
    detail::SharedMutexReadLock lock(life_->mutex);
    if (!life_->open) return;
    if (natsMsg_InProgress(msg_, nullptr) == NATS_OK) {
      counters_->in_progress.fetch_add(1, std::memory_order_relaxed);
    } else {
      counters_->settle_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }

 private:
  natsMsg* msg_;
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

// The batch to ask one fetch for. cnats 3.4.1's fetch first takes the messages its subscription
// already holds (strays: sent by the server for an earlier pull request after that one returned,
// e.g. around a reconnect), into an array of `batch` entries, then lowers the batch by that count
// and collects until the count equals the lowered batch: with more strays than half the batch it
// writes past the array (seen here as heap corruption while the server was being killed). So the
// batch is at least twice what the subscription holds, plus twice `wanted` for strays that arrive
// meanwhile (at most one earlier request's worth).
int fetch_batch_size(natsSubscription* sub, int wanted) {
  int pending = 0;
  if (natsSubscription_GetPending(sub, &pending, nullptr) != NATS_OK || pending < 0) pending = 0;
  const std::int64_t batch = 2 * (static_cast<std::int64_t>(pending) + wanted);
  return static_cast<int>(std::min<std::int64_t>(batch, std::numeric_limits<int>::max() / 2));
}

void set_start(jsConsumerConfig& config, const StartPosition& start) {
  switch (start.kind) {
    case StartPosition::Kind::new_only:
      config.DeliverPolicy = js_DeliverNew;
      break;
    case StartPosition::Kind::all_retained:
      config.DeliverPolicy = js_DeliverAll;
      break;
    case StartPosition::Kind::from_time:
      config.DeliverPolicy = js_DeliverByStartTime;
      config.OptStartTime =
          std::chrono::duration_cast<std::chrono::nanoseconds>(start.time.time_since_epoch()).count();
      break;
    case StartPosition::Kind::from_sequence:
      config.DeliverPolicy = js_DeliverByStartSequence;
      config.OptStartSeq = std::max<std::uint64_t>(start.sequence, 1);
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

Consumer::Consumer(jsCtx* js, const JetStreamOptions& transport_options, std::string pattern, DeliveryOptions options,
                   DeliveryHandler handler, std::shared_ptr<ConsumerCounters> counters)
    : js_(js),
      transport_options_(transport_options),
      pattern_(std::move(pattern)),
      options_(std::move(options)),
      handler_(std::move(handler)),
      durable_name_(consumer_name(pattern_, options_)),
      counters_(std::move(counters)) {
  // The server refuses these in a consumer name; say so before asking it.
  for (const char c : durable_name_) {
    if (c == '.' || c == '*' || c == '>' || c == ' ' || c == '\t' || c == '/' || c == '\\') {
      throw TransportError(std::string("jetstream: ") + (options_.durable.empty() ? "group" : "durable") + " \"" +
                           detail::wire_text(durable_name_) + "\": a consumer name must not contain '.', '*', '>', "
                           "'/', '\\' or whitespace");
    }
  }
}

Consumer::~Consumer() { close(); }

std::string Consumer::name() const {
  if (!durable_name_.empty()) return durable_name_;
  detail::MutexLock lock(mutex_);
  return ephemeral_name_;
}

std::string Consumer::last_error() const {
  detail::MutexLock lock(mutex_);
  return last_error_;
}

void Consumer::note_error(const std::string& text) {
  detail::MutexLock lock(mutex_);
  last_error_ = text;
}

natsStatus Consumer::subscribe(natsSubscription** sub, std::string& why, bool& permanent) {
  permanent = false;
  jsErrCode code = static_cast<jsErrCode>(0);
  const std::string& stream = transport_options_.stream;
  jsConsumerConfig config;
  jsConsumerConfig_Init(&config);
  config.AckPolicy = js_AckExplicit;
  config.AckWait = nanos(options_.ack_wait.count() > 0 ? options_.ack_wait : transport_options_.ack_wait);
  const std::uint32_t max_deliveries =
      options_.max_deliveries > 0 ? options_.max_deliveries : transport_options_.max_deliveries;
  config.MaxDeliver = max_deliveries > 0 ? static_cast<std::int64_t>(max_deliveries) : -1;
  config.FilterSubject = pattern_.c_str();
  config.MaxWaiting = transport_options_.max_waiting;
  if (options_.ordered) config.MaxAckPending = 1;
  set_start(config, options_.start);

  jsSubOptions sub_options;
  jsSubOptions_Init(&sub_options);
  sub_options.Stream = stream.c_str();
  natsStatus s = NATS_OK;
  if (!durable_name_.empty()) {
    config.Durable = durable_name_.c_str();
    jsConsumerInfo* info = nullptr;
    s = js_GetConsumerInfo(&info, js_, stream.c_str(), durable_name_.c_str(), nullptr, &code);
    if (s == NATS_OK) {
      const std::string filter = info->Config->FilterSubject == nullptr ? "" : info->Config->FilterSubject;
      jsConsumerInfo_Destroy(info);
      if (filter != pattern_) {
        permanent = true;
        why = std::string("consumer \"") + durable_name_ + "\" of stream \"" + stream + "\" reads \"" +
              detail::wire_text(filter) + "\", not \"" + detail::wire_text(pattern_) + "\": " +
              (options_.durable.empty() ? "give the group another name" : "give the durable another name") +
              " (option \"" + (options_.durable.empty() ? "group" : "durable") + "\")";
        return NATS_ERR;
      }
    } else if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) {
      s = js_AddConsumer(&info, js_, stream.c_str(), &config, nullptr, &code);
      jsConsumerInfo_Destroy(info);
      if (s != NATS_OK) {
        why = describe_js("creating consumer \"" + durable_name_ + "\" on \"" + pattern_ + "\"", s, code);
        permanent = is_configuration_error(code);
        return s;
      }
    } else {
      why = describe_js("reading consumer \"" + durable_name_ + "\"", s, code);
      return s;
    }
    sub_options.Consumer = durable_name_.c_str();  // bound: unsubscribing keeps the consumer
  } else {
    // Ephemeral: created by the subscription, removed by its unsubscribe. Created again after a
    // loss from the message after the last one handed over.
    const std::uint64_t last = last_stream_sequence_.load();
    if (last > 0) {
      config.DeliverPolicy = js_DeliverByStartSequence;
      config.OptStartSeq = last + 1;
      config.OptStartTime = 0;
    }
    config.InactiveThreshold = nanos(transport_options_.inactive_threshold);
    sub_options.Config = config;
  }
  s = js_PullSubscribe(sub, js_, pattern_.c_str(), durable_name_.empty() ? nullptr : durable_name_.c_str(), nullptr,
                       &sub_options, &code);
  if (s != NATS_OK) {
    why = describe_js("subscribing to \"" + pattern_ + "\"", s, code);
    permanent = is_configuration_error(code);
  }
  return s;
}

bool Consumer::open_now() {
  natsSubscription* sub = nullptr;
  std::string why;
  bool permanent = false;
  if (subscribe(&sub, why, permanent) != NATS_OK) {
    if (permanent) throw TransportError("jetstream: " + why);
    note_error(why);
    return false;
  }
  std::string ephemeral;
  if (durable_name_.empty()) {
    jsConsumerInfo* info = nullptr;
    if (natsSubscription_GetConsumerInfo(&info, sub, nullptr, nullptr) == NATS_OK) {
      ephemeral = info->Name == nullptr ? "" : info->Name;
      jsConsumerInfo_Destroy(info);
    }
  }
  detail::MutexLock lock(mutex_);
  if (closing_ || sub_ != nullptr) {
    // Closed meanwhile (or opened by the thread): this one is not needed.
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    return true;
  }
  sub_ = sub;
  ephemeral_name_ = ephemeral;
  return true;
}

void Consumer::start() {
  thread_ = std::make_unique<std::thread>([this] {
    detail::name_this_thread("ntf-js-fetch");
    run();
  });
}

void Consumer::pause(std::chrono::milliseconds delay) {
  detail::UniqueMutexLock lock(mutex_);
  const auto until = Clock::now() + delay;
  while (!closing_ && Clock::now() < until) lock.wait_until(closing_changed_, until);
}

void Consumer::run() {
  std::chrono::milliseconds retry = kFirstRetry;
  for (std::uint64_t round = 0; round < std::numeric_limits<std::uint64_t>::max(); ++round) {
    natsSubscription* sub = nullptr;
    {
      detail::MutexLock lock(mutex_);
      if (closing_) return;
      sub = sub_;
    }
    if (sub == nullptr) {
      bool opened = false;
      try {
        opened = open_now();
      } catch (const std::exception& e) {  // refused for good: logged, and tried again later
        note_error(e.what());
        detail::log(LogLevel::error, "notifications jetstream: {}", e.what());
      }
      if (!opened) {
        pause(retry);
        retry = std::min(retry * 2, kLastRetry);
      }
      continue;
    }
    jsFetchRequest request;
    jsFetchRequest_Init(&request);
    request.Batch = fetch_batch_size(sub, transport_options_.fetch_batch);
    request.Expires = nanos(transport_options_.fetch_wait);
    natsMsgList list{};
    counters_->fetches.fetch_add(1, std::memory_order_relaxed);
    const natsStatus s = natsSubscription_FetchRequest(&list, sub, &request);
    if (s == NATS_OK) {
      retry = kFirstRetry;
      deliver(list);
      natsMsgList_Destroy(&list);
      continue;
    }
    natsMsgList_Destroy(&list);
    if (s == NATS_TIMEOUT) continue;  // nothing to read within fetch_wait
    {
      detail::MutexLock lock(mutex_);
      if (closing_) return;
    }
    counters_->fetch_errors.fetch_add(1, std::memory_order_relaxed);
    note_error(describe_js("fetching from \"" + pattern_ + "\"", s, static_cast<jsErrCode>(0)));
    if (s == NATS_NOT_FOUND || s == NATS_INVALID_SUBSCRIPTION) {
      // The server lost the consumer (or the subscription is gone): make them again.
      counters_->consumers_recreated.fetch_add(1, std::memory_order_relaxed);
      detail::MutexLock lock(mutex_);
      if (closing_) return;
      natsSubscription_Destroy(sub_);
      sub_ = nullptr;
    }
    pause(retry);
    retry = std::min(retry * 2, kLastRetry);
  }
}

void Consumer::deliver(natsMsgList& list) {
  for (int i = 0; i < list.Count; ++i) {
    // Closed from inside the handler: what is left is not handed over (the server delivers it
    // again after ack_wait to whoever reads the consumer then).
    if (closed_.load(std::memory_order_acquire)) return;
    natsMsg* msg = list.Msgs[i];
    list.Msgs[i] = nullptr;  // owned by the HeldMessage now
    auto held = std::make_shared<HeldMessage>(msg, life_, counters_);
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
    delivery.more_follows = i + 1 < list.Count;
    handler_(std::move(delivery));
  }
}

bool Consumer::close() {
  const bool own_thread = thread_ && thread_->get_id() == std::this_thread::get_id();
  {
    detail::MutexLock lock(mutex_);
    if (!closing_) {
      closing_ = true;
      closed_.store(true, std::memory_order_release);
    }
  }
  closing_changed_.notify_all();
  if (own_thread) {
    // Called from the handler: this thread returns to run(), which sees closing_ and ends; it is
    // joined by a later close() from another thread.
    return false;
  }
  if (thread_ && thread_->joinable()) thread_->join();
  {
    detail::SharedMutexWriteLock lock(life_->mutex);
    life_->open = false;
  }
  natsSubscription* sub = nullptr;
  {
    detail::MutexLock lock(mutex_);
    std::swap(sub, sub_);
  }
  if (sub != nullptr) {
    natsSubscription_Unsubscribe(sub);  // an ephemeral consumer is removed, a bound durable one kept
    natsSubscription_Destroy(sub);
  }
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
  nlohmann::json h{{"pattern", pattern_},
                   {"consumer", name()},
                   {"durable", !durable_name_.empty()},
                   {"pending", -1},
                   {"ack_pending", -1},
                   {"redelivered", -1}};
  const std::string consumer = name();
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
