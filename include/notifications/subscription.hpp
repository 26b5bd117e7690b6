// Subscription: the handle subscribe() returns.
//
// Thread-safety: one Subscription object must not be used by two threads at once (like any
// movable value), but unsubscribe() may run on any thread, including inside the listener itself,
// and concurrently with instrument() anywhere. It never waits for running listeners.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

namespace notifications {

namespace detail {
class NotifierCore;
}

class [[nodiscard("a discarded Subscription unsubscribes at once; call release() to keep it")]]
Subscription {
 public:
  Subscription() = default;
  Subscription(std::weak_ptr<detail::NotifierCore> core, std::uint64_t id)
      : core_(std::move(core)), id_(id) {}
  Subscription(Subscription&& other) noexcept
      : core_(std::move(other.core_)), id_(std::exchange(other.id_, 0)) {}
  Subscription& operator=(Subscription&& other) noexcept {
    if (this != &other) {
      unsubscribe();
      core_ = std::move(other.core_);
      id_ = std::exchange(other.id_, 0);
    }
    return *this;
  }
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  // Unsubscribes (scoped subscription).
  ~Subscription() { unsubscribe(); }

  // Removes the listener; idempotent. Events that start after this returns never call it; see
  // docs/dispatch.md for events already being dispatched.
  void unsubscribe() noexcept;
  // Keeps the listener subscribed for the notifier's lifetime; this handle becomes empty.
  void release() noexcept {
    core_.reset();
    id_ = 0;
  }
  // True while the listener is subscribed (false after unsubscribe(), release(), unsubscribe by
  // name, or the notifier's destruction).
  bool active() const noexcept;
  std::uint64_t id() const noexcept { return id_; }
  // A second handle on the same subscription, for a listener that must end its own subscription
  // (notifications/signals2.hpp): unsubscribing or destroying either one ends it. Empty when this
  // one is empty.
  Subscription alias() const { return Subscription(core_, id_); }

 private:
  std::weak_ptr<detail::NotifierCore> core_;
  std::uint64_t id_ = 0;
};

}  // namespace notifications
