// Internal: the parts of the notifier that instrument() inlines. Not part of the public API;
// names and layout may change in any release.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

#include "notifications/event.hpp"

namespace notifications::detail {

struct ListenerSet;  // immutable list of subscribers for one name (notifications/registry.hpp)
struct NotifierState;
struct ThreadCache;

[[noreturn]] void throw_empty_name();

// Shared state of one Notifier. Handles and subscriptions keep it alive or observe it.
// Thread-safety: all members may be used from any thread.
class NotifierCore {
 public:
  NotifierCore();
  ~NotifierCore();
  NotifierCore(const NotifierCore&) = delete;
  NotifierCore& operator=(const NotifierCore&) = delete;

  // Bumped (release) on every change of the subscriber list.
  std::atomic<std::uint64_t> generation{1};
  // Number of live subscriptions: zero lets instrument() skip the name lookup entirely.
  std::atomic<std::size_t> subscriber_count{0};
  // Process-unique id, so that per-thread caches never confuse two notifiers.
  const std::uint64_t uid;

  // The listeners of `name`, or nullptr when nobody listens. The set stays valid while the
  // calling thread is inside an ActiveEvent and otherwise until this thread's next lookup.
  const ListenerSet* find_slow(std::string_view name);
  // The same, for a `hash` that hash(name) returned (a Handle computes it once).
  const ListenerSet* find_hashed(std::string_view name, std::size_t hash);
  // The hash find_slow computes for `name`; stable for the life of the process.
  static std::size_t hash(std::string_view name) noexcept;

  std::unique_ptr<NotifierState> state;
};

inline const ListenerSet* find_listeners(NotifierCore& core, std::string_view name) {
  if (name.empty()) throw_empty_name();
  if (core.subscriber_count.load(std::memory_order_acquire) == 0) return nullptr;
  return core.find_slow(name);
}

// One event being dispatched: built on construction (clocks read, start listeners called),
// finished by finish() or fail(). Lives on the instrumenting thread's stack only.
class ActiveEvent {
 public:
  ActiveEvent(NotifierCore& core, const ListenerSet& set, std::string_view name,
              nlohmann::json& payload, const SourceLocation& where);
  // An event built elsewhere (received from another process): its times are kept.
  ActiveEvent(NotifierCore& core, const ListenerSet& set, Event&& prebuilt);
  ~ActiveEvent();
  ActiveEvent(const ActiveEvent&) = delete;
  ActiveEvent& operator=(const ActiveEvent&) = delete;

  // The block returned: calls finish listeners. In strict mode rethrows subscriber errors.
  // An instant event keeps end() == start().
  void finish(bool instant = false);
  // The block threw (call from inside the catch handler): records the exception and calls finish
  // listeners. Never throws; subscriber errors go to the error handler.
  void fail() noexcept;

 private:
  struct Failures;
  void start_listeners();
  void complete(bool instant);
  void record(std::size_t index, const char* phase, std::exception_ptr error) noexcept;
  void report(std::size_t index, const char* phase, const std::exception_ptr& error,
              const char* note) noexcept;

  NotifierCore& core_;
  const ListenerSet& set_;
  ThreadCache& cache_;  // the constructing thread's
  Event event_;
  std::uint64_t started_ = 0;  // bit i: start listener i was called (first 64)
  std::unique_ptr<Failures> failures_;
  std::int64_t cpu_start_ns_ = -1;
};

template <class Block>
decltype(auto) run_block(Block& block, nlohmann::json& payload) {
  if constexpr (std::is_invocable_v<Block&, nlohmann::json&>) {
    return block(payload);
  } else {
    return block();
  }
}

// Computed from the invocability traits, not from run_block's deduced return type, so that
// overload resolution never instantiates run_block for a non-callable argument.
template <class Block>
using block_result_t =
    typename std::conditional_t<std::is_invocable_v<Block&, nlohmann::json&>,
                                std::invoke_result<Block&, nlohmann::json&>,
                                std::invoke_result<Block&>>::type;

template <class Block>
concept InstrumentBlock =
    std::is_invocable_v<Block&> || std::is_invocable_v<Block&, nlohmann::json&>;

template <class Block>
block_result_t<Block> dispatch(NotifierCore& core, const ListenerSet& set, std::string_view name,
                               nlohmann::json& payload, Block& block, SourceLocation where) {
  using Result = block_result_t<Block>;
  ActiveEvent active(core, set, name, payload, where);
  if constexpr (std::is_void_v<Result>) {
    try {
      run_block(block, payload);
    } catch (...) {
      active.fail();
      throw;
    }
    active.finish();
  } else {
    Result result = [&]() -> Result {
      try {
        return run_block(block, payload);
      } catch (...) {
        active.fail();
        throw;
      }
    }();
    active.finish();
    return result;
  }
}

template <class Block>
block_result_t<Block> instrument(NotifierCore& core, const ListenerSet* set, std::string_view name,
                                 nlohmann::json& payload, Block& block, SourceLocation where) {
  if (set == nullptr) return run_block(block, payload);
  return dispatch(core, *set, name, payload, block, where);
}

inline void instrument_instant(NotifierCore& core, const ListenerSet* set, std::string_view name,
                               const nlohmann::json& payload, SourceLocation where) {
  if (set == nullptr) return;
  // The event only reads an instant event's payload; the const_cast never leads to a write.
  ActiveEvent active(core, *set, name, const_cast<nlohmann::json&>(payload), where);
  active.finish(/*instant=*/true);
}

}  // namespace notifications::detail
