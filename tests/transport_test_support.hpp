// Helpers shared by the transport tests (memory, mock, NATS).
// Thread-safety: stateless apart from fresh_name()'s atomic counter; safe from any thread.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <span>
#include <string>

#include "notifications/transport.hpp"

namespace test_support {

inline notifications::Deadline in(std::chrono::milliseconds d) { return std::chrono::steady_clock::now() + d; }

inline notifications::PublishResult publish1(notifications::Transport& t, const notifications::Message& m) {
  return t.publish(std::span<const notifications::Message>(&m, 1));
}

// The message of the TransportError `f` throws; "WRONG TYPE: ..." for another exception,
// "NO ERROR" when it throws nothing.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const notifications::TransportError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG TYPE: ") + e.what();
  }
  return "NO ERROR";
}

// A name no other test uses (a broker, a scope): `prefix`, a counter, the test's name.
inline std::string fresh_name(const std::string& prefix) {
  static std::atomic<int> next{0};
  return prefix + std::to_string(next.fetch_add(1)) + "-" +
         ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

}  // namespace test_support
