// The memory transport (include/notifications/transports/memory.hpp): TransportBase over one
// endpoint of the in-process loopback broker (loopback_broker.hpp). Registers "memory://".
#include "notifications/transports/memory.hpp"

#include <chrono>
#include <memory>

#include "transports/memory/loopback_broker.hpp"

namespace notifications {

namespace {

// The memory transport: TransportBase over one loopback::Endpoint.
// Thread-safety: as every Transport, all members may be called from any thread.
class MemoryTransport final : public TransportBase {
 public:
  explicit MemoryTransport(const MemoryOptions& options)
      : endpoint_(loopback::EndpointOptions{"memory", options.broker, options.inline_delivery,
                                            options.max_pending, options.acknowledgements,
                                            options.ack_wait, options.max_deliveries}),
        capabilities_(options.acknowledgements ? kMemoryAckCapabilities : kMemoryCapabilities) {}
  ~MemoryTransport() override {
    try {
      stop(std::chrono::steady_clock::now() + std::chrono::seconds(5));
    } catch (...) {  // a destructor must not throw; stop() of the endpoint does not either
    }
  }

  std::string kind() const override { return "memory"; }
  TransportCapabilities capabilities() const override { return capabilities_; }

 protected:
  void do_start() override {}
  PublishResult do_publish(std::span<const Message> batch) override { return endpoint_.publish(batch); }
  void do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                    DeliveryHandler handler) override {
    endpoint_.subscribe(id, pattern, options, std::move(handler));  // headers always kept
  }
  void do_unsubscribe(std::uint64_t id) override { endpoint_.unsubscribe(id); }
  bool do_flush(Deadline deadline) override { return endpoint_.flush(deadline); }
  void do_stop(Deadline deadline) override { endpoint_.close(deadline); }
  nlohmann::json do_health() const override { return endpoint_.health(); }
  void do_prepare_fork(Deadline deadline) override { endpoint_.prepare_fork(deadline); }
  void do_after_fork(bool in_child) override { endpoint_.after_fork(in_child); }

 private:
  loopback::Endpoint endpoint_;
  const TransportCapabilities capabilities_;
};

}  // namespace

std::unique_ptr<Transport> make_memory_transport(MemoryOptions options) {
  return std::make_unique<MemoryTransport>(options);
}

MemoryOptions memory_options_from_config(const TransportConfig& config) {
  const MemoryOptions defaults;
  loopback::EndpointOptions o{"memory",          "default",         false, defaults.max_pending, defaults.acknowledgements,
                              defaults.ack_wait, defaults.max_deliveries};
  loopback::apply_config(config, "memory", o);
  return MemoryOptions{o.broker, o.inline_delivery, o.max_pending, o.acknowledgements, o.ack_wait, o.max_deliveries};
}

}  // namespace notifications

// Linking notifications::memory (part of notifications::core) registers the scheme before
// main(); the target's link options keep this object in a static link.
extern "C" int notifications_memory_registered;
int notifications_memory_registered = [] {
  notifications::register_transport("memory", [](const notifications::TransportConfig& config) {
    return notifications::make_memory_transport(notifications::memory_options_from_config(config));
  });
  return 1;
}();
