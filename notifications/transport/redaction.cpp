// Credential redaction (transport/redaction.hpp) and redact_url (notifications/transport.hpp).
#include "transport/redaction.hpp"

#include <utility>

#include "local/ascii.hpp"
#include "notifications/transport.hpp"
#include "transport/url.hpp"

namespace notifications {

namespace redaction {

namespace {

using nlohmann::json;

std::string redact_one_url(std::string_view url);

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

}  // namespace

bool secret_looking(std::string_view key) {
  const std::string lower = detail::ascii_lower(key);
  for (const std::string_view word : kSecretWords) {
    if (lower.find(word) != std::string::npos) return true;
  }
  return false;
}

std::string redact_query(std::string_view query) {
  std::string out;
  const std::size_t fragment = query.find('#');
  const std::string_view params = query.substr(0, fragment);
  std::size_t pos = 0;
  while (pos < params.size()) {
    std::size_t end = params.find('&', pos);
    if (end == std::string_view::npos) end = params.size();
    const std::string_view param = params.substr(pos, end - pos);
    const std::size_t eq = param.find('=');
    if (eq != std::string_view::npos && secret_looking(param.substr(0, eq))) {
      out.append(param.substr(0, eq + 1)).append("***");
    } else if (eq != std::string_view::npos && param.find('@', eq) != std::string_view::npos) {
      const std::string_view value = param.substr(eq + 1);
      out.append(param.substr(0, eq + 1));
      if (url::scheme_prefix(value) != 0) {
        out.append(redact_one_url(value));
      } else {
        out.append("***").append(value.substr(value.rfind('@')));
      }
    } else {
      out.append(param);
    }
    if (end < params.size()) out.push_back('&');
    pos = end + 1;
  }
  if (fragment != std::string_view::npos) out.append(query.substr(fragment));
  return out;
}

namespace {

// One URL: "scheme://user:pass@host/path?token=x" -> "scheme://***@host/path?token=***".
// The user-info ends at the LAST '@' before the query (contract 2).
std::string redact_one_url(std::string_view url) {
  const std::size_t prefix = url::scheme_prefix(url);
  std::size_t query = url.find_first_of("?#", prefix);
  if (query == std::string_view::npos) query = url.size();
  std::string out(url.substr(0, prefix));
  const std::string_view rest = url.substr(prefix, query - prefix);
  const std::size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    out.append("***").append(rest.substr(at));
  } else {
    out.append(rest);
  }
  if (query < url.size()) out.append(redact_query(url.substr(query)));
  return out;
}

}  // namespace

std::string redact_text(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t from = 0;
  while (true) {
    const std::size_t sep = text.find("://", from);
    if (sep == std::string_view::npos) break;
    const std::size_t start = sep + 3;
    std::size_t end = start;
    while (end < text.size() && text[end] != '"' && !is_space(text[end])) ++end;
    const std::string_view url = text.substr(start, end - start);
    out.append(text.substr(from, start - from));
    // Errs towards hiding (contract 3): the last '@' of the whole word, query included, ends the
    // user-info.
    const std::size_t at = url.rfind('@');
    const std::string_view rest = at == std::string_view::npos ? url : url.substr(at);
    if (at != std::string_view::npos) out += "***";
    const std::size_t query = rest.find_first_of("?#");
    if (query == std::string_view::npos) {
      out.append(rest);
    } else {
      out.append(rest.substr(0, query)).append(redact_query(rest.substr(query)));
    }
    from = end;
  }
  out.append(text.substr(from));
  return out;
}

void append_json_string(std::string& out, std::string_view text, std::size_t budget) {
  const std::string cut(text.substr(0, budget + 4));
  out += json(cut).dump(-1, ' ', false, json::error_handler_t::replace);
}

void append_redacted_json(const json& value, std::string& out, std::size_t limit) {
  if (out.size() > limit) return;
  switch (value.type()) {
    case json::value_t::string:
      append_json_string(out, redact_text(value.get_ref<const std::string&>()), limit - out.size());
      return;
    case json::value_t::array: {
      out += '[';
      bool first = true;
      for (const json& item : value) {
        if (out.size() > limit) return;
        if (!first) out += ',';
        first = false;
        append_redacted_json(item, out, limit);
      }
      out += ']';
      return;
    }
    case json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (out.size() > limit) return;
        if (!first) out += ',';
        first = false;
        append_json_string(out, key, limit - out.size());
        out += ':';
        if (secret_looking(key)) {
          out += "\"***\"";
        } else {
          append_redacted_json(item, out, limit);
        }
      }
      out += '}';
      return;
    }
    default:
      out += value.dump(-1, ' ', false, json::error_handler_t::replace);
      return;
  }
}

Scrubber::Scrubber(std::vector<std::string> secrets) {
  for (std::string& secret : secrets) {
    if (!secret.empty()) secrets_.push_back(std::move(secret));
  }
}

std::string Scrubber::operator()(std::string text) const {
  for (const std::string& secret : secrets_) {
    for (std::size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3)) {
      text.replace(at, secret.size(), "***");
    }
  }
  return redact_text(text);
}

}  // namespace redaction

std::string redact_url(std::string_view url) {
  // A list "a://x,b://y": a new URL starts after a ',' followed by "<scheme>://"; any other ','
  // stays inside the current URL (it may be part of a password or of a host list).
  std::string out;
  std::size_t start = 0;
  for (std::size_t i = 0; i < url.size(); ++i) {
    if (url[i] == ',' && url::scheme_prefix(url.substr(i + 1)) != 0) {
      out += redaction::redact_one_url(url.substr(start, i - start));
      out += ',';
      start = i + 1;
    }
  }
  out += redaction::redact_one_url(url.substr(start));
  return out;
}

}  // namespace notifications
