#include "notifications/testing.hpp"

#include <sstream>

namespace notifications::testing {

bool json_contains(const nlohmann::json& value, const nlohmann::json& subset) {
  if (subset.is_null()) return true;
  if (!subset.is_object()) return value == subset;
  if (!value.is_object()) return false;
  for (const auto& [key, expected] : subset.items()) {
    const auto found = value.find(key);
    if (found == value.end()) return false;
    if (expected.is_object() ? !json_contains(*found, expected) : *found != expected) return false;
  }
  return true;
}

::testing::AssertionResult describe_match(const std::vector<Event>& events, const Pattern& pattern,
                                          const nlohmann::json& payload_subset) {
  for (const Event& event : events) {
    if (pattern.matches(event.name()) && json_contains(event.payload(), payload_subset)) {
      return ::testing::AssertionSuccess();
    }
  }
  auto failure = ::testing::AssertionFailure();
  failure << "no event matching \"" << pattern.text() << "\"";
  if (!payload_subset.is_null()) failure << " with a payload containing " << payload_subset.dump();
  failure << " was instrumented; got " << events.size() << " event(s)";
  std::size_t shown = 0;
  for (const Event& event : events) {
    if (++shown > 10) {
      failure << "\n  ...";
      break;
    }
    failure << "\n  \"" << event.name() << "\" " << event.payload().dump();
  }
  return failure;
}

}  // namespace notifications::testing
