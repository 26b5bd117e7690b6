// NatsOptions for tests against the harness's server: quick reconnects.
// Thread-safety: a stateless function.
#pragma once

#include <chrono>
#include <string>

#include "notifications/transports/nats.hpp"

namespace test_support {

inline notifications::NatsOptions options_for(const std::string& url) {
  notifications::NatsOptions options;
  options.servers = {url};
  options.reconnect_wait = std::chrono::milliseconds(50);
  options.reconnect_jitter = std::chrono::milliseconds(10);
  return options;
}

}  // namespace test_support
