// Private: a Bridge's BridgeObserver (notifications/metrics.hpp) with the count of its exceptions.
// The bridge holds one only when BridgeHooks::observer is set, so a hot path without an observer
// tests one null pointer and reads no clock.
//
// Thread-safety: every member may be called from any thread, concurrently (the observer's own
// contract says it is thread-safe); `errors` is an atomic.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string_view>

#include "notifications/metrics.hpp"

namespace notifications::bridge_internal {

struct ObserverSlot {
  explicit ObserverSlot(std::shared_ptr<BridgeObserver> o) : observer(std::move(o)) {}

  const std::shared_ptr<BridgeObserver> observer;
  std::atomic<std::uint64_t> errors{0};  // exceptions the observer threw (health: observer_errors)

  void published(std::chrono::nanoseconds latency) noexcept {
    try {
      observer->published(latency < std::chrono::nanoseconds::zero() ? std::chrono::nanoseconds::zero() : latency);
    } catch (...) {
      errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  void delivered(std::string_view name, std::chrono::nanoseconds latency, bool ok) noexcept {
    try {
      observer->delivered(name, latency, ok);
    } catch (...) {
      errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
  void handled(std::string_view handler, std::chrono::nanoseconds latency, bool ok) noexcept {
    try {
      observer->handled(handler, latency, ok);
    } catch (...) {
      errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
};

// Null when `observer` is.
inline std::shared_ptr<ObserverSlot> make_observer_slot(std::shared_ptr<BridgeObserver> observer) {
  return observer ? std::make_shared<ObserverSlot>(std::move(observer)) : nullptr;
}

}  // namespace notifications::bridge_internal
