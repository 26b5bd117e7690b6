// The conformance suite over the memory transport (queued and inline) and the mock transport
// (whose outage is a disconnect/reconnect), each also with acknowledgements (kMemoryAckCapabilities),
// so the cases about settlements (RedeliveryAfterNack, ...) run over them too.
#include <thread>

#include "conformance/conformance.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

TransportUnderTest memory(bool inline_delivery, bool acknowledgements = false) {
  return {std::string(inline_delivery ? "MemoryInline" : "MemoryQueued") + (acknowledgements ? "Acks" : ""),
          [inline_delivery, acknowledgements](const std::string& scope) -> std::shared_ptr<n::Transport> {
            return n::make_memory_transport(
                {.broker = scope, .inline_delivery = inline_delivery, .acknowledgements = acknowledgements});
          },
          acknowledgements ? n::kMemoryAckCapabilities : n::kMemoryCapabilities,
          {}};
}

TransportUnderTest mock(bool inline_delivery, bool acknowledgements = false) {
  const auto capabilities = acknowledgements ? n::kMemoryAckCapabilities : n::kMemoryCapabilities;
  return {std::string(inline_delivery ? "MockInline" : "MockQueued") + (acknowledgements ? "Acks" : ""),
          [inline_delivery, capabilities](const std::string& scope) -> std::shared_ptr<n::Transport> {
            return std::make_shared<n::MockTransport>(
                n::MockOptions{.broker = scope, .inline_delivery = inline_delivery, .capabilities = capabilities});
          },
          capabilities,
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
                         ::testing::Values(memory(false), memory(true), mock(true), mock(false),
                                           memory(false, true), memory(true, true), mock(true, true),
                                           mock(false, true)),
                         name_of);
}  // namespace conformance
