// Pattern: which event names a subscription receives.
//
// Thread-safety: a Pattern is immutable after construction; matches() may be called concurrently.
//
// Forms:
//   "order.placed"         exact name
//   "sql.*"  "order.>"     NATS-style wildcards over dot-separated tokens: '*' matches exactly
//                          one token, '>' (last token only) matches one or more tokens
//   Pattern::regex("^sql") ECMAScript regular expression, searched anywhere in the name (as Ruby's =~)
//   Pattern::all()         every event
// A string containing '*' or '>' is parsed as a wildcard and must be well formed; use
// Pattern::exact() for a name that really contains those characters.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace notifications {

namespace detail {
struct CompiledRegex;
}

class Pattern {
 public:
  enum class Kind { exact, wildcard, regex, all };

  // Parses an exact name or a wildcard pattern. Throws InvalidPattern on an empty or malformed
  // pattern, naming the text and the problem.
  Pattern(std::string_view text);  // NOLINT(google-explicit-constructor): patterns read as strings
  Pattern(const char* text) : Pattern(std::string_view(text)) {}  // NOLINT
  Pattern(const std::string& text) : Pattern(std::string_view(text)) {}  // NOLINT
  // A null pattern does not compile (it would be a null C string); Pattern::all() is every event.
  Pattern(std::nullptr_t) = delete;

  static Pattern exact(std::string_view name);
  static Pattern wildcard(std::string_view pattern);
  // Throws InvalidPattern when the expression does not compile.
  static Pattern regex(std::string_view expression);
  static Pattern all();

  Kind kind() const noexcept { return kind_; }
  const std::string& text() const noexcept { return text_; }
  bool matches(std::string_view name) const;

 private:
  Pattern() = default;
  Kind kind_ = Kind::all;
  std::string text_;
  std::vector<std::string> tokens_;                     // wildcard only
  std::shared_ptr<const detail::CompiledRegex> regex_;  // regex only
};

}  // namespace notifications
