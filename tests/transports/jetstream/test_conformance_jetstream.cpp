// The conformance suite over the JetStream transport and a real nats-server -js: one server (and
// so one stream) per case, restarted on the same port, with its store, for the outage cases.
#include <map>
#include <memory>
#include <mutex>

#include "conformance/conformance.hpp"
#include "jetstream_test_support.hpp"
#include "nats_server.hpp"
#include "server_keeper.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

// Servers by scope. A new scope stops the servers of earlier ones: cases run one at a time.
struct Servers {
  std::mutex mutex;
  std::string scope;
  std::unique_ptr<test_support::NatsServer> server;
  std::map<const n::Transport*, test_support::NatsServer*> by_transport;
} servers;

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

std::shared_ptr<n::Transport> make(const std::string& scope) {
  std::lock_guard lock(servers.mutex);
  if (scope != servers.scope || !servers.server) {
    servers.by_transport.clear();
    test_support::keeper().call([] {
      servers.server.reset();
      test_support::NatsServerOptions options;
      options.jetstream = true;
      servers.server = std::make_unique<test_support::NatsServer>(options);
    });
    servers.scope = scope;
  }
  n::JetStreamOptions options = test_support::jetstream_options_for(servers.server->url(), "CONFORMANCE", case_subjects());
  options.connection.name = "conformance-" + scope;
  std::shared_ptr<n::Transport> transport = n::make_jetstream_transport(options);
  servers.by_transport[transport.get()] = servers.server.get();
  return transport;
}

void outage(n::Transport& transport) {
  std::lock_guard lock(servers.mutex);
  const auto it = servers.by_transport.find(&transport);
  ASSERT_NE(it, servers.by_transport.end()) << "outage for a transport of an earlier case";
  test_support::NatsServer* server = it->second;
  test_support::keeper().call([server] { server->restart(); });
}

TransportUnderTest jetstream() {
  n::TransportCapabilities capabilities = n::kJetStreamCapabilities;
  capabilities.dedupe_window = n::JetStreamOptions{}.duplicate_window;
  return {"JetStream", make, capabilities, outage, /*carries_headers=*/true};
}

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(JetStream, Conformance, ::testing::Values(jetstream()), name_of);
}  // namespace conformance
