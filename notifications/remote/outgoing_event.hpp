// Private: an event as it waits in a Bridge's outbound queue, reduced to what its envelope needs,
// and the encoding of its envelope into a reused Message.
//
// The payload is serialised when the event is queued: one buffer instead of a copy of the JSON
// tree (about ten allocations, all freed later on the sender thread).
//
// Thread-safety: OutgoingEvent is a value; the functions are stateless and safe from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "notifications/event.hpp"
#include "notifications/transport.hpp"

namespace notifications::detail {

// Name, payload and traceparent are kept back to back inside the object when together they fit
// in kInlineBytes (most events), so queueing one allocates nothing; longer texts go to one heap
// buffer. Move-only.
class OutgoingEvent {
 public:
  static constexpr std::size_t kInlineBytes = 200;  // makes the whole object 256 bytes

  OutgoingEvent() noexcept = default;
  OutgoingEvent(OutgoingEvent&& other) noexcept { take(other); }
  OutgoingEvent& operator=(OutgoingEvent&& other) noexcept {
    if (this != &other) take(other);
    return *this;
  }
  OutgoingEvent(const OutgoingEvent&) = delete;
  OutgoingEvent& operator=(const OutgoingEvent&) = delete;
  ~OutgoingEvent() = default;

  // The views must not point into this event's own text. Throws std::length_error past 4 GiB in
  // one text, std::bad_alloc when out of memory.
  void set_text(std::string_view name, std::string_view payload, std::string_view traceparent);

  std::string_view name() const noexcept { return {text(), name_size_}; }
  std::string_view payload() const noexcept { return {text() + name_size_, payload_size_}; }  // compact JSON
  // Well-formed, or empty (malformed ones do not travel).
  std::string_view traceparent() const noexcept { return {text() + name_size_ + payload_size_, traceparent_size_}; }
  // What this event holds in memory while queued: the object, its heap text and its exception.
  std::size_t queued_bytes() const noexcept {
    std::size_t bytes = sizeof(OutgoingEvent) + (heap_ ? text_size() : 0);
    if (exception) bytes += exception->first.size() + exception->second.size() + sizeof(*exception);
    return bytes;
  }

  std::uint64_t id_sequence = 0;  // formats the id (local events have no explicit id)
  std::chrono::system_clock::time_point time{};
  std::chrono::microseconds duration{0};
  std::unique_ptr<std::pair<std::string, std::string>> exception;  // type and message; null: none

 private:
  const char* text() const noexcept { return heap_ ? heap_.get() : inline_; }
  std::size_t text_size() const noexcept { return std::size_t{name_size_} + payload_size_ + traceparent_size_; }
  void take(OutgoingEvent& other) noexcept;

  std::unique_ptr<char[]> heap_;  // null: the text is in inline_
  std::uint32_t name_size_ = 0;
  std::uint32_t payload_size_ = 0;
  std::uint32_t traceparent_size_ = 0;
  char inline_[kInlineBytes];
};

// For local events (a remote one, which carries its sender's id, is never forwarded). Throws
// only when the payload cannot be serialised (out of memory).
OutgoingEvent outgoing_from_event(const Event& event);

// Makes `message` the envelope of `event` on `subject`, with headers as message_from_event();
// the bytes equal those of message_from_event() for the event it was made from. The message's
// strings are overwritten in place, so a reused Message allocates nothing in steady state.
void encode_outgoing(const OutgoingEvent& event, std::string_view producer, std::string_view producer_instance,
                     std::uint64_t sequence, std::string_view subject, Message& message);

// RFC 3339 UTC with six fractional digits (format_rfc3339) appended to `out`.
void append_rfc3339(std::string& out, std::chrono::system_clock::time_point time);

}  // namespace notifications::detail
