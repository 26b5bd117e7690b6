// The per-thread context and tags (include/notifications/context.hpp).
#include "notifications/context.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include "local/event_context.hpp"

namespace notifications {

namespace detail {

namespace {

using nlohmann::json;
using Shared = std::shared_ptr<const json>;

// One thread's context and tags, and the EventContext events capture (rebuilt on every change,
// which is rare next to instrumenting: events share it).
struct ThreadContext {
  Shared context;
  Shared tags;
  std::shared_ptr<const EventContext> captured;

  // Never throws (scope destructors call it): out of memory, later events capture nothing until
  // the next change.
  void rebuild() noexcept {
    captured.reset();
    if (!context && !tags) return;
    try {
      captured = std::make_shared<const EventContext>(EventContext{context, tags});
    } catch (...) {
    }
  }
};

// Trivially destructible, so readable after the thread's ThreadContext is destroyed at thread or
// program exit, when a destructor may still instrument an event.
thread_local ThreadContext* current = nullptr;
thread_local bool gone = false;

struct Owner {
  ThreadContext state;
  Owner() { current = &state; }
  ~Owner() {
    current = nullptr;
    gone = true;
  }
};

// The thread's state, made on first use; null once destroyed.
ThreadContext* state() {
  if (current != nullptr || gone) return current;
  thread_local Owner owner;
  return current;
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

std::shared_ptr<const EventContext> current_event_context() noexcept {
  const ThreadContext* thread = current;
  return thread != nullptr ? thread->captured : nullptr;
}

std::shared_ptr<const EventContext> make_event_context(json context, json tags) {
  Shared c = context.is_object() && !context.empty() ? std::make_shared<const json>(std::move(context)) : nullptr;
  Shared t = tags.is_object() && !tags.empty() ? std::make_shared<const json>(std::move(tags)) : nullptr;
  if (!c && !t) return nullptr;
  return std::make_shared<const EventContext>(EventContext{std::move(c), std::move(t)});
}

AdoptedEventContext::AdoptedEventContext(const std::shared_ptr<const EventContext>& captured) {
  ThreadContext* thread = state();
  if (thread == nullptr) return;
  saved_context_ = std::exchange(thread->context, captured ? captured->context : nullptr);
  saved_tags_ = std::exchange(thread->tags, captured ? captured->tags : nullptr);
  thread->captured = captured;
  adopted_ = true;
}

AdoptedEventContext::~AdoptedEventContext() {
  ThreadContext* thread = current;
  if (!adopted_ || thread == nullptr) return;
  thread->context = std::move(saved_context_);
  thread->tags = std::move(saved_tags_);
  thread->rebuild();
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
  const detail::ThreadContext* thread = detail::current;
  return thread != nullptr && thread->context ? *thread->context : json::object();
}

json tags() {
  const detail::ThreadContext* thread = detail::current;
  return thread != nullptr && thread->tags ? *thread->tags : json::object();
}

void set_context(const json& values) {
  detail::require_object(values, "set_context");
  detail::ThreadContext* thread = detail::state();
  if (thread == nullptr) return;
  thread->context = detail::merged(thread->context, values, false);
  thread->rebuild();
}

void clear_context() {
  detail::ThreadContext* thread = detail::current;
  if (thread == nullptr || !thread->context) return;
  thread->context.reset();
  thread->rebuild();
}

ContextScope::ContextScope(const json& values, bool replace) {
  detail::require_object(values, "ContextScope");
  detail::ThreadContext* thread = detail::state();
  if (thread == nullptr) return;
  saved_ = thread->context;
  thread->context = detail::merged(thread->context, values, replace);
  thread->rebuild();
}

ContextScope::~ContextScope() {
  detail::ThreadContext* thread = detail::current;
  if (thread == nullptr) return;
  thread->context = std::move(saved_);
  thread->rebuild();
}

TagScope::TagScope(const json& tags) {
  const json added = detail::tags_object(tags);
  detail::ThreadContext* thread = detail::state();
  if (thread == nullptr) return;
  saved_ = thread->tags;
  thread->tags = detail::merged(thread->tags, added, false);
  thread->rebuild();
}

TagScope::~TagScope() {
  detail::ThreadContext* thread = detail::current;
  if (thread == nullptr) return;
  thread->tags = std::move(saved_);
  thread->rebuild();
}

}  // namespace notifications
