// Helpers shared by the Bridge tests: a test configuration, health counter readers and an inbox
// of the events a listener saw.
// Thread-safety: the functions are stateless; Inbox is safe from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/config.hpp"
#include "notifications/event.hpp"
#include "notifications/notifier.hpp"

namespace test_support {

// Prefix "test", retries at 1 to 5 ms: failures show up fast.
inline notifications::BridgeConfig config_for(const std::string& app) {
  notifications::BridgeConfig config;
  config.app = app;
  config.prefix = "test";
  config.retry.initial = std::chrono::milliseconds(1);
  config.retry.max = std::chrono::milliseconds(5);
  return config;
}

// A broker (or subject) name no other test in this process uses: "<base>-<n>".
inline std::string unique_broker(const std::string& base) {
  static std::atomic<int> next{0};
  return base + "-" + std::to_string(next.fetch_add(1));
}

// Thread-safe collection of the events a listener saw (its member functions may be called from
// any thread).
struct Inbox {
  std::mutex mutex;
  std::vector<notifications::Event> events;
  notifications::EventListener listener() {
    return [this](const notifications::Event& e) {
      std::lock_guard lock(mutex);
      events.push_back(e);
    };
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return events.size();
  }
  notifications::Event at(std::size_t i) {
    std::lock_guard lock(mutex);
    return events.at(i);
  }
};

inline std::uint64_t counter(const nlohmann::json& health, const std::string& name) {
  return health["counters"][name].get<std::uint64_t>();
}
inline std::uint64_t dropped(const nlohmann::json& health, const std::string& reason) {
  return health["counters"]["dropped"][reason].get<std::uint64_t>();
}

}  // namespace test_support
