#include "notifications/pattern.hpp"

#include <regex>
#include <string>

#include "notifications/errors.hpp"

namespace notifications {

namespace detail {
struct CompiledRegex {
  std::regex expression;
};
}  // namespace detail

namespace {

std::string quoted(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  out.append(text);
  out.push_back('"');
  return out;
}

std::vector<std::string> split_tokens(std::string_view text) {
  std::vector<std::string> tokens;
  std::size_t begin = 0;
  while (true) {
    const std::size_t dot = text.find('.', begin);
    tokens.emplace_back(text.substr(begin, dot == std::string_view::npos ? dot : dot - begin));
    if (dot == std::string_view::npos) break;
    begin = dot + 1;
  }
  return tokens;
}

}  // namespace

Pattern::Pattern(std::string_view text) {
  if (text.empty()) {
    throw InvalidPattern("pattern \"\": empty; use Pattern::all() to receive every event");
  }
  if (text.find_first_of("*>") != std::string_view::npos) {
    *this = wildcard(text);
  } else {
    kind_ = Kind::exact;
    text_ = std::string(text);
  }
}

Pattern Pattern::exact(std::string_view name) {
  if (name.empty()) throw InvalidPattern("exact name \"\": empty");
  Pattern pattern;
  pattern.kind_ = Kind::exact;
  pattern.text_ = std::string(name);
  return pattern;
}

Pattern Pattern::wildcard(std::string_view text) {
  if (text.empty()) throw InvalidPattern("wildcard pattern \"\": empty");
  Pattern pattern;
  pattern.kind_ = Kind::wildcard;
  pattern.text_ = std::string(text);
  pattern.tokens_ = split_tokens(text);
  const std::size_t count = pattern.tokens_.size();
  for (std::size_t i = 0; i < count; ++i) {
    const std::string& token = pattern.tokens_[i];
    const std::string where = "pattern " + quoted(text) + ": token " + std::to_string(i + 1);
    if (token.empty()) {
      throw InvalidPattern(where + " is empty (tokens are separated by single dots)");
    }
    if (token.find_first_of("*>") != std::string::npos && token != "*" && token != ">") {
      throw InvalidPattern(where + " is " + quoted(token) +
                           ": '*' and '>' must be a whole token");
    }
    if (token == ">" && i + 1 != count) {
      throw InvalidPattern(where + " is \">\": '>' may only be the last token");
    }
  }
  return pattern;
}

Pattern Pattern::regex(std::string_view expression) {
  Pattern pattern;
  pattern.kind_ = Kind::regex;
  pattern.text_ = std::string(expression);
  try {
    pattern.regex_ = std::make_shared<const detail::CompiledRegex>(
        detail::CompiledRegex{std::regex(pattern.text_, std::regex::ECMAScript)});
  } catch (const std::regex_error& e) {
    throw InvalidPattern("regular expression " + quoted(expression) + ": " + e.what());
  }
  return pattern;
}

Pattern Pattern::all() { return Pattern(); }

bool Pattern::matches(std::string_view name) const {
  switch (kind_) {
    case Kind::all:
      return true;
    case Kind::exact:
      return name == text_;
    case Kind::regex:
      return std::regex_search(name.begin(), name.end(), regex_->expression);
    case Kind::wildcard:
      break;
  }
  std::size_t begin = 0;
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    if (begin > name.size()) return false;  // name has fewer tokens than the pattern
    const std::size_t dot = name.find('.', begin);
    const std::size_t end = dot == std::string_view::npos ? name.size() : dot;
    const std::string_view token = name.substr(begin, end - begin);
    if (tokens_[i] == ">") return !token.empty() || end < name.size();
    if (token.empty()) return false;
    if (tokens_[i] != "*" && token != tokens_[i]) return false;
    begin = end + 1;
  }
  return begin == name.size() + 1;  // every token of the name consumed
}

}  // namespace notifications
