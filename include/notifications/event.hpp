// Event: what a subscriber receives for one instrumented block (or one instant event).
//
// Thread-safety: an Event (like ExceptionInfo and EventOrigin) is a value. Const member functions may be called concurrently from any
// number of threads. The Event a listener receives by reference lives only for that call and
// borrows the instrumenting call's name and payload; copy it (copies are self-contained: they own
// their name and payload) to keep it or to hand it to another thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace notifications {

namespace detail {
struct EventAccess;
class ActiveEvent;
struct EventContext;
class DeferredPayload;
}

// What an instrumented block threw. The exception itself still propagates to the caller of
// instrument(); this is the subscribers' record of it.
struct ExceptionInfo {
  std::string type;            // demangled dynamic type name, e.g. "std::runtime_error"
  std::string message;         // what() for std::exception, empty otherwise
  std::exception_ptr object;   // the exception itself (Rails' exception_object)
};

// Where an instrument() call is in the source code. Every instrument() overload takes one as its
// last argument, defaulted to the caller's location: compile-time constants, so capturing it costs
// nothing when nobody listens and copying three words per event when someone does.
// (std::source_location needs a newer Clang than Debian 12's with libstdc++; this works with both
// GCC and Clang.) Thread-safety: a value; the strings are static.
struct SourceLocation {
  const char* file = "";      // as the compiler named the file (__FILE__)
  const char* function = "";  // the enclosing function's name (__func__)
  unsigned line = 0;          // 0: unknown

  static constexpr SourceLocation current(const char* file = __builtin_FILE(),
                                          const char* function = __builtin_FUNCTION(),
                                          unsigned line = __builtin_LINE()) noexcept {
    return SourceLocation{file, function, line};
  }
  constexpr bool known() const noexcept { return line != 0; }
};

// Where a remote event came from (set by the Bridge on events it received from a transport).
struct EventOrigin {
  std::string producer;           // the sending process's configured app name
  std::string producer_instance;  // the sending process's instance id
  std::string transport;          // e.g. "memory", "nats"
};

class Event {
 public:
  using wall_clock = std::chrono::system_clock;
  using mono_clock = std::chrono::steady_clock;

  // A self-contained event with the current time as start and end, and the calling thread's
  // context and tags (mostly for tests).
  Event(std::string name, nlohmann::json payload);

  Event(const Event& other);
  Event& operator=(const Event& other);
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  ~Event() = default;

  std::string_view name() const noexcept { return name_; }
  // The payload. A remote event a Bridge delivered may keep the payload's JSON text as it arrived
  // (validated) and build the value on the first read, once for the event and its copies,
  // whichever thread reads first: that read may throw std::bad_alloc. Every other read, and every
  // read of a local event's payload, cannot throw.
  const nlohmann::json& payload() const { return payload_ != nullptr ? *payload_ : deferred_payload(); }

  // Unique id of this event (a UUID string), formatted on demand.
  std::string id() const;
  // Per-thread id shared by every event instrumented on one thread (as in Rails).
  std::string transaction_id() const;

  // Wall-clock time the event started.
  wall_clock::time_point time() const noexcept { return time_; }
  // Monotonic start and end; end() == start() for an instant event and inside start listeners.
  mono_clock::time_point start() const noexcept { return start_; }
  mono_clock::time_point end() const noexcept { return end_; }
  std::chrono::nanoseconds duration() const noexcept { return end_ - start_; }
  double duration_ms() const noexcept {
    return std::chrono::duration<double, std::milli>(end_ - start_).count();
  }

  // CPU time of the instrumenting thread during the block. Only measured when a subscriber of
  // this event asked for it (SubscribeOptions::cpu_time); empty otherwise. Zero for an instant
  // event. Its clock is read inside the wall-clock pair, so it does not exceed duration() by
  // more than the two clocks' rates differ.
  std::optional<std::chrono::nanoseconds> cpu_time() const noexcept { return cpu_time_; }
  // duration() - cpu_time(), never negative (clamped at zero, as Rails does), when cpu_time() is
  // known.
  std::optional<std::chrono::nanoseconds> idle_time() const noexcept {
    if (!cpu_time_) return std::nullopt;
    const std::chrono::nanoseconds idle = duration() - *cpu_time_;
    return idle.count() > 0 ? idle : std::chrono::nanoseconds(0);
  }

  // Set when the instrumented block threw.
  const std::optional<ExceptionInfo>& exception() const noexcept { return exception_; }

  // Set on events that arrived from another process through a transport.
  bool remote() const noexcept { return origin_.has_value(); }
  const std::optional<EventOrigin>& origin() const noexcept { return origin_; }

  // The context and tags of the instrumenting thread when the event started
  // (notifications/context.hpp), or those it arrived with: objects, empty when there were none.
  const nlohmann::json& context() const noexcept;
  const nlohmann::json& tags() const noexcept;

  // Where the instrument() call that made this event is; unknown (line 0) for events built
  // otherwise (received from another process, Event(name, payload), published). Never sent.
  const SourceLocation& source_location() const noexcept { return where_; }

  // W3C traceparent carried by the event: the one it arrived with, else a string payload member
  // "traceparent", else empty.
  std::string traceparent() const;

 private:
  friend struct detail::EventAccess;
  friend class detail::ActiveEvent;
  Event() = default;
  void own_from(const Event& other);
  const nlohmann::json& deferred_payload() const;

  std::string_view name_;              // points at owned_name_ or at the instrument() argument
  // Points at *owned_payload_ or at the instrument() argument; null when deferred_payload_ holds
  // the payload (a remote event whose payload no one has taken ownership of).
  nlohmann::json* payload_ = nullptr;
  std::string owned_name_;
  // Engaged only when the event owns its payload: an event that borrows one (every instrument()
  // call) neither constructs nor destroys a JSON value of its own.
  std::optional<nlohmann::json> owned_payload_;
  // Shared by copies: the text is immutable and the value is built once.
  std::shared_ptr<const detail::DeferredPayload> deferred_payload_;
  wall_clock::time_point time_{};
  mono_clock::time_point start_{};
  mono_clock::time_point end_{};
  std::uint64_t sequence_ = 0;     // formats id() unless explicit_id_ is set
  std::uint64_t transaction_ = 0;  // formats transaction_id()
  std::string explicit_id_;        // id carried over from a remote envelope
  std::optional<std::chrono::nanoseconds> cpu_time_;
  std::optional<ExceptionInfo> exception_;
  std::optional<EventOrigin> origin_;
  std::string traceparent_;
  std::shared_ptr<const detail::EventContext> context_;  // null: neither context nor tags
  SourceLocation where_;
};

}  // namespace notifications
