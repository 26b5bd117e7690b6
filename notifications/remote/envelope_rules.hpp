// Private: the field rules of envelope version 1 that the encoder and both decoders share
// (docs/envelope.md states them for readers in other languages).
//
// Thread-safety: constants and stateless functions, safe from any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace notifications::detail {

// Arrays and objects nest at most this deep in a body; the envelope object is level 1.
constexpr std::size_t kMaxDepth = 64;
// The largest duration_us and sequence accepted: 2^53 - 1, the largest integer every JSON reader
// holds exactly.
constexpr std::int64_t kMaxExactInteger = (std::int64_t{1} << 53) - 1;
// Times are kept to the microsecond: the range is that of the clock, rounded inwards.
inline constexpr auto kEarliestEnvelopeTime =
    std::chrono::ceil<std::chrono::microseconds>(std::chrono::system_clock::time_point::min());
inline constexpr auto kLatestEnvelopeTime =
    std::chrono::floor<std::chrono::microseconds>(std::chrono::system_clock::time_point::max());

// The bytes a JSON string may hold as they are, with no escape: printable ASCII but '"' and '\\'.
// The encoder writes such strings between quotes; the fast decoder reads them without nlohmann.
inline constexpr auto kPlainStringByte = [] {
  std::array<bool, 256> table{};
  for (int c = 0x20; c <= 0x7E; ++c) table[static_cast<std::size_t>(c)] = c != '"' && c != '\\';
  return table;
}();
inline bool is_plain_string_byte(char c) { return kPlainStringByte[static_cast<unsigned char>(c)]; }

// The length of the well-formed UTF-8 sequence that starts `text` at `at` (Unicode, table 3-7:
// no overlong forms, no surrogates, nothing past U+10FFFF), or 0 when none does. nlohmann's
// lexer and serializer accept exactly these.
inline std::size_t utf8_sequence_length(std::string_view text, std::size_t at) {
  const auto in = [&](std::size_t i, unsigned char low, unsigned char high) {
    if (at + i >= text.size()) return false;
    const auto byte = static_cast<unsigned char>(text[at + i]);
    return byte >= low && byte <= high;
  };
  const auto lead = static_cast<unsigned char>(text[at]);
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return in(1, 0x80, 0xBF) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    const unsigned char low = lead == 0xE0 ? 0xA0 : 0x80;
    const unsigned char high = lead == 0xED ? 0x9F : 0xBF;
    return in(1, low, high) && in(2, 0x80, 0xBF) ? 3 : 0;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    const unsigned char low = lead == 0xF0 ? 0x90 : 0x80;
    const unsigned char high = lead == 0xF4 ? 0x8F : 0xBF;
    return in(1, low, high) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

// 8-4-4-4-12 hex digits, either case, any version and variant.
bool is_uuid(std::string_view text);

// W3C Trace Context: version-traceid-parentid-flags in lowercase hex; version ff and all-zero
// ids are invalid.
bool is_traceparent(std::string_view text);

enum class TimeProblem { none, malformed, no_such_date, out_of_range };

// YYYY-MM-DDTHH:MM:SS[.F]Z with 0 to 9 fraction digits, uppercase 'T' and 'Z' only; on failure
// `problem` says why.
std::optional<std::chrono::system_clock::time_point> parse_time(std::string_view text, TimeProblem& problem);

// The "time" field's value: parse_time() within [kEarliestEnvelopeTime, kLatestEnvelopeTime],
// floored to the microsecond; nullopt when it is not acceptable.
std::optional<std::chrono::system_clock::time_point> envelope_time(std::string_view text);

// The index of the bracket at which the nesting of arrays and objects first exceeds `limit`, or
// npos. Brackets inside strings do not count; malformed JSON is left to the parser.
std::size_t too_deep_at(std::string_view body, std::size_t limit);

}  // namespace notifications::detail
