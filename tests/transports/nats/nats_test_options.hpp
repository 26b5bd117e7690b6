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

// options_for(url) with NATS headers on (they are off by default): for tests of headers.
inline notifications::NatsOptions options_with_headers(const std::string& url) {
  notifications::NatsOptions options = options_for(url);
  options.headers = true;
  return options;
}

}  // namespace test_support
