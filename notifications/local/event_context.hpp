// Private: the context and tags an event captured (include/notifications/context.hpp), and the
// calling thread's current ones.
//
// Thread-safety: an EventContext is immutable once made and shared between the events that
// captured it (by shared_ptr, from any thread). The per-thread state is touched only by its
// thread.
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

namespace notifications::detail {

struct EventContext {
  std::shared_ptr<const nlohmann::json> context;  // null, or a non-empty object
  std::shared_ptr<const nlohmann::json> tags;     // null, or a non-empty object
};

// What an event started on this thread now captures; null when the thread has neither context
// nor tags. (ActiveEvent reads ThreadCache::captured directly.)
std::shared_ptr<const EventContext> current_event_context();

// Makes the calling thread's context and tags those of `captured` (null: none) for its lifetime,
// then restores the previous ones: a received event's listeners instrument with its context.
class AdoptedEventContext {
 public:
  explicit AdoptedEventContext(const std::shared_ptr<const EventContext>& captured);
  ~AdoptedEventContext();
  AdoptedEventContext(const AdoptedEventContext&) = delete;
  AdoptedEventContext& operator=(const AdoptedEventContext&) = delete;

 private:
  std::shared_ptr<const nlohmann::json> saved_context_;
  std::shared_ptr<const nlohmann::json> saved_tags_;
  std::shared_ptr<const EventContext> saved_captured_;
  bool adopted_ = false;
};

// The context and the tags of a captured EventContext: empty objects for null.
const nlohmann::json& context_of(const std::shared_ptr<const EventContext>& captured) noexcept;
const nlohmann::json& tags_of(const std::shared_ptr<const EventContext>& captured) noexcept;

// An EventContext holding `context` and `tags` when either is a non-empty object, else null.
std::shared_ptr<const EventContext> make_event_context(nlohmann::json context, nlohmann::json tags);

}  // namespace notifications::detail
