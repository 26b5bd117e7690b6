// Private: the URL syntax the core relies on (schemes, "<scheme>://" prefixes). url_query() is
// public (notifications/transport.hpp) and implemented in url.cpp with these.
//
// Contracts: pure functions, ASCII only, safe from any thread. A scheme is a letter followed by
// letters, digits, '+', '-' or '.' (RFC 3986, section 3.1).
#pragma once

#include <cstddef>
#include <string_view>

namespace notifications::url {

// True when `scheme` is a syntactically valid URL scheme.
bool valid_scheme(std::string_view scheme);

// The length of a "<scheme>://" at the start of `text`, spaces before it included, or 0 when
// `text` does not start that way. (Leading spaces: in a list "a://x, b://y" the second URL starts
// after ", ".)
std::size_t scheme_prefix(std::string_view text);

}  // namespace notifications::url
