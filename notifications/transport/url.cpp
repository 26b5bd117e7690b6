// URL syntax: schemes, "<scheme>://" prefixes and url_query() (notifications/transport.hpp).
#include "transport/url.hpp"

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "notifications/transport.hpp"

namespace notifications {

namespace {

bool scheme_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
}

}  // namespace

bool url::valid_scheme(std::string_view scheme) {
  if (scheme.empty() || std::isalpha(static_cast<unsigned char>(scheme[0])) == 0) return false;
  return std::all_of(scheme.begin(), scheme.end(), scheme_char);
}

std::size_t url::scheme_prefix(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && text[i] == ' ') ++i;
  const std::size_t start = i;
  while (i < text.size() && scheme_char(text[i])) ++i;
  if (i == start || text.substr(i, 3) != "://") return 0;
  return i + 3;
}

std::vector<std::pair<std::string, std::string>> url_query(std::string_view url) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::size_t q = url.find('?');
  if (q == std::string_view::npos) return out;
  std::string_view query = url.substr(q + 1);
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (param.empty()) continue;
    const std::size_t eq = param.find('=');
    out.emplace_back(std::string(param.substr(0, eq)),
                     std::string(eq == std::string_view::npos ? std::string_view{} : param.substr(eq + 1)));
  }
  return out;
}

}  // namespace notifications
