// The conformance suite over the memory transport (queued and inline) and the mock transport
// (whose outage is a disconnect/reconnect).
#include <thread>

#include "conformance/conformance.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

TransportUnderTest memory(bool inline_delivery) {
  return {inline_delivery ? "MemoryInline" : "MemoryQueued",
          [inline_delivery](const std::string& scope) -> std::shared_ptr<n::Transport> {
            return n::make_memory_transport({.broker = scope, .inline_delivery = inline_delivery});
          },
          n::kMemoryCapabilities,
          {}};
}

TransportUnderTest mock(bool inline_delivery) {
  return {inline_delivery ? "MockInline" : "MockQueued",
          [inline_delivery](const std::string& scope) -> std::shared_ptr<n::Transport> {
            return std::make_shared<n::MockTransport>(
                n::MockOptions{.broker = scope, .inline_delivery = inline_delivery});
          },
          n::kMemoryCapabilities,
          [](n::Transport& transport) {
            auto& mock = dynamic_cast<n::MockTransport&>(transport);
            mock.disconnect();
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            mock.reconnect();
          }};
}

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(Loopback, Conformance,
                         ::testing::Values(memory(false), memory(true), mock(true), mock(false)),
                         name_of);
}  // namespace conformance
