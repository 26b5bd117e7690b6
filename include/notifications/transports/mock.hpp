// Mock transport: a memory-style loopback that records every call and injects faults on command,
// for the tests of code that uses a Transport (the Bridge, the conformance suite).
//
// Delivery is the memory transport's (see memory.hpp: subjects, consumer groups, order,
// max_pending back-pressure, flush, stop), between mocks created with the same broker name. Mock
// brokers are a namespace of their own: a mock never talks to a memory transport. Inline delivery
// by default, for determinism.
//
// Faults, each from any thread at any time:
//   fail_next_publishes(n, transient): the next n publish() calls accept nothing and return
//     {0, transient, "mock: injected publish failure"}.
//   disconnect() / reconnect(): while disconnected, publish() returns {0, transient=true,
//     "mock: disconnected"}; messages for this mock's subscriptions are held (within max_pending)
//     and delivered after reconnect() without a new subscribe() call. reconnect() delivers held
//     messages of inline subscriptions on its own thread.
//   set_latency(d): every later publish() call first sleeps d (no lock held).
//   drop_next(n): the next n messages are accepted (publish() reports them published, published()
//     lists them) but never delivered; counted in health() as "dropped_by_fault".
//   duplicate_next(n): the next n messages are delivered twice; "duplicated_by_fault".
//   redeliver_next(n): the next n messages are delivered, then delivered again as a transport
//     with acknowledgements redelivers: same Message::id, Delivery::redelivery 1 on the second
//     delivery (0 on the first); "redelivered_by_fault". The second delivery follows the first
//     at once (nothing in between on that subscription). Works whatever the capabilities say,
//     so a Bridge's redelivery suppression can be tested without a durable transport. With
//     acknowledgements each of the two deliveries is settled on its own.
//   fail_next_starts(n): the next n start() calls throw TransportError (the mock stays created).
//   buffer_while_disconnected(true): as cnats' reconnect buffer, publish() while disconnected
//     accepts every message (reports them published) and keeps them; flush() returns false
//     while it keeps any; reconnect() sends them, in order, before anything published later.
// MockOptions::max_message_bytes: bodies larger than this are refused for good (transient = false)
// and max_message_bytes() reports it (0: no limit).
// The order of checks in publish(): record the call, latency, disconnected, fail_next_publishes,
// then per message drop_next, duplicate_next, redeliver_next.
// Message::id is carried as the field itself, as on the memory transport. DeliveryOptions are
// checked against the capabilities the mock claims (TransportBase): the default refuses durable,
// start, ack_wait, max_deliveries and ordered.
//
// Acknowledgements: when MockOptions::capabilities.acknowledgements is true (kMemoryAckCapabilities,
// or URL "acknowledgements=true"), the mock implements them exactly as memory:// does with
// MemoryOptions::acknowledgements (memory.hpp: settle, in_progress, redelivery counts, ack wait
// from MockOptions::ack_wait, max_deliveries, group redelivery, max_pending, stop, fork, and the
// health() counters), its timer thread being "ntf-mock-acks". A disconnected mock holds due
// redeliveries (within max_pending) until reconnect(); the publish faults (drop_next,
// duplicate_next, redeliver_next) apply to published messages only, and each delivery they make
// is settled on its own. Its nak'd deliveries may be overtaken whatever nak_may_be_overtaken
// says. The other flags a mock may claim are accepted (their DeliveryOptions too) but NOT
// implemented: persistent, exactly_once, dedupe_window, durable_consumers, start_positions,
// ordered_delivery_option (and ordered: false changes nothing; the mock keeps order anyway).
//
// URL: "mock://" (broker "default") or "mock://<broker>?mode=inline|queued&max_pending=<n>
// &acknowledgements=true|false&ack_wait_ms=<n>&max_deliveries=<n>"; config.options may hold the
// same keys (acknowledgements a JSON bool), as memory.hpp says. Capabilities come from
// MockOptions (default: the memory transport's; acknowledgements=true: kMemoryAckCapabilities),
// so the conformance suite can run the mock under other flags. health(): memory's fields (with
// acknowledgements, its counters too), plus connected, publish_calls, dropped_by_fault,
// duplicated_by_fault, redelivered_by_fault, failed_by_fault, refused_disconnected.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "notifications/transport.hpp"
#include "notifications/transports/memory.hpp"

