// The per-thread context and tags (include/notifications/context.hpp).
#include "notifications/context.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include "local/event_context.hpp"
#include "local/thread_cache.hpp"

namespace notifications {

namespace detail {

namespace {

using nlohmann::json;
using Shared = std::shared_ptr<const json>;

// Rebuilds what events capture from the thread's context and tags (rare next to instrumenting:
// events share it). Never throws (scope destructors call it): out of memory, later events capture
// nothing until the next change.
void rebuild(ThreadCache& thread) noexcept {
  thread.captured.reset();
  if (!thread.context && !thread.tags) return;
  try {
    thread.captured = std::make_shared<const EventContext>(EventContext{thread.context, thread.tags});
  } catch (...) {
  }
}

// `shared` with the members of `values` merged in; null when the result is empty.
Shared merged(const Shared& shared, const json& values, bool replace) {
  json result = (shared && !replace) ? *shared : json::object();
  for (auto it = values.begin(); it != values.end(); ++it) result[it.key()] = it.value();
  if (result.empty()) return nullptr;
  return std::make_shared<const json>(std::move(result));
}

void require_object(const json& values, const char* what) {
  if (!values.is_object()) {
    throw std::invalid_argument(std::string("notifications::") + what + ": expected a JSON object, got " +
                                values.type_name());
  }
}

// A tag argument as the object of tags it adds.
json tags_object(const json& tags) {
  const auto add = [](json& out, const json& tag) {
    if (tag.is_string()) {
      const auto& name = tag.get_ref<const std::string&>();
      if (name.empty()) throw std::invalid_argument("notifications::TagScope: an empty string is not a tag");
      out[name] = true;
    } else if (tag.is_object()) {
      for (auto it = tag.begin(); it != tag.end(); ++it) out[it.key()] = it.value();
    } else {
      throw std::invalid_argument(std::string("notifications::TagScope: expected a string, an object or an array of "
                                              "them, got ") +
                                  tag.type_name());
    }
  };
  json out = json::object();
  if (tags.is_array()) {
    for (const json& tag : tags) {
      if (tag.is_array()) {
        throw std::invalid_argument("notifications::TagScope: expected a string, an object or an array of them, "
                                    "got an array inside the array");
      }
      add(out, tag);
    }
  } else {
    add(out, tags);
  }
  return out;
}

const json& empty_object() {
  static const json* const empty = new json(json::object());  // outlives static destructors
  return *empty;
}

}  // namespace

std::shared_ptr<const EventContext> current_event_context() { return thread_cache().captured; }

std::shared_ptr<const EventContext> make_event_context(json context, json tags) {
  Shared c = context.is_object() && !context.empty() ? std::make_shared<const json>(std::move(context)) : nullptr;
  Shared t = tags.is_object() && !tags.empty() ? std::make_shared<const json>(std::move(tags)) : nullptr;
  if (!c && !t) return nullptr;
  return std::make_shared<const EventContext>(EventContext{std::move(c), std::move(t)});
}

AdoptedEventContext::AdoptedEventContext(const std::shared_ptr<const EventContext>& captured) {
  ThreadCache& thread = thread_cache();
  if (!captured && !thread.captured) return;  // nothing to adopt, nothing to restore
  saved_context_ = std::exchange(thread.context, captured ? captured->context : nullptr);
  saved_tags_ = std::exchange(thread.tags, captured ? captured->tags : nullptr);
  saved_captured_ = std::exchange(thread.captured, captured);
  adopted_ = true;
}

AdoptedEventContext::~AdoptedEventContext() {
  if (!adopted_) return;
  ThreadCache& thread = thread_cache();
  thread.context = std::move(saved_context_);
  thread.tags = std::move(saved_tags_);
  thread.captured = std::move(saved_captured_);  // made of the two restored above: no rebuild
}

const json& context_of(const std::shared_ptr<const EventContext>& captured) noexcept {
  return captured && captured->context ? *captured->context : empty_object();
}

const json& tags_of(const std::shared_ptr<const EventContext>& captured) noexcept {
  return captured && captured->tags ? *captured->tags : empty_object();
}

}  // namespace detail

using nlohmann::json;

json context() {
  const auto& thread = detail::thread_cache();
  return thread.context ? *thread.context : json::object();
}

json tags() {
  const auto& thread = detail::thread_cache();
  return thread.tags ? *thread.tags : json::object();
}

void set_context(const json& values) {
  detail::require_object(values, "set_context");
  detail::ThreadCache& thread = detail::thread_cache();
  thread.context = detail::merged(thread.context, values, false);
  detail::rebuild(thread);
}

void clear_context() {
  detail::ThreadCache& thread = detail::thread_cache();
  if (!thread.context) return;
  thread.context.reset();
  detail::rebuild(thread);
}

ContextScope::ContextScope(const json& values, bool replace) {
  detail::require_object(values, "ContextScope");
  detail::ThreadCache& thread = detail::thread_cache();
  saved_ = thread.context;
  thread.context = detail::merged(thread.context, values, replace);
  detail::rebuild(thread);
}

ContextScope::~ContextScope() {
  detail::ThreadCache& thread = detail::thread_cache();
  thread.context = std::move(saved_);
  detail::rebuild(thread);
}

TagScope::TagScope(const json& tags) {
  const json added = detail::tags_object(tags);
  detail::ThreadCache& thread = detail::thread_cache();
  saved_ = thread.tags;
  thread.tags = detail::merged(thread.tags, added, false);
  detail::rebuild(thread);
}

TagScope::~TagScope() {
  detail::ThreadCache& thread = detail::thread_cache();
  thread.tags = std::move(saved_);
  detail::rebuild(thread);
}

}  // namespace notifications
