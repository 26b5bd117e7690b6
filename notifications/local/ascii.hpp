// Private: ASCII case folding for configuration keys, URL schemes and option values. Only A-Z
// change, whatever the C locale is.
//
// Thread-safety: stateless; safe from any thread.
#pragma once

#include <string>
#include <string_view>

namespace notifications::detail {

inline std::string ascii_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace notifications::detail
