// JetStreamOptions for tests against the harness's nats-server -js: quick reconnects, short
// waits, a stream named for the test.
// Thread-safety: stateless functions.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "nats_test_options.hpp"
#include "notifications/transports/jetstream.hpp"

namespace test_support {

inline notifications::JetStreamOptions jetstream_options_for(const std::string& url, const std::string& stream,
                                                            std::vector<std::string> subjects) {
  notifications::JetStreamOptions options;
  options.connection = options_for(url);
  options.stream = stream;
  options.subjects = std::move(subjects);
  options.fetch_wait = std::chrono::milliseconds(200);
  options.publish_timeout = std::chrono::milliseconds(2'000);
  options.api_timeout = std::chrono::milliseconds(2'000);
  return options;
}

}  // namespace test_support
