// Private: the library's write access to Event fields.
// Thread-safety: touches one Event; the caller owns it exclusively.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>

#include "notifications/event.hpp"
#include "notifications/ids.hpp"

namespace notifications::detail {

struct EventAccess {
  // Starts an event that borrows `name` and `payload` (the instrument() arguments).
  static void begin(Event& event, std::string_view name, nlohmann::json& payload) {
    event.name_ = name;
    event.payload_ = &payload;
    event.time_ = Event::wall_clock::now();
    event.start_ = event.end_ = Event::mono_clock::now();
    event.sequence_ = next_event_sequence();
    event.transaction_ = thread_transaction();
  }
  static void end(Event& event) { event.end_ = Event::mono_clock::now(); }
  static void set_cpu_time(Event& event, std::chrono::nanoseconds cpu) { event.cpu_time_ = cpu; }
  static void set_exception(Event& event, ExceptionInfo info) { event.exception_ = std::move(info); }
  static nlohmann::json& payload(Event& event) { return *event.payload_; }

  // For events received from another process: the sender's id, times and trace context. The
  // monotonic start is "now" and end - start equals the sender's duration.
  static void set_remote(Event& event, std::string id, Event::wall_clock::time_point time,
                         std::chrono::nanoseconds duration, EventOrigin origin,
                         std::string traceparent) {
    event.explicit_id_ = std::move(id);
    event.time_ = time;
    event.start_ = Event::mono_clock::now();
    event.end_ = event.start_ + std::chrono::duration_cast<Event::mono_clock::duration>(duration);
    event.origin_ = std::move(origin);
    event.traceparent_ = std::move(traceparent);
  }
};

}  // namespace notifications::detail
