// The conformance suite over the NATS transport and a real nats-server: one server per case
// (the case's scope), restarted on the same port for the outage cases.
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "conformance/conformance.hpp"
#include "nats_server.hpp"
#include "server_keeper.hpp"
#include "notifications/transports/nats.hpp"

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

std::shared_ptr<n::Transport> make(const std::string& scope) {
  std::lock_guard lock(servers.mutex);
  if (scope != servers.scope || !servers.server) {
    servers.by_transport.clear();
    test_support::keeper().call([] {
      servers.server.reset();
      servers.server = std::make_unique<test_support::NatsServer>();
    });
    servers.scope = scope;
  }
  n::NatsOptions options;
  options.servers = {servers.server->url()};
  options.name = "conformance-" + scope;
  options.reconnect_wait = std::chrono::milliseconds(50);
  options.reconnect_jitter = std::chrono::milliseconds(10);
  std::shared_ptr<n::Transport> transport = n::make_nats_transport(options);
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

// With the default options: bodies only, no headers.
TransportUnderTest nats() { return {"Nats", make, n::kNatsCapabilities, outage, /*carries_headers=*/false}; }

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(Nats, Conformance, ::testing::Values(nats()), name_of);
}  // namespace conformance
