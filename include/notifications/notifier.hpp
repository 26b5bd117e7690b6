// Notifier: an in-process publish/subscribe bus with the semantics of Rails'
// ActiveSupport::Notifications.
//
// Thread-safety: every member function may be called from any thread, concurrently, and from
// inside listeners (see docs/dispatch.md for the numbered promises on nested dispatch). Listeners
// run synchronously on the instrumenting thread; no lock of the notifier is held while they run.
// The option, listener and statistics structs below are values.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

#include "notifications/detail/core.hpp"
#include "notifications/event.hpp"
#include "notifications/pattern.hpp"
#include "notifications/subscription.hpp"

namespace notifications {

// A listener called once per event, after the block, with the finished event.
using EventListener = std::function<void(const Event&)>;

// A listener called around the block: start() before it runs (end() == start() then),
// finish() after. finish() is called exactly once for every start() that was called.
struct StartFinishListener {
  std::function<void(const Event&)> start;
  std::function<void(const Event&)> finish;
};

struct SubscribeOptions {
  // Measure the instrumenting thread's CPU time for this subscriber's events (costs two reads of
  // the thread CPU clock per event while such a subscriber exists).
  bool cpu_time = false;
};

// A subscriber threw. Passed to the ErrorHandler.
struct SubscriberFailure {
  std::string_view event_name;
  std::uint64_t subscription_id;
  std::string_view pattern;   // the subscription's pattern text ("" for all events)
  std::string_view phase;     // "start" or "finish"
  std::exception_ptr error;
  std::string message;        // what() or a description of a non-std exception
};
using ErrorHandler = std::function<void(const SubscriberFailure&)>;

struct NotifierOptions {
  // Receives subscriber errors. Default: logged through spdlog, once per subscription and event
  // name, at most 10 lines a second (every error is still counted in stats()).
  ErrorHandler error_handler{};
  // Rethrow subscriber errors to the instrumenting caller (after the block and every subscriber
  // ran): one error as is, several as SubscriberErrors. A SubscriberErrors that a listener let
  // out (from an event it instrumented) is flattened into its members, so an aggregate never
  // holds another. Never masks the block's own exception.
  bool strict = false;
  // Bound on the number of event names whose listener sets are memoised per notifier.
  std::size_t name_cache_capacity = 4096;
};

struct NotifierStats {
  std::size_t subscriptions = 0;
  std::uint64_t subscriber_errors = 0;     // every listener exception, handled or rethrown
  std::uint64_t error_handler_failures = 0;  // the error handler itself threw
  std::size_t cached_names = 0;
};

// Defers building a payload until someone listens: instrument("x", lazy([&]{ return json{...}; }))
template <class Make>
struct LazyPayload {
  Make make;
};
template <class Make>
LazyPayload<Make> lazy(Make make) {
  return LazyPayload<Make>{std::move(make)};
}

class Notifier;

// A pre-resolved event name for hot paths. When nobody listens, Handle::instrument reads one
// atomic of the notifier and one of the handle: no hashing, no clock, no allocation. While the
// notifier's generation is the one the handle resolved at and someone listens, it goes straight
// to the calling thread's cached listeners with the name's hash computed once, at creation.
// Thread-safety: a Handle may be shared by any number of threads and copied freely.
class Handle {
 public:
  Handle(const Handle& other) : core_(other.core_), name_(other.name_), hash_(other.hash_) {}
  Handle& operator=(const Handle& other) {
    core_ = other.core_;
    name_ = other.name_;
    hash_ = other.hash_;
    seen_.store(0, std::memory_order_relaxed);
    return *this;
  }

