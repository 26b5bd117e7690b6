// The notifications library: include this one header.
//
// Free functions act on the process-wide default notifier, as ActiveSupport::Notifications'
// module functions do. Libraries and tests that want isolation create their own Notifier.
//
// Thread-safety: every function here may be called from any thread, concurrently.
#pragma once

#include <cstddef>
#include <string_view>
#include <utility>

#include "notifications/errors.hpp"
#include "notifications/event.hpp"
#include "notifications/notifier.hpp"
#include "notifications/pattern.hpp"
#include "notifications/subscription.hpp"

namespace notifications {

// The process-wide notifier behind the free functions. Created on first use and never destroyed,
// so instrumenting from static destructors and detached threads stays safe.
Notifier& default_notifier();

// See Notifier::instrument for the contract of each form.
template <detail::InstrumentBlock Block>
detail::block_result_t<Block> instrument(std::string_view name, nlohmann::json& payload,
                                         Block&& block, SourceLocation where = SourceLocation::current()) {
  return default_notifier().instrument(name, payload, std::forward<Block>(block), where);
}
template <detail::InstrumentBlock Block>
detail::block_result_t<Block> instrument(std::string_view name, nlohmann::json&& payload,
                                         Block&& block, SourceLocation where = SourceLocation::current()) {
  return default_notifier().instrument(name, std::move(payload), std::forward<Block>(block), where);
}
template <detail::InstrumentBlock Block>
detail::block_result_t<Block> instrument(std::string_view name, const nlohmann::json& payload,
                                         Block&& block, SourceLocation where = SourceLocation::current()) {
  return default_notifier().instrument(name, payload, std::forward<Block>(block), where);
}
template <detail::InstrumentBlock Block>
detail::block_result_t<Block> instrument(std::string_view name, Block&& block, SourceLocation where = SourceLocation::current()) {
  return default_notifier().instrument(name, std::forward<Block>(block), where);
}
template <class Make, detail::InstrumentBlock Block>
detail::block_result_t<Block> instrument(std::string_view name, LazyPayload<Make> payload,
                                         Block&& block, SourceLocation where = SourceLocation::current()) {
  return default_notifier().instrument(name, std::move(payload), std::forward<Block>(block), where);
}
inline void instrument(std::string_view name, const nlohmann::json& payload = nullptr, SourceLocation where = SourceLocation::current()) {
  default_notifier().instrument(name, payload, where);
}
template <class Make>
void instrument(std::string_view name, LazyPayload<Make> payload, SourceLocation where = SourceLocation::current()) {
  default_notifier().instrument(name, std::move(payload), where);
}

// Takes what Notifier::subscribe takes (so a null pattern does not compile here either).
template <class... Args>
  requires requires(Notifier& notifier, Args&&... args) {
    notifier.subscribe(std::forward<Args>(args)...);
  }
Subscription subscribe(Args&&... args) {
  return default_notifier().subscribe(std::forward<Args>(args)...);
}

template <class Block>
decltype(auto) subscribed(Pattern pattern, EventListener listener, Block&& block) {
  return default_notifier().subscribed(std::move(pattern), std::move(listener),
                                       std::forward<Block>(block));
}
template <class... Args>
void subscribed(std::nullptr_t, Args&&...) = delete;  // as Notifier::subscribe(nullptr, ...)

inline void unsubscribe(std::string_view name) { default_notifier().unsubscribe(name); }
inline bool listening(std::string_view name) { return default_notifier().listening(name); }
inline Handle handle(std::string name) { return default_notifier().handle(std::move(name)); }

}  // namespace notifications
