// Private: payload redaction, the per-route "redact" rules (BridgeConfig::redact) applied to an
// event's payload before it leaves the process (docs/configuration.md, "Payload redaction").
//
// Contracts:
//   1. A rule is one or more segments separated by single dots ("password", "card.number",
//      "*token*"). A segment is 1 or more of ASCII letters, digits, '_', '-' and '*'; '*' matches
//      any run of bytes (also none) within one key, never across keys. Letters match ignoring
//      ASCII case.
//   2. A rule matches a value of an object member when its segments match the last keys of the
//      member's path from the payload's top (array elements add no key): "password" matches a
//      "password" key at any depth, "card.number" a "number" key directly inside a "card" object
//      at any depth, also through arrays ({"card": [{"number": 1}]}).
//   3. A matched value (of any type: strings, numbers, objects, arrays, null) becomes the string
//      kRedacted; nothing inside it is looked at any further. Keys themselves are kept.
//   4. Payloads that are not objects or arrays have no keys: they never match.
//   5. A Redactor without rules costs one branch; with rules, a payload that no rule matches is
//      scanned without allocating and is not copied.
//
// Thread-safety: a Redactor is immutable after construction; its const functions may be called
// from any number of threads at once. The free functions are stateless.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace notifications::detail {

// What a redacted value becomes.
inline constexpr std::string_view kRedacted = "[REDACTED]";
// A route holds at most this many rules.
inline constexpr std::size_t kMaxRedactRules = 256;
// A rule is at most this many bytes.
inline constexpr std::size_t kMaxRedactRuleBytes = 256;

// Empty when `rule` is a valid rule (contract 1, at most kMaxRedactRuleBytes); otherwise what is
// wrong with it, quoting none of it ("segment 2 is empty", "it has ' ' at byte 4").
std::string redact_rule_problem(std::string_view rule);

class Redactor {
 public:
  // `rules` must be valid (redact_rule_problem() empty for each; BridgeConfig::validate() checks).
  explicit Redactor(const std::vector<std::string>& rules);

  bool empty() const noexcept { return rules_.empty(); }

  // True when some rule matches a value of `payload`. Allocates nothing.
  bool matches(const nlohmann::json& payload) const noexcept;
  // Replaces every matched value of `payload` by kRedacted; returns how many were replaced.
  std::size_t redact(nlohmann::json& payload) const;
  // A redacted copy of `payload` when some rule matches it; nullopt (and no copy) otherwise.
  std::optional<nlohmann::json> redacted(const nlohmann::json& payload) const;

 private:
  // A key on the path from the payload's top, innermost last; a linked list on the call stack.
  struct PathKey {
    std::string_view key;
    const PathKey* parent;
  };
  struct Rule {
    std::vector<std::string> segments;  // lower-cased, outermost first
  };

  bool member_matches(const PathKey& path) const noexcept;
  bool any_match(const nlohmann::json& value, const PathKey* path) const noexcept;
  std::size_t redact_in(nlohmann::json& value, const PathKey* path) const;

  std::vector<Rule> rules_;
};

}  // namespace notifications::detail
