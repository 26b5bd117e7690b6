// The conformance suite over the JetStream transport and a real nats-server -js: one server (and
// so one stream) per case, restarted on the same port, with its store, for the outage cases.
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

std::shared_ptr<n::Transport> make(const std::string& scope) {
  return servers().make<n::Transport>(scope, [&](const std::string& url) -> std::shared_ptr<n::Transport> {
    n::JetStreamOptions options = test_support::jetstream_options_for(url, "CONFORMANCE", case_subjects());
    options.connection.name = "conformance-" + scope;
    return n::make_jetstream_transport(options);
  });
}

void outage(n::Transport& transport) { servers().restart(&transport); }

TransportUnderTest jetstream() {
  n::TransportCapabilities capabilities = n::kJetStreamCapabilities;
  capabilities.dedupe_window = n::JetStreamOptions{}.duplicate_window;
  TransportUnderTest transport{"JetStream", make, capabilities, outage, /*carries_headers=*/true};
  transport.acked_may_repeat_after_close = true;  // see conformance.hpp and docs/jetstream.md
  return transport;
}

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(JetStream, Conformance, ::testing::Values(jetstream()), name_of);
}  // namespace conformance
