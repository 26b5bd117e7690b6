// Private: the library's write access to Event fields.
// Thread-safety: touches one Event; the caller owns it exclusively.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>

#include "notifications/event.hpp"
#include "local/deferred_payload.hpp"
#include "local/event_context.hpp"
#include "process/ids.hpp"

namespace notifications::detail {

// The wall-clock time at a monotonic instant, from a per-thread offset between the two clocks
// that is refreshed when it is more than a second old: one clock read per event instead of two
// (each costs tens of nanoseconds here). A step of the wall clock shows up within a second.
inline Event::wall_clock::time_point wall_time_at(Event::mono_clock::time_point now) {
  struct Offset {
    Event::mono_clock::time_point synced{};
    Event::wall_clock::duration offset{};
    bool valid = false;
  };
  thread_local Offset cache;
  if (!cache.valid || now - cache.synced > std::chrono::seconds(1)) {
    cache.offset = Event::wall_clock::now().time_since_epoch() -
                   std::chrono::duration_cast<Event::wall_clock::duration>(now.time_since_epoch());
    cache.synced = now;
    cache.valid = true;
  }
  return Event::wall_clock::time_point(
      std::chrono::duration_cast<Event::wall_clock::duration>(now.time_since_epoch()) + cache.offset);
}

struct EventAccess {
  // Starts an event that borrows `name` and `payload`; the caller sets its context (ActiveEvent,
  // from its ThreadCache).
  static void begin(Event& event, std::string_view name, nlohmann::json& payload, const SourceLocation& where) {
    event.where_ = where;
    event.name_ = name;
    event.payload_ = &payload;
    event.start_ = event.end_ = Event::mono_clock::now();
    event.time_ = wall_time_at(event.start_);
    draw_event_ids(event.sequence_, event.transaction_);
  }
  static void set_context(Event& event, std::shared_ptr<const EventContext> captured) {
    event.context_ = std::move(captured);
  }
  static const std::shared_ptr<const EventContext>& captured_context(const Event& event) { return event.context_; }
  static void end(Event& event) { event.end_ = Event::mono_clock::now(); }
  static void set_cpu_time(Event& event, std::chrono::nanoseconds cpu) { event.cpu_time_ = cpu; }
  static void set_exception(Event& event, ExceptionInfo info) { event.exception_ = std::move(info); }
  // The payload to change; a deferred one is built first and the event owns it from then on.
  static nlohmann::json& payload(Event& event) {
    if (event.payload_ == nullptr) {
      event.payload_ = &event.owned_payload_.emplace(event.deferred_payload_->value());
      event.deferred_payload_.reset();
    }
    return *event.payload_;
  }
  // What id() formats, unless the event carries an explicit id (remote events).
  static std::uint64_t id_sequence(const Event& event) { return event.sequence_; }

  // A self-contained event started and ended at `now`, as Event(name, payload) at that instant.
  static Event make(std::string name, nlohmann::json payload, Event::mono_clock::time_point now) {
    Event event;
    event.owned_name_ = std::move(name);
    event.owned_payload_.emplace(std::move(payload));
    event.name_ = event.owned_name_;
    event.payload_ = &*event.owned_payload_;
    event.start_ = event.end_ = now;
    event.time_ = wall_time_at(now);
    event.sequence_ = next_event_sequence();
    event.transaction_ = thread_transaction();
    return event;
  }

  // A self-contained event as make() makes it, whose payload is built from `payload` on its first
  // read.
  static Event make_deferred(std::string name, std::shared_ptr<const DeferredPayload> payload,
                             Event::mono_clock::time_point now) {
    Event event = make(std::move(name), nlohmann::json(), now);
    event.owned_payload_.reset();
    event.payload_ = nullptr;
    event.deferred_payload_ = std::move(payload);
    return event;
  }

  // For events received from another process: the sender's id, times and trace context. The
  // monotonic start is `now` and end - start equals the sender's duration.
  static void set_remote(Event& event, std::string id, Event::wall_clock::time_point time,
                         std::chrono::nanoseconds duration, EventOrigin origin,
                         std::string traceparent, Event::mono_clock::time_point now) {
    event.explicit_id_ = std::move(id);
    event.time_ = time;
    event.start_ = now;
    event.end_ = event.start_ + std::chrono::duration_cast<Event::mono_clock::duration>(duration);
    event.origin_ = std::move(origin);
    event.traceparent_ = std::move(traceparent);
  }
};

}  // namespace notifications::detail