  const std::string& name() const noexcept { return name_; }
  bool listening() const { return lookup() != nullptr; }

  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(nlohmann::json& payload, Block&& block, SourceLocation where = SourceLocation::current()) const {
    return detail::instrument(*core_, lookup(), name_, payload, block, where);
  }
  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(nlohmann::json&& payload, Block&& block, SourceLocation where = SourceLocation::current()) const {
    return detail::instrument(*core_, lookup(), name_, payload, block, where);
  }
  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(Block&& block, SourceLocation where = SourceLocation::current()) const {
    const detail::ListenerSet* set = lookup();
    if constexpr (!std::is_invocable_v<Block&, nlohmann::json&>) {
      if (set == nullptr) return block();  // no payload to build or destroy
    }
    nlohmann::json payload;
    return detail::instrument(*core_, set, name_, payload, block, where);
  }
  template <class Make, detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(LazyPayload<Make> lazy_payload, Block&& block, SourceLocation where = SourceLocation::current()) const {
    const detail::ListenerSet* set = lookup();
    nlohmann::json payload;
    if (set != nullptr) {
      payload = lazy_payload.make();
      // Looked up again: a builder that instruments or subscribes may have retired `set`.
      set = lookup();
    }
    return detail::instrument(*core_, set, name_, payload, block, where);
  }
  // Instant event.
  void instrument(const nlohmann::json& payload = nullptr, SourceLocation where = SourceLocation::current()) const {
    detail::instrument_instant(*core_, lookup(), name_, payload, where);
  }

 private:
  friend class Notifier;
  Handle(std::shared_ptr<detail::NotifierCore> core, std::string name, std::size_t hash)
      : core_(std::move(core)), name_(std::move(name)), hash_(hash) {}

  const detail::ListenerSet* lookup() const {
    const std::uint64_t generation = core_->generation.load(std::memory_order_acquire);
    const std::uint64_t seen = seen_.load(std::memory_order_relaxed);
    // seen == generation * 2: resolved at this generation and nobody listened.
    if (seen == generation * 2) return nullptr;
    // Someone listened at this generation: this thread's cache entry, without hashing.
    if (seen == generation * 2 + 1) return core_->find_hashed(name_, hash_);
    return refresh(generation);
  }
  const detail::ListenerSet* refresh(std::uint64_t generation) const;

  std::shared_ptr<detail::NotifierCore> core_;
  std::string name_;
  std::size_t hash_;  // detail::NotifierCore::hash(name_)
  mutable std::atomic<std::uint64_t> seen_{0};  // generation * 2 + listening; 0 = unknown
};

class Notifier {
 public:
  explicit Notifier(NotifierOptions options = {});
  // Subscriptions and handles outlive the notifier safely; instrumenting through a Handle after
  // the notifier is gone finds no listeners. Must not race with calls on this object.
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // ---- Instrumenting -------------------------------------------------------------------------
  // Runs the block and publishes an event around it; returns what the block returns and
  // propagates what it throws (after publishing the event with the exception recorded). The
  // block may take the payload as `nlohmann::json&` and add to it. A payload passed as a
  // non-const lvalue is the event's payload itself (as in Rails): additions are visible to the
  // caller. When nobody listens to `name`, only the block runs. When the block throws, the event
  // records exception() and, as in Rails, the payload (if null or an object) gets
  // "exception": [type, message] before listeners see it.
  // Throws InvalidName for an empty name.
  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(std::string_view name, nlohmann::json& payload,
                                           Block&& block, SourceLocation where = SourceLocation::current()) {
    return detail::instrument(*core_, detail::find_listeners(*core_, name), name, payload, block, where);
  }
  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(std::string_view name, nlohmann::json&& payload,
                                           Block&& block, SourceLocation where = SourceLocation::current()) {
    return detail::instrument(*core_, detail::find_listeners(*core_, name), name, payload, block, where);
  }
  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(std::string_view name, const nlohmann::json& payload,
                                           Block&& block, SourceLocation where = SourceLocation::current()) {
    // A const payload is copied only when someone listens or the block wants a writable one.
    const detail::ListenerSet* set = detail::find_listeners(*core_, name);
    if (set == nullptr && !std::is_invocable_v<Block&, nlohmann::json&>) {
      nlohmann::json unused;
      return detail::run_block(block, unused);
    }
    nlohmann::json copy = payload;
    return detail::instrument(*core_, set, name, copy, block, where);
  }
  template <detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(std::string_view name, Block&& block, SourceLocation where = SourceLocation::current()) {
    const detail::ListenerSet* set = detail::find_listeners(*core_, name);
    if constexpr (!std::is_invocable_v<Block&, nlohmann::json&>) {
      if (set == nullptr) return block();  // no payload to build or destroy
    }
    nlohmann::json payload;
    return detail::instrument(*core_, set, name, payload, block, where);
  }
  // Builds the payload only when someone listens.
  template <class Make, detail::InstrumentBlock Block>
  detail::block_result_t<Block> instrument(std::string_view name, LazyPayload<Make> lazy_payload,
                                           Block&& block, SourceLocation where = SourceLocation::current()) {
    const detail::ListenerSet* set = detail::find_listeners(*core_, name);
    nlohmann::json payload;
    if (set != nullptr) {
      payload = lazy_payload.make();
      // Looked up again: a builder that instruments or subscribes may have retired `set`.
      set = detail::find_listeners(*core_, name);
    }
    return detail::instrument(*core_, set, name, payload, block, where);
  }
  // Instant event: no block; start == end.
  void instrument(std::string_view name, const nlohmann::json& payload = nullptr, SourceLocation where = SourceLocation::current()) {
    detail::instrument_instant(*core_, detail::find_listeners(*core_, name), name, payload, where);
  }
  template <class Make>
  void instrument(std::string_view name, LazyPayload<Make> lazy_payload, SourceLocation where = SourceLocation::current()) {
    if (detail::find_listeners(*core_, name) == nullptr) return;
    const nlohmann::json payload = lazy_payload.make();
    // Looked up after the builder ran: one that instruments or subscribes may retire a set.
    detail::instrument_instant(*core_, detail::find_listeners(*core_, name), name, payload, where);
  }

