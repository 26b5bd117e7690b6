// The conformance suite over the NATS transport and a real nats-server: one server per case
// (the case's scope), restarted on the same port for the outage cases.
#include <memory>
#include <string>

#include "conformance/conformance.hpp"
#include "nats_server.hpp"
#include "server_keeper.hpp"
#include "notifications/transports/nats.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

test_support::ServersByScope& servers() {
  static test_support::ServersByScope instance;
  return instance;
}

std::shared_ptr<n::Transport> make(const std::string& scope) {
  return servers().make<n::Transport>(scope, [&](const std::string& url) -> std::shared_ptr<n::Transport> {
    n::NatsOptions options;
    options.servers = {url};
    options.name = "conformance-" + scope;
    options.reconnect_wait = std::chrono::milliseconds(50);
    options.reconnect_jitter = std::chrono::milliseconds(10);
    return n::make_nats_transport(options);
  });
}

void outage(n::Transport& transport) { servers().restart(&transport); }

// With the default options: bodies only, no headers.
TransportUnderTest nats() { return {"Nats", make, n::kNatsCapabilities, outage, /*carries_headers=*/false}; }

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(Nats, Conformance, ::testing::Values(nats()), name_of);
}  // namespace conformance
