// JetStreamOptions for tests against the harness's nats-server -js: quick reconnects, short
// waits, a stream named for the test; the harness's options for such a server; a started
// transport.
// Thread-safety: stateless functions.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "nats_server.hpp"
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

inline NatsServerOptions with_jetstream() {
  NatsServerOptions options;
  options.jetstream = true;
  return options;
}

inline std::unique_ptr<notifications::Transport> started(const notifications::JetStreamOptions& options) {
  auto transport = notifications::make_jetstream_transport(options);
  transport->start();
  return transport;
}

}  // namespace test_support