namespace notifications {

// Thread-safety: a plain value.
struct MockOptions {
  std::string broker = "default";  // letters, digits, '_', '-', '.'
  bool inline_delivery = true;     // false: queued mode, a delivery thread per subscription
  std::size_t max_pending = 65536; // per subscription, >= 1
  // capabilities.acknowledgements true: implemented as memory:// implements them (see above).
  TransportCapabilities capabilities = kMemoryCapabilities;
  std::size_t max_message_bytes = 0;  // 0: no limit
  std::chrono::milliseconds ack_wait{30000};  // with acknowledgements: default DeliveryOptions::ack_wait, >= 1 ms
  std::uint32_t max_deliveries = 0;           // with acknowledgements: default max_deliveries; 0: no limit
};

// One subscribe() call as the mock saw it. Thread-safety: a plain value.
struct MockSubscription {
  std::uint64_t id = 0;
  std::string pattern;
  std::string group;
  bool active = true;  // false once unsubscribed or stopped
};

// Thread-safety: every member may be called from any thread, concurrently; the records are
// snapshots taken under the mock's lock.
class MockTransport : public TransportBase {
 public:
  // Throws TransportError for an invalid broker name, max_pending == 0 or ack_wait below 1 ms.
  explicit MockTransport(MockOptions options = {});
  // Stops with a 5 s deadline if still started.
  ~MockTransport() override;
  MockTransport(const MockTransport&) = delete;
  MockTransport& operator=(const MockTransport&) = delete;

  std::string kind() const override;  // "mock"
  TransportCapabilities capabilities() const override;
  const MockOptions& options() const;

  // ---- faults
  void fail_next_publishes(std::size_t calls, bool transient = true);
  void fail_next_starts(std::size_t calls);
  void disconnect();
  void reconnect();
  bool connected() const;
  void set_latency(std::chrono::steady_clock::duration latency);
  void drop_next(std::size_t messages);
  void duplicate_next(std::size_t messages);
  void redeliver_next(std::size_t messages);
  void buffer_while_disconnected(bool buffer);
  std::size_t max_message_bytes() const override;

  // ---- records (since construction or the last clear_records())
  std::size_t publish_calls() const;           // every publish() that reached the mock (started)
  std::vector<std::size_t> batch_sizes() const; // the batch size of each of those calls
  std::vector<Message> published() const;       // accepted messages, in order (dropped ones too)
  std::size_t published_count() const;
  std::vector<MockSubscription> subscriptions() const;  // every subscribe(), in order
  std::size_t active_subscriptions() const;
  std::size_t unsubscribe_calls() const;
  std::size_t delivered_count() const;          // messages handed to this mock's handlers
  std::size_t dropped_by_fault() const;
  std::size_t duplicated_by_fault() const;
  std::size_t redelivered_by_fault() const;
  // Forgets the publish and subscribe records (not the counters in health(), nor faults).
  void clear_records();

  // ---- waits for tests: true once the count is at least `count` / `active` (published_count(),
  // delivered_count(), active_subscriptions()), false when the timeout passed first
  bool wait_for_published(std::size_t count, std::chrono::milliseconds timeout) const;
  bool wait_for_delivered(std::size_t count, std::chrono::milliseconds timeout) const;
  bool wait_for_subscriptions(std::size_t active, std::chrono::milliseconds timeout) const;

 protected:
  void do_start() override;
  PublishResult do_publish(std::span<const Message> batch) override;
  void do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                    DeliveryHandler handler) override;
  void do_unsubscribe(std::uint64_t id) override;
  bool do_flush(Deadline deadline) override;
  void do_stop(Deadline deadline) override;
  nlohmann::json do_health() const override;
  // Fork: as memory:// (notifications/transports/memory.hpp). Faults and records are kept.
  void do_prepare_fork(Deadline deadline) override;
  void do_after_fork(bool in_child) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The options that make_transport() uses for a "mock://..." URL and config.options (keys mode,
// max_pending, acknowledgements, ack_wait_ms, max_deliveries). Throws TransportError naming the
// URL (credentials redacted) and the bad part.
MockOptions mock_options_from_config(const TransportConfig& config);

}  // namespace notifications
