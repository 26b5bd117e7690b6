// Component notifications::signals2 (header-only; needs Boost.Signals2, i.e. Boost::headers):
// Boost.Signals2 interop in both directions. The contract is docs/signals2.md.
//   connect():   emissions of an existing boost::signals2 signal become instant events on a
//                Notifier, with no change to the code that emits.
//   subscribe(): a boost::signals2 slot, with its lifetime tracking (track, track_foreign),
//                becomes a subscription; a tracked object going away ends it.
//
// Thread-safety: every function here may be called from any thread, concurrently with each other,
// with emissions of the signal and with dispatch on the notifier. The payload builder and the
// slot's function run on the emitting (instrumenting) thread, concurrently when several threads
// emit (instrument): they must be safe for that.
#pragma once

#include <atomic>
#include <mutex>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include <boost/signals2/connection.hpp>
#include <boost/signals2/signal.hpp>
#include <boost/signals2/slot.hpp>
#include <nlohmann/json.hpp>

#include "notifications/event.hpp"
#include "notifications/notifications.hpp"
#include "notifications/notifier.hpp"
#include "notifications/pattern.hpp"
#include "notifications/subscription.hpp"

namespace notifications::signals2 {

// ---- Signal -> bus ------------------------------------------------------------------------------

// Connects `signal` so that each emission publishes an instant event `name` on `notifier`, with
// the payload make_payload(args...) (called with the emission's arguments as const lvalues).
// When nobody listens to `name`, an emission costs a Handle check (two atomic loads) and the
// builder is not called. The builder runs on the emitting thread, const, possibly concurrently;
// what it throws propagates out of the emission to the emitting code, as any slot's exception
// does in Signals2 (no event is published, the connection stays); a listener's exception goes to
// the notifier's error handler, or to the emitting code when the notifier is strict.
// Disconnect through the returned connection (or a scoped_connection made of it); the signal's
// destruction disconnects too. The connection may outlive the notifier: it then publishes nothing.
// The events' source_location() is that of this connect() call (the emission has none of its own).
// Throws InvalidName for an empty name.
template <class... Args, class... SignalParams, class Make>
boost::signals2::connection connect(
    boost::signals2::signal<void(Args...), SignalParams...>& signal, Notifier& notifier,
    std::string name, Make make_payload,
    boost::signals2::connect_position position = boost::signals2::at_back,
    SourceLocation where = SourceLocation::current()) {
  static_assert(
      std::is_convertible_v<std::invoke_result_t<const Make&, const std::remove_cvref_t<Args>&...>,
                            nlohmann::json>,
      "make_payload must be callable as const, with the signal's arguments as const lvalues, "
      "and return something nlohmann::json is made from");
  return signal.connect(
      [handle = notifier.handle(std::move(name)),
       make = std::move(make_payload), where](const std::remove_cvref_t<Args>&... args) {
        if (!handle.listening()) return;
        // Looked up again after the builder ran: the builder may itself instrument events.
        const nlohmann::json payload = make(args...);
        handle.instrument(payload, where);
      },
      position);
}

// The same on notifications::default_notifier().
template <class... Args, class... SignalParams, class Make>
boost::signals2::connection connect(
    boost::signals2::signal<void(Args...), SignalParams...>& signal, std::string name,
    Make make_payload, boost::signals2::connect_position position = boost::signals2::at_back,
    SourceLocation where = SourceLocation::current()) {
  return connect(signal, default_notifier(), std::move(name), std::move(make_payload), position, where);
}

// ---- Bus -> slot --------------------------------------------------------------------------------

// The slot type subscribe() takes: build it from any callable, then .track(...) or
// .track_foreign(shared_ptr) the objects it needs.
using EventSlot = boost::signals2::slot<void(const Event&)>;

namespace detail {

// The listener's state, shared by every dispatching thread and the subscribe() call.
// Thread-safety: deliver() and adopt() may run concurrently from any threads.
class TrackedSlot {
 public:
  explicit TrackedSlot(EventSlot slot) : slot_(std::move(slot)) {}
  TrackedSlot(const TrackedSlot&) = delete;
  TrackedSlot& operator=(const TrackedSlot&) = delete;
  // Never unsubscribes from here: the state may be destroyed while the notifier's lock is held.
  ~TrackedSlot() { self_.release(); }

  // Calls the slot with its tracked objects locked for the call, or, once one has expired, ends
  // the subscription without calling it.
  void deliver(const Event& event) {
    if (ended_.load(std::memory_order_acquire)) return;
    if (slot_.expired()) return end();
    boost::signals2::slot_base::locked_container_type locked;
    try {
      locked = slot_.lock();
    } catch (const boost::signals2::expired_slot&) {  // expired since the check above
      return end();
    }
    slot_.slot_function()(event);  // slot_(event) would lock the tracked objects a second time
  }

  // Hands over the subscription's second handle once subscribe() returned; ends it at once when
  // an event already found the slot expired.
  void adopt(Subscription self) {
    const std::lock_guard<std::mutex> lock(mutex_);
    self_ = std::move(self);
    if (ended_.load(std::memory_order_relaxed)) self_.unsubscribe();
  }

 private:
  void end() noexcept {
    const std::lock_guard<std::mutex> lock(mutex_);
    ended_.store(true, std::memory_order_release);
    self_.unsubscribe();  // idempotent; allowed inside the listener
  }

  const EventSlot slot_;
  std::atomic<bool> ended_{false};
  std::mutex mutex_;   // guards self_
  Subscription self_;  // the subscription's second handle; empty until adopt()
};

}  // namespace detail

// Subscribes `slot` to the events matching `pattern` on `notifier`, as an Event listener (it runs
// on the instrumenting thread, as every listener does; what it throws goes to the notifier's
// error handler). Its tracked objects are locked for the whole of each call, so an object reset
// on another thread during a call stays alive until the call returns. Once a tracked object has
// expired, the slot is never called again, and the first event delivered to this subscription
// after the expiry removes the subscription from the notifier before that dispatch returns
// (listening() and stats().subscriptions reflect it from then on); without such an event it stays
// registered until the returned Subscription is unsubscribed or destroyed. A slot already expired
// here subscribes nothing: the Subscription returned is empty.
// Throws what Notifier::subscribe throws (InvalidPattern).
inline Subscription subscribe(Notifier& notifier, Pattern pattern, EventSlot slot,
                              SubscribeOptions options = {}) {
  if (slot.expired()) return Subscription();
  auto state = std::make_shared<detail::TrackedSlot>(std::move(slot));
  Subscription subscription = notifier.subscribe(
      std::move(pattern), [state](const Event& event) { state->deliver(event); }, options);
  state->adopt(subscription.alias());
  return subscription;
}

// The same on notifications::default_notifier().
inline Subscription subscribe(Pattern pattern, EventSlot slot, SubscribeOptions options = {}) {
  return subscribe(default_notifier(), std::move(pattern), std::move(slot), options);
}

}  // namespace notifications::signals2
