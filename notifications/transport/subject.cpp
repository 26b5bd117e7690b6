#include "notifications/subject.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

namespace notifications {

namespace {

// Quoted text for an error message: control and non-ASCII bytes as \xNN, '"' and '\' escaped,
// cut after kQuoteLimit bytes of input with "..." and the full size appended.
constexpr std::size_t kQuoteLimit = 64;

void append_byte(std::string& out, unsigned char c) {
  if (c == '"' || c == '\\') {
    out.push_back('\\');
    out.push_back(static_cast<char>(c));
  } else if (c < 0x20 || c >= 0x7f) {
    char buffer[5];
    std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
    out.append(buffer);
  } else {
    out.push_back(static_cast<char>(c));
  }
}

std::string quoted(std::string_view text) {
  std::string out;
  out.reserve(std::min(text.size(), kQuoteLimit) + 24);
  out.push_back('"');
  for (std::size_t i = 0; i < text.size() && i < kQuoteLimit; ++i) {
    append_byte(out, static_cast<unsigned char>(text[i]));
  }
  out.push_back('"');
  if (text.size() > kQuoteLimit) {
    out.insert(out.size() - 1, "...");
    out += " (" + std::to_string(text.size()) + " bytes)";
  }
  return out;
}

// A character as an error names it: 'c', or the byte in hex when it is not printable ASCII.
std::string describe_char(unsigned char c) {
  if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "byte 0x%02x", c);
  return buffer;
}

bool token_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

// Why `text` is not a valid subject (wildcards == false) or pattern (wildcards == true); empty
// when it is valid.
std::string problem(std::string_view text, bool wildcards) {
  if (text.empty()) return "empty (a subject is 1 to 255 bytes)";
  if (text.size() > kMaxSubjectBytes) {
    return std::to_string(text.size()) + " bytes long (at most " +
           std::to_string(kMaxSubjectBytes) + ")";
  }
  std::size_t number = 0;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    ++number;
    std::size_t dot = text.find('.', begin);
    const bool last = dot == std::string_view::npos;
    if (last) dot = text.size();
    const std::string_view token = text.substr(begin, dot - begin);
    const std::string where = "token " + std::to_string(number);
    if (token.empty()) {
      return where + " is empty (tokens are separated by single dots, with none at either end)";
    }
    if (token == "*" || token == ">") {
      if (!wildcards) {
        return where + " is the wildcard " + quoted(token) + " (a published subject has none)";
      }
      if (token == ">" && !last) return where + " is \">\", which may only be the last token";
    } else {
      for (const char ch : token) {
        const auto c = static_cast<unsigned char>(ch);
        if (token_char(c)) continue;
        std::string why = where + " " + quoted(token) + " has " + describe_char(c);
        if (c == '*' || c == '>') {
          why += wildcards ? " ('*' and '>' must be a whole token)"
                           : " (a published subject has no wildcards)";
        } else {
          why += " (allowed: letters, digits, '_', '-')";
        }
        return why;
      }
    }
    begin = dot + 1;
  }
  return {};
}

}  // namespace

std::string subject_problem(std::string_view subject) { return problem(subject, false); }

std::string subject_pattern_problem(std::string_view pattern) { return problem(pattern, true); }

void validate_subject(std::string_view subject, std::string_view what) {
  const std::string why = subject_problem(subject);
  if (!why.empty()) throw InvalidSubject(std::string(what) + " " + quoted(subject) + ": " + why);
}

void validate_subject_pattern(std::string_view pattern, std::string_view what) {
  const std::string why = subject_pattern_problem(pattern);
  if (!why.empty()) throw InvalidSubject(std::string(what) + " " + quoted(pattern) + ": " + why);
}

std::string subject_for(std::string_view prefix, std::string_view event_name) {
  validate_subject(prefix, "prefix");
  std::string subject;
  subject.reserve(prefix.size() + 1 + event_name.size());
  subject.append(prefix).append(".").append(event_name);
  const std::string why = subject_problem(subject);
  if (!why.empty()) {
    throw InvalidSubject("subject " + quoted(subject) + " for event " + quoted(event_name) + ": " +
                         why);
  }
  return subject;
}

std::optional<std::string> name_from_subject(std::string_view prefix, std::string_view subject) {
  if (subject.size() <= prefix.size() + 1) return std::nullopt;
  if (subject.substr(0, prefix.size()) != prefix || subject[prefix.size()] != '.') {
    return std::nullopt;
  }
  return std::string(subject.substr(prefix.size() + 1));
}

}  // namespace notifications
