// The conformance suite over the JetStream transport and a real nats-server -js, with pull
// consumers (the default) and with push consumers: one server (and so one stream) per case,
// restarted on the same port, with its store, for the outage cases.
#include <memory>
#include <string>

#include "conformance/conformance.hpp"
#include "jetstream_test_support.hpp"
#include "nats_server.hpp"
#include "server_keeper.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

// The first tokens of every subject the cases publish (the Bridge's prefix "conf" and the raw
// cases' own); the stream stores them all.
std::vector<std::string> case_subjects() {
  std::vector<std::string> subjects;
  for (const char* root : {"conf", "conformance", "continue", "dedupe", "durable", "hunt", "ids", "iso", "late",
                           "local", "never", "noack", "opts", "order", "ordered", "overtake", "redeliver", "start",
                           "topic", "wait"}) {
    subjects.push_back(std::string(root) + ".>");
  }
  return subjects;
}

test_support::ServersByScope& servers() {
  static test_support::ServersByScope instance([] {
    test_support::NatsServerOptions options;
    options.jetstream = true;
    return options;
  }());
  return instance;
}

std::shared_ptr<n::Transport> make_with(n::JetStreamOptions::ConsumerType type, const std::string& scope) {
  return servers().make<n::Transport>(scope, [&](const std::string& url) -> std::shared_ptr<n::Transport> {
    n::JetStreamOptions options = test_support::jetstream_options_for(url, "CONFORMANCE", case_subjects());
    options.connection.name = "conformance-" + scope;
    options.consumer_type = type;
    // Push: a lost consumer is noticed after twice this of silence (the outage cases).
    options.idle_heartbeat = std::chrono::milliseconds(500);
    return n::make_jetstream_transport(options);
  });
}

void outage(n::Transport& transport) { servers().restart(&transport); }

TransportUnderTest jetstream(const std::string& name, n::JetStreamOptions::ConsumerType type) {
  n::TransportCapabilities capabilities = n::kJetStreamCapabilities;
  capabilities.dedupe_window = n::JetStreamOptions{}.duplicate_window;
  TransportUnderTest transport{name, [type](const std::string& scope) { return make_with(type, scope); }, capabilities,
                               outage, /*carries_headers=*/true};
  transport.acked_may_repeat_after_close = true;  // see conformance.hpp and docs/jetstream.md
  return transport;
}

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(JetStream, Conformance,
                         ::testing::Values(jetstream("JetStream", n::JetStreamOptions::ConsumerType::pull),
                                           jetstream("JetStreamPush", n::JetStreamOptions::ConsumerType::push)),
                         name_of);
}  // namespace conformance
