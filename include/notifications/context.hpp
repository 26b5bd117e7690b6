// Context and tags: what every event instrumented on a thread carries besides its payload (the
// ideas of Rails 8.1's event reporter, carried across processes by the Bridge).
//
//   notifications::ContextScope request({{"request_id", id}, {"tenant", tenant}});  // per request
//   notifications::tagged("checkout", [&] {
//     notifications::instrument("order.placed", payload, [&] { ... });  // context + {"checkout": true}
//   });
//
// Context is an object of key -> JSON value that the application sets once per request or job;
// tags are an object too, pushed and popped in nested scopes. An event captures both when it
// starts (Event::context(), Event::tags()); changing them later does not change events already
// started. A Bridge sends them as the envelope's "context" and "tags" members (docs/envelope.md)
// and the receiving process's events carry them; while a received event is dispatched, the
// dispatching thread's context and tags are the event's, so events its listeners instrument
// carry them on. Payloads are never touched.
//
// Thread-safety: every function and scope acts on the calling thread's own context and tags;
// nothing here is shared between threads, so all of it may be called from any thread, and from
// listeners (the event being dispatched keeps what it captured). ContextScope and TagScope are
// not copyable and must be destroyed on the thread that made them, innermost first.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace notifications {

namespace detail {
struct EventContext;
}

// The calling thread's context: an object (empty when nothing was set).
nlohmann::json context();
// Merges the members of `values` into the thread's context (a member replaces one of the same
// key). Throws std::invalid_argument when `values` is not an object.
void set_context(const nlohmann::json& values);
// Empties the thread's context (tags are kept).
void clear_context();

// The calling thread's tags, the scopes' tags merged outermost first: an object.
nlohmann::json tags();

// Sets context for its lifetime: on construction merges `values` (an object) into the thread's
// context, on destruction restores the context as it was before, whatever was set in between.
// ContextScope scope(nlohmann::json::object(), true) starts from an empty context (a new request).
// Thread-safety: acts on the constructing thread's context only; destroy it on that thread.
class ContextScope {
 public:
  explicit ContextScope(const nlohmann::json& values, bool replace = false);
  // ContextScope scope({{"request_id", id}}): the braces make an object, as for a json.
  explicit ContextScope(nlohmann::json::initializer_list_t values, bool replace = false)
      : ContextScope(nlohmann::json(values), replace) {}
  ~ContextScope();
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  std::shared_ptr<const nlohmann::json> saved_;
};

// Pushes tags for its lifetime. `tags` is a string (the tag {"<string>": true}), an object (its
// members), or an array of strings and objects; inner scopes' members replace outer ones of the
// same key. Throws std::invalid_argument for any other value or an empty string.
// Thread-safety: acts on the constructing thread's tags only; destroy it on that thread.
class TagScope {
 public:
  explicit TagScope(const nlohmann::json& tags);
  explicit TagScope(nlohmann::json::initializer_list_t tags) : TagScope(nlohmann::json(tags)) {}
  ~TagScope();
  TagScope(const TagScope&) = delete;
  TagScope& operator=(const TagScope&) = delete;

 private:
  std::shared_ptr<const nlohmann::json> saved_;
};

// Runs `block` with `tags` pushed (as TagScope) and returns what it returns.
//   tagged("checkout", [&] { ... });
//   tagged({{"section", "admin"}}, [&] { ... });
template <class Block>
decltype(auto) tagged(const nlohmann::json& tags, Block&& block) {
  TagScope scope(tags);
  return std::forward<Block>(block)();
}

}  // namespace notifications
