// Private: the fast decoder for envelopes in the plain form this library writes.
//
// decode_envelope() tries it first and falls back to the general decoder (a full JSON parse, then
// field checks that name what is wrong) whenever it declines. It never rejects: it either decodes
// a body exactly as the general decoder would, or declines. The fuzz target checks that promise.
//
// Thread-safety: stateless, safe from any thread.
#pragma once

#include <string_view>

#include "notifications/envelope.hpp"

namespace notifications::detail {

// True, with `out` set, when `body` is a valid envelope whose top-level keys are known and appear
// once each, whose id, time, traceparent and numbers are plain tokens (no escapes, no exponents).
// Other strings may hold escapes and any valid UTF-8, the payload any JSON. False (and `out` left
// in an unspecified state) otherwise, valid or not: the general decoder decides.
bool decode_plain_envelope(std::string_view body, Envelope& out);

// The general decoder alone (what decode_envelope() falls back to).
DecodeResult decode_general_envelope(std::string_view body) noexcept;

}  // namespace notifications::detail
