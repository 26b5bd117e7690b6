// The fetch thread of a push consumer (JetStreamOptions::consumer_type push; see
// jetstream_consumer.hpp): it reads what the server pushes to the subscription's deliver subject
// and hands it over, answers flow control, and asks for the consumer when nothing came for twice
// idle_heartbeat (a consumer with a deliver group gets no heartbeats: then only the asking),
// creating it again when the server lost it.
#include <algorithm>
#include <limits>
#include <string>
#include <string_view>

#include "jetstream_consumer.hpp"
#include "jetstream_errors.hpp"

namespace notifications::jetstream_detail {

namespace {

using Clock = std::chrono::steady_clock;

// The server's answers a push subscription must give: to a flow control request (a status 100
// with a reply subject) and to a heartbeat that says the consumer stalled (its subject in a
// header). Returns true when one was sent.
bool answer_status(natsConnection* nc, natsMsg* msg) {
  const char* reply = natsMsg_GetReply(msg);
  if (reply != nullptr && *reply != '\0') return natsConnection_Publish(nc, reply, nullptr, 0) == NATS_OK;
  const char* stalled = nullptr;
  if (natsMsgHeader_Get(msg, "Nats-Consumer-Stalled", &stalled) == NATS_OK && stalled != nullptr && *stalled != '\0') {
    return natsConnection_Publish(nc, stalled, nullptr, 0) == NATS_OK;
  }
  return false;
}

}  // namespace

void Consumer::run_push() {
  std::chrono::milliseconds retry = kFirstRetry;
  const std::chrono::milliseconds silence = 2 * transport_options_.idle_heartbeat + kRequestGrace;
  bool check_consumer = false;  // silence, or the server said the consumer went: ask for it
  for (std::uint64_t round = 0; round < std::numeric_limits<std::uint64_t>::max(); ++round) {
    natsSubscription* sub = nullptr;
    std::string name;
    {
      detail::MutexLock lock(mutex_);
      if (closing_) return;  // nothing in flight to wait for: what comes later is pushed again
      sub = sub_;
      name = consumer_;
    }
    if (sub != nullptr && check_consumer) {
      jsErrCode code = static_cast<jsErrCode>(0);
      jsConsumerInfo* info = nullptr;
      jsOptions wait;
      jsOptions_Init(&wait);
      wait.Wait = transport_options_.api_timeout.count();
      const natsStatus s = js_GetConsumerInfo(&info, js_, transport_options_.stream.c_str(), name.c_str(), &wait, &code);
      if (s == NATS_OK) {
        jsConsumerInfo_Destroy(info);
        check_consumer = false;  // only quiet
        continue;
      }
      if (s != NATS_NOT_FOUND && code != JSConsumerNotFoundErr) {
        note_error(describe_js(transport_options_, "reading consumer \"" + name + "\"", s, code));
        pause(retry);
        retry = std::min(retry * 2, kLastRetry);
        continue;
      }
      // Lost (a server restart with memory storage, an ephemeral consumer removed while this
      // process was away): made again, with a new subscription, from where this one stopped.
      drop_subscription();
      counters_->consumers_recreated.fetch_add(1, std::memory_order_relaxed);
      note_error("the server has no consumer \"" + name + "\" of stream \"" + transport_options_.stream +
                 "\": creating it again");
      continue;
    }
    if (sub == nullptr) {
      bool opened = false;
      try {
        opened = open_now();
      } catch (const std::exception& e) {  // refused for good: logged, and tried again later
        note_error(e.what());
        detail::log(detail::LogLevel::error, "notifications jetstream: {}", e.what());
      }
      if (opened) {
        check_consumer = false;
        retry = kFirstRetry;
      } else {
        pause(retry);
        retry = std::min(retry * 2, kLastRetry);
      }
      continue;
    }
    natsMsg* msg = nullptr;
    const natsStatus s = natsSubscription_NextMsg(&msg, sub, silence.count());
    if (s == NATS_TIMEOUT) {
      check_consumer = true;
      continue;
    }
    if (s != NATS_OK) {  // close() unsubscribed it, or the connection closed
      if (closed_.load(std::memory_order_acquire)) return;
      read_failed(s, "the deliver subject", retry);
      continue;
    }
    switch (classify(msg)) {
      case Read::message:
        retry = kFirstRetry;
        if (closed_.load(std::memory_order_acquire)) {
          counters_->not_handed_at_close.fetch_add(1, std::memory_order_relaxed);
          natsMsg_Destroy(msg);
        } else {
          // No more_follows hint: heartbeats and flow control share the subscription, so what
          // is pending does not say that a delivery follows.
          deliver(msg, sub, std::numeric_limits<int>::max());
        }
        break;
      case Read::heartbeat:
        if (answer_status(nc_, msg)) counters_->flow_control_replies.fetch_add(1, std::memory_order_relaxed);
        natsMsg_Destroy(msg);
        break;
      case Read::consumer_missing:
      case Read::request_over:  // a status a push consumer ends with (409 consumer deleted)
        natsMsg_Destroy(msg);
        check_consumer = true;
        break;
    }
  }
}

}  // namespace notifications::jetstream_detail
