// Private to the NATS transport: the state cnats callbacks share with the transport, and the
// callbacks themselves. Everything declared here that runs does so on cnats' threads, so it only
// counts (atomics), records a state change, or hands off (a bounded queue, the DeliveryHandler);
// it never blocks, runs user code or calls back into cnats (transports/nats.hpp, "Threads").
//
// Thread-safety: Shared and Subscription members are atomics or guarded as marked.
#pragma once

#include <nats/nats.h>

#include <atomic>
#include <chrono>
#include <condition_variable>

#include "transport/kit.hpp"
#include "notifications/transport.hpp"

namespace notifications::nats_detail {

// What a connection callback reports to the transport's own thread (which logs it).
struct ConnectionEvent {
  enum class Kind { connected, disconnected, reconnected, closed, error, lame_duck } kind;
  natsStatus status = NATS_OK;
  // The subscription an error is about (slow consumer), only compared with the transport's own
  // subscriptions to name the pattern in the log line; never dereferenced.
  const void* subscription = nullptr;
};

inline const char* kind_name(ConnectionEvent::Kind kind) {
  switch (kind) {
    case ConnectionEvent::Kind::connected:
      return "connected";
    case ConnectionEvent::Kind::disconnected:
      return "disconnected";
    case ConnectionEvent::Kind::reconnected:
      return "reconnected";
    case ConnectionEvent::Kind::closed:
      return "closed";
    case ConnectionEvent::Kind::error:
      return "error";
    case ConnectionEvent::Kind::lame_duck:
      return "lame duck mode";
  }
  return "?";
}

// State that cnats callbacks touch. cnats may run a callback after the connection was destroyed
// (its callbacks are queued), so this is reference-counted: the transport holds one reference,
// the connection one (released by the closed callback, cnats' last), each subscription one
// (released by its on-complete callback, after its last message callback returned).
struct Shared {
  std::atomic<int> refs{1};
  void retain() { refs.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  std::atomic<std::uint64_t> disconnects{0};
  std::atomic<std::uint64_t> reconnects{0};
  std::atomic<std::uint64_t> async_errors{0};
  std::atomic<std::uint64_t> slow_consumer_events{0};
  std::atomic<std::uint64_t> lame_duck{0};
  std::atomic<std::uint64_t> received{0};
  std::atomic<std::uint64_t> handler_errors{0};
  std::atomic<std::uint64_t> events_unlogged{0};  // connection events the log queue refused

  // What the publish path checks once per batch (one load, one compare when nothing changed):
  // kLinkUp while connected with nothing new to learn. The connected and reconnected callbacks
  // set kLinkRefresh (the transport then asks cnats for the server's max_payload and header
  // support, from its own threads), the disconnected callback kLinkDown.
  static constexpr int kLinkUp = 0;
  static constexpr int kLinkRefresh = 1;
  static constexpr int kLinkDown = 2;
  std::atomic<int> link{kLinkDown};
  // Bytes published while the link was down since it last came up: an estimate of cnats'
  // reconnect buffer, which cnats 3.4 does not expose (natsConnection_Buffered counts only the
  // socket's write buffer).
  std::atomic<std::uint64_t> reconnect_buffered_bytes{0};

  detail::Mutex mutex;
  std::condition_variable changed;  // on mutex.native(): closed
  bool closed NOTIFICATIONS_GUARDED_BY(mutex) = false;  // cnats' closed callback ran

  detail::BoundedQueue<ConnectionEvent> events{1024};

  void report(ConnectionEvent::Kind kind, natsStatus status = NATS_OK, const void* subscription = nullptr) {
    if (events.push(ConnectionEvent{kind, status, subscription}, OverflowPolicy::drop_newest, std::chrono::milliseconds(0)) !=
        detail::BoundedQueue<ConnectionEvent>::Push::accepted) {
      events_unlogged.fetch_add(1, std::memory_order_relaxed);
    }
  }
};

// One subscription's state; deleted by its on-complete callback.
struct Subscription {
  Shared* shared;  // one reference
  DeliveryHandler handler;
  bool headers;  // copy the headers into the Delivery (cnats parses them on first access)
  std::atomic<bool> active{true};
};

// The callbacks, with a Shared* (connection callbacks) or a Subscription* (message and
// on-complete callbacks) as closure.
void on_disconnected(natsConnection* nc, void* closure);
void on_reconnected(natsConnection* nc, void* closure);
void on_connected(natsConnection* nc, void* closure);
void on_lame_duck(natsConnection* nc, void* closure);
void on_error(natsConnection* nc, natsSubscription* sub, natsStatus status, void* closure);
void on_closed(natsConnection* nc, void* closure);
void on_message(natsConnection* nc, natsSubscription* sub, natsMsg* msg, void* closure);
void on_subscription_complete(void* closure);

}  // namespace notifications::nats_detail
