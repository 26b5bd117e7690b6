// Envelope: the wire contract for one event (version 1, JSON). Field by field in
// docs/envelope.md; JSON Schema in docs/envelope.schema.json.
//
// Thread-safety: Envelope is a value; the functions are stateless and safe from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "notifications/event.hpp"
#include "notifications/transport.hpp"

namespace notifications {

struct Envelope {
  static constexpr int kSchemaVersion = 1;
  static constexpr std::string_view kContentType = "application/vnd.notifications.envelope.v1+json";

  std::string id;                                 // UUID, also the message id header
  std::string name;                               // event name
  nlohmann::json payload;                         // event payload (any JSON)
  std::chrono::system_clock::time_point time{};   // start, RFC 3339 UTC with microseconds
  std::chrono::microseconds duration{0};          // end - start
  std::string producer;                           // sending app's configured name
  std::string producer_instance;                  // sending process's instance id
  int schema_version = kSchemaVersion;
  std::string traceparent;                        // W3C trace context; empty when none
  // Position among the events this producer instance sent on this subject, from 1; 0 = absent.
  // Receivers count gaps as lost events.
  std::uint64_t sequence = 0;
  std::optional<std::string> exception_type;      // set when the block threw
  std::optional<std::string> exception_message;
  // The producer's context and tags (notifications/context.hpp): objects, or null when absent.
  // Encoded only when a non-empty object; a received member that is not an object is refused.
  nlohmann::json context;
  nlohmann::json tags;
};

// Encodes as one compact JSON object.
std::string encode_envelope(const Envelope& envelope);

// Never throws. On failure `error` names the field and what is wrong with it
// (e.g. `field "time": expected RFC 3339 UTC, got "yesterday"`).
struct DecodeResult {
  std::optional<Envelope> envelope;
  std::string error;
  explicit operator bool() const noexcept { return envelope.has_value(); }
};
DecodeResult decode_envelope(std::string_view body) noexcept;

// Formats RFC 3339 UTC with exactly six fractional digits: 2026-11-25T12:00:00.123456Z.
// Parses 0 to 9 fractional digits (kept to the microsecond), uppercase 'T' and 'Z', no offsets.
std::string format_rfc3339(std::chrono::system_clock::time_point time);
std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text);

// The envelope for a local event.
Envelope envelope_from_event(const Event& event, std::string_view producer,
                             std::string_view producer_instance);
// The remote event for a received envelope (remote() is true; origin names the producer).
Event event_from_envelope(Envelope envelope, std::string_view transport_kind);

// A message carrying the envelope: body, Message::id = the envelope's id (each transport maps it
// to its own dedupe mechanism), and headers "Content-Type" and, when present, "traceparent".
Message message_from_envelope(const Envelope& envelope, std::string subject);
// The same message for a local event as message_from_envelope(envelope_from_event(event, ...))
// with `sequence` set, without building the Envelope (the payload is not copied).
Message message_from_event(const Event& event, std::string_view producer, std::string_view producer_instance,
                           std::uint64_t sequence, std::string subject);

}  // namespace notifications
