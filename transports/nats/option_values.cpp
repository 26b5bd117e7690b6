// Option values from URL queries and JSON options (option_values.hpp).
#include "option_values.hpp"

#include <cctype>
#include <charconv>

#include "transport/kit.hpp"

namespace notifications::nats_detail::option_values {

using nlohmann::json;

std::string percent_decode(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() &&
        std::isxdigit(static_cast<unsigned char>(text[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2])) != 0) {
      out.push_back(static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::string shown(const json& value, bool secret) { return secret ? std::string("(hidden)") : value.dump(); }

bool as_bool(const json& value, const std::string& where) {
  if (value.is_boolean()) return value.get<bool>();
  if (value.is_string()) {
    const std::string v = detail::ascii_lower(value.get<std::string>());
    if (v == "true" || v == "1" || v == "yes") return true;
    if (v == "false" || v == "0" || v == "no") return false;
  }
  throw BadOption{where + ": expected true or false, got " + value.dump()};
}

std::int64_t as_integer(const json& value, const std::string& where, std::int64_t min, std::int64_t max) {
  std::int64_t n = 0;
  bool ok = false;
  if (value.is_number_integer()) {
    ok = !value.is_number_unsigned() || value.get<std::uint64_t>() <= static_cast<std::uint64_t>(max);
    if (ok) n = value.get<std::int64_t>();
  } else if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    ok = ec == std::errc() && end == text.data() + text.size() && !text.empty();
  }
  if (!ok || n < min || n > max) {
    throw BadOption{where + ": expected a whole number from " + std::to_string(min) + " to " +
                    std::to_string(max) + ", got " + value.dump()};
  }
  return n;
}

std::string as_string(const json& value, const std::string& where, bool secret) {
  if (!value.is_string()) throw BadOption{where + ": expected a string, got " + shown(value, secret)};
  return value.get<std::string>();
}

}  // namespace notifications::nats_detail::option_values