  // Delivers an event built elsewhere (the Bridge uses it for events received from other
  // processes) to this notifier's listeners, keeping its times, id and origin. Start/finish
  // listeners get start() and finish() back to back. While they run, the calling thread's
  // context and tags are the event's (notifications/context.hpp), so events they instrument carry
  // them on. Throws InvalidName for an empty name.
  void publish(Event event);

  // True when at least one current subscriber would receive an event of this name.
  bool listening(std::string_view name);
  // A cached handle for hot paths. Throws InvalidName for an empty name.
  Handle handle(std::string name);

  // ---- Subscribing ---------------------------------------------------------------------------
  Subscription subscribe(Pattern pattern, EventListener listener, SubscribeOptions options = {});
  Subscription subscribe(Pattern pattern, StartFinishListener listener,
                         SubscribeOptions options = {});
  // Every event.
  Subscription subscribe(EventListener listener, SubscribeOptions options = {});
  // A null pattern does not compile (it would otherwise become a null C string): for every
  // event, subscribe without a pattern or with Pattern::all().
  template <class... Args>
  Subscription subscribe(std::nullptr_t, Args&&...) = delete;
  // An object with start(const Event&) and finish(const Event&) members, shared with the caller.
  template <class Object>
    requires requires(Object& object, const Event& event) {
      object.start(event);
      object.finish(event);
    }
  Subscription subscribe(Pattern pattern, std::shared_ptr<Object> object,
                         SubscribeOptions options = {}) {
    StartFinishListener listener{[object](const Event& e) { object->start(e); },
                                 [object](const Event& e) { object->finish(e); }};
    return subscribe(std::move(pattern), std::move(listener), options);
  }

  // Subscribes the listener for the duration of the block only; returns the block's value.
  template <class Block>
  decltype(auto) subscribed(Pattern pattern, EventListener listener, Block&& block) {
    Subscription subscription = subscribe(std::move(pattern), std::move(listener));
    return std::forward<Block>(block)();
  }
  template <class... Args>
  void subscribed(std::nullptr_t, Args&&...) = delete;  // as subscribe(nullptr, ...)

  // As Rails' unsubscribe(name): removes the exact-name subscriptions of `name` and excludes
  // `name` from the wildcard and regex subscriptions that match it now. Never touches
  // subscriptions without a pattern (subscribe(listener) or Pattern::all(), in any listener
  // shape, testing::capture included): they keep receiving `name`.
  void unsubscribe(std::string_view name);

  // ---- Errors and introspection --------------------------------------------------------------
  void set_error_handler(ErrorHandler handler);
  void set_strict(bool strict);
  NotifierStats stats() const;

 private:
  std::shared_ptr<detail::NotifierCore> core_;
};

}  // namespace notifications
