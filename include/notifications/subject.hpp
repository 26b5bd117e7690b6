// Subjects: how event names map to transport subjects (`<prefix>.<name>`), and their rules.
//
// A subject is 1 to 255 bytes of tokens separated by single dots; a token is letters, digits,
// '_' and '-'. A published subject has no wildcards; a subscription pattern may use '*' as a whole
// token and '>' as the last token.
//
// Thread-safety: stateless functions, safe from any thread; InvalidSubject is an immutable
// exception.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "notifications/errors.hpp"

namespace notifications {

// A subject, subject pattern or prefix that breaks the rules; the message names it and the rule.
class InvalidSubject : public Error {
 public:
  explicit InvalidSubject(const std::string& message) : Error("invalid_subject", message) {}
};

inline constexpr std::size_t kMaxSubjectBytes = 255;

// Empty when valid; otherwise why not (e.g. "token 2 \"a b\" has ' ' (allowed: ...)").
std::string subject_problem(std::string_view subject);
std::string subject_pattern_problem(std::string_view pattern);

// Throw InvalidSubject naming `what` (e.g. "subject", "prefix", "subscribe pattern") and the text.
void validate_subject(std::string_view subject, std::string_view what = "subject");
void validate_subject_pattern(std::string_view pattern, std::string_view what = "subject pattern");

// `<prefix>.<name>`; throws InvalidSubject when the result is not a valid subject.
std::string subject_for(std::string_view prefix, std::string_view event_name);
// The event name of a subject under `prefix`, or nullopt when the subject is not under it.
std::optional<std::string> name_from_subject(std::string_view prefix, std::string_view subject);

}  // namespace notifications
