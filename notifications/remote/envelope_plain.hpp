// Private: the fast decoder for envelopes in the plain form this library writes.
//
// decode_envelope() tries it first and falls back to the general decoder (a full JSON parse, then
// field checks that name what is wrong) whenever it declines. It never rejects: it either decodes
// a body exactly as the general decoder would, or declines. The fuzz target checks that promise.
//
// Thread-safety: stateless, safe from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "notifications/envelope.hpp"
#include "local/deferred_payload.hpp"

namespace notifications::detail {

// True, with `out` set, when `body` is a valid envelope whose top-level keys are known and appear
// once each, whose id, time, traceparent and numbers are plain tokens (no escapes, no exponents).
// Other strings may hold escapes and any valid UTF-8, the payload any JSON. False (and `out` left
// in an unspecified state) otherwise, valid or not: the general decoder decides.
bool decode_plain_envelope(std::string_view body, Envelope& out);

// Where a payload is within a body.
struct PayloadSpan {
  std::size_t offset = 0;
  std::size_t size = 0;
};

// decode_plain_envelope(), except that the payload is validated and not built: `out.payload` is
// left null and `payload` says where the payload is in `body`. Validating accepts a payload when
// nlohmann's parser accepts it (alone, exactly as within the body), whatever the strings hold; it
// declines \u escapes of surrogates and numbers nlohmann might not hold, which the general
// decoder then judges.
bool decode_plain_envelope_deferring_payload(std::string_view body, Envelope& out, PayloadSpan& payload);

// The value of a payload decode_plain_envelope_deferring_payload() validated: exactly what the
// general decoder builds from the same body. Throws only when out of memory.
nlohmann::json build_validated_payload(std::string_view text);

// decode_envelope() for a receiver: when the fast decoder accepts `body`, the payload is validated
// and not built, `payload` says where it is and envelope->payload is null; otherwise `payload` is
// empty and the result is decode_envelope()'s.
DecodeResult decode_envelope_deferring_payload(std::string_view body, std::optional<PayloadSpan>& payload) noexcept;

// The payload of an envelope decoded so from `body`, to be built on its first read
// (build_validated_payload()); it keeps the body.
std::shared_ptr<const DeferredPayload> deferred_payload(std::string body, PayloadSpan payload);

// event_from_envelope() for an envelope decoded so, with its deferred payload.
Event event_with_deferred_payload(Envelope envelope, std::string_view transport_kind,
                                  std::shared_ptr<const DeferredPayload> payload);

// The general decoder alone (what decode_envelope() falls back to).
DecodeResult decode_general_envelope(std::string_view body) noexcept;

}  // namespace notifications::detail
