// Test helpers for users' GoogleTest suites, in the spirit of Rails 8.1's capture_notifications,
// assert_notification, assert_notifications_count and assert_no_notifications.
//
//   #include <notifications/testing.hpp>
//   using namespace notifications::testing;
//   EXPECT_TRUE(notified(notifier, "order.placed", {{"id", 42}}, [&] { service.place(42); }));
//   EXPECT_TRUE(notified_times(notifier, "order.*", 3, [&] { ... }));
//   EXPECT_TRUE(not_notified(notifier, "order.failed", [&] { ... }));
//   auto events = capture(notifier, "order.>", [&] { ... });
//   EXPECT_TRUE(notified_matching(notifier, "order.placed",
//                                 {.payload = {{"id", 42}}, .tags = {{"checkout", true}}}, [&] { ... }));
//   EXPECT_TRUE(notified("order.placed", [&] { ... }));   // every helper: the default notifier
//
// Link the target notifications::testing (it brings GoogleTest). Every helper subscribes only for
// the duration of its block.
//
// Thread-safety: each helper may be called from any thread. Events instrumented on other threads
// while the block runs are captured too (capture is guarded by a mutex).
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "notifications/context.hpp"
#include "notifications/notifications.hpp"

namespace notifications::testing {

// True when every member of `subset` is in `value` with an equal value (recursively for
// objects; arrays and scalars compare equal as a whole). A null subset matches anything.
bool json_contains(const nlohmann::json& value, const nlohmann::json& subset);

// What an event must contain, each part as json_contains() compares it (null: anything), as
// Rails' assert_event_reported(name, payload:, tags:) does: a partial match.
// Thread-safety: a value; event_matches() may be called from any thread.
struct EventMatch {
  nlohmann::json payload = nullptr;
  nlohmann::json tags = nullptr;     // against Event::tags()
  nlohmann::json context = nullptr;  // against Event::context()
};
bool event_matches(const Event& event, const EventMatch& match);

// Copies of every event matching `pattern` that was instrumented while `block` ran.
template <class Block>
std::vector<Event> capture(Notifier& notifier, Pattern pattern, Block&& block) {
  std::mutex mutex;
  std::vector<Event> events;
  notifier.subscribed(
      std::move(pattern),
      [&](const Event& event) {
        std::lock_guard lock(mutex);
        events.push_back(event);
      },
      std::forward<Block>(block));
  std::lock_guard lock(mutex);
  return events;
}
template <class Block>
std::vector<Event> capture(Pattern pattern, Block&& block) {
  return capture(default_notifier(), std::move(pattern), std::forward<Block>(block));
}

// Success when at least one event matching `pattern` whose payload contains `payload_subset` was
// instrumented while `block` ran; the failure message lists what was instrumented instead.
::testing::AssertionResult describe_match(const std::vector<Event>& events, const Pattern& pattern,
                                          const nlohmann::json& payload_subset);
// The same with tags and context too.
::testing::AssertionResult describe_event_match(const std::vector<Event>& events, const Pattern& pattern,
                                                const EventMatch& match);

// Success when at least one event matching `pattern` and `match` was instrumented while `block`
// ran; the failure message lists what was instrumented instead, with tags and context.
template <class Block>
::testing::AssertionResult notified_matching(Notifier& notifier, Pattern pattern, const EventMatch& match,
                                             Block&& block) {
  const auto events = capture(notifier, Pattern::all(), std::forward<Block>(block));
  return describe_event_match(events, pattern, match);
}
template <class Block>
::testing::AssertionResult notified_matching(Pattern pattern, const EventMatch& match, Block&& block) {
  return notified_matching(default_notifier(), std::move(pattern), match, std::forward<Block>(block));
}

template <class Block>
::testing::AssertionResult notified(Notifier& notifier, Pattern pattern,
                                    const nlohmann::json& payload_subset, Block&& block) {
  const auto events = capture(notifier, Pattern::all(), std::forward<Block>(block));
  return describe_match(events, pattern, payload_subset);
}
template <class Block>
::testing::AssertionResult notified(Notifier& notifier, Pattern pattern, Block&& block) {
  return notified(notifier, std::move(pattern), nullptr, std::forward<Block>(block));
}
template <class Block>
::testing::AssertionResult notified(Pattern pattern, const nlohmann::json& payload_subset,
                                    Block&& block) {
  return notified(default_notifier(), std::move(pattern), payload_subset,
                  std::forward<Block>(block));
}
template <class Block>
::testing::AssertionResult notified(Pattern pattern, Block&& block) {
  return notified(default_notifier(), std::move(pattern), nullptr, std::forward<Block>(block));
}

// Success when exactly `count` events matching `pattern` were instrumented while `block` ran.
template <class Block>
::testing::AssertionResult notified_times(Notifier& notifier, Pattern pattern, std::size_t count,
                                          Block&& block) {
  const auto events = capture(notifier, pattern, std::forward<Block>(block));
  if (events.size() == count) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected " << count << " events matching \""
                                       << pattern.text() << "\", got " << events.size();
}
template <class Block>
::testing::AssertionResult notified_times(Pattern pattern, std::size_t count, Block&& block) {
  return notified_times(default_notifier(), std::move(pattern), count, std::forward<Block>(block));
}

// Success when no event matching `pattern` was instrumented while `block` ran.
template <class Block>
::testing::AssertionResult not_notified(Notifier& notifier, Pattern pattern, Block&& block) {
  const auto events = capture(notifier, pattern, std::forward<Block>(block));
  if (events.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "expected no events matching \"" << pattern.text() << "\", got " << events.size()
         << ", the first \"" << events.front().name() << "\" with payload "
         << events.front().payload().dump();
}
template <class Block>
::testing::AssertionResult not_notified(Pattern pattern, Block&& block) {
  return not_notified(default_notifier(), std::move(pattern), std::forward<Block>(block));
}

}  // namespace notifications::testing
