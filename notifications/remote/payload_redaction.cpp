#include "remote/payload_redaction.hpp"

#include <string>

namespace notifications::detail {

namespace {

char lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool allowed_rule_byte(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
         c == '*';
}

// A byte for messages: 'c' when printable ASCII, otherwise its code.
std::string describe(char c) {
  const auto byte = static_cast<unsigned char>(c);
  if (byte >= 0x20 && byte < 0x7F) return std::string("'") + c + "'";
  static constexpr char kHex[] = "0123456789abcdef";
  return std::string("byte 0x") + kHex[byte >> 4] + kHex[byte & 0xF];
}

// `key` matches `segment` (lower-cased; '*' any run of bytes), ignoring the ASCII case of `key`.
// Greedy with one backtrack point: O(key * segment) at worst, no allocation.
bool segment_matches(std::string_view segment, std::string_view key) noexcept {
  std::size_t s = 0;
  std::size_t k = 0;
  std::size_t star = std::string_view::npos;  // the segment position after the last '*' seen
  std::size_t star_key = 0;                   // the key position that '*' matched up to
  while (k < key.size()) {
    if (s < segment.size() && segment[s] == '*') {
      star = ++s;
      star_key = k;
    } else if (s < segment.size() && segment[s] == lower(key[k])) {
      ++s;
      ++k;
    } else if (star != std::string_view::npos) {
      s = star;
      k = ++star_key;
    } else {
      return false;
    }
  }
  while (s < segment.size() && segment[s] == '*') ++s;
  return s == segment.size();
}

}  // namespace

std::string redact_rule_problem(std::string_view rule) {
  if (rule.empty()) return "it is empty";
  if (rule.size() > kMaxRedactRuleBytes) {
    return std::to_string(rule.size()) + " bytes long (at most " + std::to_string(kMaxRedactRuleBytes) + ")";
  }
  std::size_t segment = 1;
  std::size_t begin = 0;
  for (std::size_t i = 0; i <= rule.size(); ++i) {
    if (i == rule.size() || rule[i] == '.') {
      if (i == begin) {
        return "segment " + std::to_string(segment) +
               " is empty (segments are separated by single dots, with none at either end)";
      }
      ++segment;
      begin = i + 1;
    } else if (!allowed_rule_byte(rule[i])) {
      return "it has " + describe(rule[i]) + " at byte " + std::to_string(i + 1) +
             " (a segment has ASCII letters, digits, '_', '-' and '*')";
    }
  }
  return {};
}

Redactor::Redactor(const std::vector<std::string>& rules) {
  rules_.reserve(rules.size());
  for (const std::string& text : rules) {
    Rule rule;
    std::size_t begin = 0;
    while (true) {
      const std::size_t dot = text.find('.', begin);
      std::string segment = text.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin);
      for (char& c : segment) c = lower(c);
      rule.segments.push_back(std::move(segment));
      if (dot == std::string::npos) break;
      begin = dot + 1;
    }
    rules_.push_back(std::move(rule));
  }
}

bool Redactor::member_matches(const PathKey& path) const noexcept {
  for (const Rule& rule : rules_) {
    const PathKey* at = &path;
    std::size_t i = rule.segments.size();
    while (i > 0 && at != nullptr && segment_matches(rule.segments[i - 1], at->key)) {
      --i;
      at = at->parent;
    }
    if (i == 0) return true;
  }
  return false;
}

bool Redactor::any_match(const nlohmann::json& value, const PathKey* path) const noexcept {
  if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      const PathKey member{it.key(), path};
      if (member_matches(member) || any_match(it.value(), &member)) return true;
    }
  } else if (value.is_array()) {
    for (const nlohmann::json& element : value) {
      if (any_match(element, path)) return true;
    }
  }
  return false;
}

std::size_t Redactor::redact_in(nlohmann::json& value, const PathKey* path) const {
  std::size_t count = 0;
  if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      const PathKey member{it.key(), path};
      if (member_matches(member)) {
        it.value() = std::string(kRedacted);
        ++count;
      } else {
        count += redact_in(it.value(), &member);
      }
    }
  } else if (value.is_array()) {
    for (nlohmann::json& element : value) count += redact_in(element, path);
  }
  return count;
}

bool Redactor::matches(const nlohmann::json& payload) const noexcept {
  return !rules_.empty() && any_match(payload, nullptr);
}

std::size_t Redactor::redact(nlohmann::json& payload) const {
  return rules_.empty() ? 0 : redact_in(payload, nullptr);
}

std::optional<nlohmann::json> Redactor::redacted(const nlohmann::json& payload) const {
  if (!matches(payload)) return std::nullopt;
  nlohmann::json copy = payload;
  redact_in(copy, nullptr);
  return copy;
}

}  // namespace notifications::detail
