// Private: an event as it waits in a Bridge's outbound queue, reduced to what its envelope needs,
// and the encoding of its envelope into a reused Message.
//
// The payload is serialised when the event is queued: one buffer instead of a copy of the JSON
// tree (about ten allocations, all freed later on the sender thread).
//
// Thread-safety: OutgoingEvent is a value; the functions are stateless and safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "notifications/event.hpp"
#include "notifications/transport.hpp"

namespace notifications::detail {

struct OutgoingEvent {
  std::string name;
  std::string payload;      // compact JSON text
  std::string traceparent;  // well-formed, or empty (malformed ones do not travel)
  std::uint64_t id_sequence = 0;  // formats the id (local events have no explicit id)
  std::chrono::system_clock::time_point time{};
  std::chrono::microseconds duration{0};
  std::unique_ptr<std::pair<std::string, std::string>> exception;  // type and message; null: none
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
