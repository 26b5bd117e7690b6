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

bool event_matches(const Event& event, const EventMatch& match) {
  return json_contains(event.payload(), match.payload) && json_contains(event.tags(), match.tags) &&
         json_contains(event.context(), match.context);
}

::testing::AssertionResult describe_event_match(const std::vector<Event>& events, const Pattern& pattern,
                                                const EventMatch& match) {
  for (const Event& event : events) {
    if (pattern.matches(event.name()) && event_matches(event, match)) return ::testing::AssertionSuccess();
  }
  auto failure = ::testing::AssertionFailure();
  failure << "no event matching \"" << pattern.text() << "\"";
  if (!match.payload.is_null()) failure << " with a payload containing " << match.payload.dump();
  if (!match.tags.is_null()) failure << " with tags containing " << match.tags.dump();
  if (!match.context.is_null()) failure << " with a context containing " << match.context.dump();
  failure << " was instrumented; got " << events.size() << " event(s)";
  std::size_t shown = 0;
  for (const Event& event : events) {
    if (++shown > 10) {
      failure << "\n  ...";
      break;
    }
    failure << "\n  \"" << event.name() << "\" " << event.payload().dump();
    if (!event.tags().empty()) failure << " tags " << event.tags().dump();
    if (!event.context().empty()) failure << " context " << event.context().dump();
  }
  return failure;
}

::testing::AssertionResult describe_match(const std::vector<Event>& events, const Pattern& pattern,
                                          const nlohmann::json& payload_subset) {
  return describe_event_match(events, pattern, EventMatch{payload_subset, nullptr, nullptr});
}

}  // namespace notifications::testing
