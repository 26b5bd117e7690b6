// Private to the NATS-based transports (nats, jetstream): reading option values that come either
// from a URL query (always strings) or from TransportConfig::options (JSON values).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace notifications::nats_detail::option_values {

// Thrown while parsing; the caller turns it into a TransportError that names the URL.
struct BadOption {
  std::string why;
};

// "%40" -> "@". Malformed escapes are kept as they are.
std::string percent_decode(std::string_view text);
// The value as an error may quote it: "(hidden)" when `secret`.
std::string shown(const nlohmann::json& value, bool secret);
// true/false, 1/0, yes/no (strings, any case) or a JSON boolean; `where` names the key in errors.
bool as_bool(const nlohmann::json& value, const std::string& where);
// A whole number in [min, max], as a JSON integer or a decimal string.
std::int64_t as_integer(const nlohmann::json& value, const std::string& where, std::int64_t min, std::int64_t max);
// A JSON string; a secret one is never echoed in the error.
std::string as_string(const nlohmann::json& value, const std::string& where, bool secret);

}  // namespace notifications::nats_detail::option_values
