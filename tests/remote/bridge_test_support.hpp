// Helpers shared by the Bridge tests: a test configuration and health counter readers.
// Thread-safety: stateless functions.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "notifications/config.hpp"

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

inline std::uint64_t counter(const nlohmann::json& health, const std::string& name) {
  return health["counters"][name].get<std::uint64_t>();
}
inline std::uint64_t dropped(const nlohmann::json& health, const std::string& reason) {
  return health["counters"]["dropped"][reason].get<std::uint64_t>();
}

}  // namespace test_support
