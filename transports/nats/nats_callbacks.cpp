// The cnats callbacks of the NATS transport (nats_callbacks.hpp): record, hand off, return.
#include "nats_callbacks.hpp"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

namespace notifications::nats_detail {

void on_disconnected(natsConnection*, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  // The link first: whoever sees the disconnect counted also sees the link down.
  shared->link.store(Shared::kLinkDown, std::memory_order_release);
  shared->disconnects.fetch_add(1, std::memory_order_release);
  shared->report(ConnectionEvent::Kind::disconnected);
}

void on_reconnected(natsConnection*, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  shared->reconnects.fetch_add(1, std::memory_order_relaxed);
  shared->reconnect_buffered_bytes.store(0, std::memory_order_relaxed);
  shared->link.store(Shared::kLinkRefresh, std::memory_order_release);
  shared->report(ConnectionEvent::Kind::reconnected);
}

void on_connected(natsConnection*, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  shared->reconnect_buffered_bytes.store(0, std::memory_order_relaxed);
  shared->link.store(Shared::kLinkRefresh, std::memory_order_release);
  shared->report(ConnectionEvent::Kind::connected);
}

void on_lame_duck(natsConnection*, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  shared->lame_duck.fetch_add(1, std::memory_order_relaxed);
  shared->report(ConnectionEvent::Kind::lame_duck);
}

void on_error(natsConnection*, natsSubscription* sub, natsStatus status, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  if (status == NATS_SLOW_CONSUMER) {
    shared->slow_consumer_events.fetch_add(1, std::memory_order_relaxed);
  } else {
    shared->async_errors.fetch_add(1, std::memory_order_relaxed);
  }
  shared->report(ConnectionEvent::Kind::error, status, sub);
}

void on_closed(natsConnection*, void* closure) {
  auto* shared = static_cast<Shared*>(closure);
  shared->report(ConnectionEvent::Kind::closed);
  {
    detail::MutexLock lock(shared->mutex);
    shared->closed = true;
  }
  shared->changed.notify_all();
  shared->release();  // the connection's reference: no connection callback follows this one
}

void on_message(natsConnection*, natsSubscription* nats_sub, natsMsg* msg, void* closure) {
  auto* sub = static_cast<Subscription*>(closure);
  sub->shared->received.fetch_add(1, std::memory_order_relaxed);
  if (sub->active.load(std::memory_order_acquire)) {
    try {
      Delivery delivery;
      delivery.message.subject = natsMsg_GetSubject(msg);
      const char* data = natsMsg_GetData(msg);
      delivery.message.body.assign(data != nullptr ? data : "", static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
      const char** keys = nullptr;
      int count = 0;
      if (sub->headers && natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
        for (int i = 0; i < count; ++i) {
          const char* value = nullptr;
          if (natsMsgHeader_Get(msg, keys[i], &value) == NATS_OK && value != nullptr) {
            if (std::strcmp(keys[i], "Nats-Msg-Id") == 0) {
              delivery.message.id = value;  // Message::id travels as this header
            } else {
              delivery.message.headers.emplace_back(keys[i], value);
            }
          }
        }
        free(static_cast<void*>(keys));
      }
      // cnats delivers the messages it holds for this subscription one after another on this
      // thread: the handler may wait for the last one before it wakes anybody.
      int pending = 0;
      delivery.more_follows = natsSubscription_GetPending(nats_sub, &pending, nullptr) == NATS_OK && pending > 0;
      sub->handler(std::move(delivery));
    } catch (...) {
      sub->shared->handler_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  natsMsg_Destroy(msg);
}

void on_subscription_complete(void* closure) {
  auto* sub = static_cast<Subscription*>(closure);
  Shared* shared = sub->shared;
  delete sub;
  shared->release();
}

}  // namespace notifications::nats_detail
