// Exceptions thrown by the notifications library.
//
// Thread-safety: these are immutable value types; they may be copied and read from any thread.
//
// Every message starts with a bracketed id (as nlohmann::json does), then names the offending
// text and what is wrong with it, e.g.
//   [notifications.invalid_pattern] pattern "sql.*x": '*' must be a whole token (token 2 is "*x")
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

namespace notifications {

// Base of every exception the library throws on its own account.
class Error : public std::runtime_error {
 public:
  Error(const std::string& id, const std::string& message)
      : std::runtime_error("[notifications." + id + "] " + message), id_(id) {}
  // The short id inside the brackets, e.g. "invalid_pattern".
  const std::string& id() const noexcept { return id_; }

 private:
  std::string id_;
};

// An event name that cannot be instrumented (empty).
class InvalidName : public Error {
 public:
  explicit InvalidName(const std::string& message) : Error("invalid_name", message) {}
};

// A subscription pattern (wildcard or regular expression) that cannot be compiled.
class InvalidPattern : public Error {
 public:
  explicit InvalidPattern(const std::string& message) : Error("invalid_pattern", message) {}
};

// Strict mode only: several subscribers failed for one event. A single failure is rethrown as
// the subscriber's own exception instead.
class SubscriberErrors : public Error {
 public:
  SubscriberErrors(const std::string& event_name, std::vector<std::exception_ptr> errors);
  // The subscribers' exceptions, in the order the subscribers ran.
  const std::vector<std::exception_ptr>& errors() const noexcept { return errors_; }

 private:
  std::vector<std::exception_ptr> errors_;
};

}  // namespace notifications
