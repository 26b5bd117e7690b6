// Bounded waiting for tests: polls a condition until it holds or the timeout passes.
// Thread-safety: stateless; `done` is called on the calling thread only.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace test_support {

// True when `done()` became true before `timeout`; false otherwise (never waits longer).
inline bool wait_until(const std::function<bool()>& done,
                       std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace test_support
