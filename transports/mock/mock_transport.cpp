// The mock transport (mock.hpp): a loopback::Endpoint in the "mock" broker namespace, plus
// records and injected faults.
#include "notifications/transports/mock.hpp"

#include <condition_variable>
#include <thread>
#include <utility>

#include "transport/kit.hpp"
#include "transports/memory/loopback_broker.hpp"

namespace notifications {

using Clock = std::chrono::steady_clock;
using detail::Mutex;
using detail::MutexLock;
using detail::UniqueMutexLock;

struct MockTransport::Impl {
  explicit Impl(MockOptions o)
      : options(std::move(o)),
        endpoint(loopback::EndpointOptions{"mock", options.broker, options.inline_delivery,
                                           options.max_pending, options.capabilities.acknowledgements,
                                           options.ack_wait, options.max_deliveries}) {}

  const MockOptions options;
  loopback::Endpoint endpoint;

  // Serialises disconnect()/reconnect() so the flag and the endpoint's pause agree. Never held
  // while a handler runs.
  Mutex connection;

  // Guards everything below; never held while calling into the endpoint.
  mutable Mutex mutex;
  mutable std::condition_variable changed;  // records changed

  // faults
  std::size_t fail_publishes NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  bool fail_transient NOTIFICATIONS_GUARDED_BY(mutex) = true;
  std::size_t fail_starts NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  bool disconnected NOTIFICATIONS_GUARDED_BY(mutex) = false;
  Clock::duration latency NOTIFICATIONS_GUARDED_BY(mutex){0};
  std::size_t drop NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::size_t duplicate NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::size_t redeliver NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  bool buffer_while_disconnected NOTIFICATIONS_GUARDED_BY(mutex) = false;
  std::vector<Message> buffered NOTIFICATIONS_GUARDED_BY(mutex);  // accepted while disconnected, sent by reconnect()

  // records (clear_records() resets them)
  std::size_t publish_calls NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::vector<std::size_t> batch_sizes NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<Message> published NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<MockSubscription> subscriptions NOTIFICATIONS_GUARDED_BY(mutex);
  std::size_t unsubscribe_calls NOTIFICATIONS_GUARDED_BY(mutex) = 0;

  // counters for health() (never reset)
  std::uint64_t total_publish_calls NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::uint64_t dropped NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::uint64_t duplicated NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::uint64_t redelivered NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::uint64_t failed_by_fault NOTIFICATIONS_GUARDED_BY(mutex) = 0;
  std::uint64_t refused_disconnected NOTIFICATIONS_GUARDED_BY(mutex) = 0;

  std::size_t active() const NOTIFICATIONS_REQUIRES(mutex) {
    std::size_t n = 0;
    for (const auto& s : subscriptions) n += s.active ? 1 : 0;
    return n;
  }
};

MockTransport::MockTransport(MockOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

MockTransport::~MockTransport() {
  try {
    stop(Clock::now() + std::chrono::seconds(5));
  } catch (...) {  // a destructor must not throw
  }
}

std::string MockTransport::kind() const { return "mock"; }
TransportCapabilities MockTransport::capabilities() const { return impl_->options.capabilities; }
const MockOptions& MockTransport::options() const { return impl_->options; }

// ---- faults ------------------------------------------------------------------------------------

void MockTransport::fail_next_publishes(std::size_t calls, bool transient) {
  MutexLock lock(impl_->mutex);
  impl_->fail_publishes = calls;
  impl_->fail_transient = transient;
}

void MockTransport::fail_next_starts(std::size_t calls) {
  MutexLock lock(impl_->mutex);
  impl_->fail_starts = calls;
}

void MockTransport::disconnect() {
  MutexLock connection(impl_->connection);
  {
    MutexLock lock(impl_->mutex);
    impl_->disconnected = true;
  }
  impl_->endpoint.set_paused(true);
}

void MockTransport::reconnect() {
  std::vector<Message> buffered;
  {
    MutexLock connection(impl_->connection);
    {
      MutexLock lock(impl_->mutex);
      buffered = std::move(impl_->buffered);
      impl_->buffered.clear();
    }
    impl_->endpoint.set_paused(false);
    for (const Message& m : buffered) impl_->endpoint.route(m);  // before anything published later
    {
      MutexLock lock(impl_->mutex);
      impl_->disconnected = false;
    }
  }
  impl_->endpoint.deliver_held();  // inline subscriptions: on this thread, no lock held
  impl_->changed.notify_all();
}

void MockTransport::buffer_while_disconnected(bool buffer) {
  MutexLock lock(impl_->mutex);
  impl_->buffer_while_disconnected = buffer;
}

std::size_t MockTransport::max_message_bytes() const { return impl_->options.max_message_bytes; }

bool MockTransport::connected() const {
  MutexLock lock(impl_->mutex);
  return !impl_->disconnected;
}

void MockTransport::set_latency(Clock::duration latency) {
  MutexLock lock(impl_->mutex);
  impl_->latency = latency;
}

void MockTransport::drop_next(std::size_t messages) {
  MutexLock lock(impl_->mutex);
  impl_->drop = messages;
}

void MockTransport::duplicate_next(std::size_t messages) {
  MutexLock lock(impl_->mutex);
  impl_->duplicate = messages;
}

void MockTransport::redeliver_next(std::size_t messages) {
  MutexLock lock(impl_->mutex);
  impl_->redeliver = messages;
}

// ---- records -----------------------------------------------------------------------------------

std::size_t MockTransport::publish_calls() const {
  MutexLock lock(impl_->mutex);
  return impl_->publish_calls;
}

std::vector<std::size_t> MockTransport::batch_sizes() const {
  MutexLock lock(impl_->mutex);
  return impl_->batch_sizes;
}

std::vector<Message> MockTransport::published() const {
  MutexLock lock(impl_->mutex);
  return impl_->published;
}

std::size_t MockTransport::published_count() const {
  MutexLock lock(impl_->mutex);
  return impl_->published.size();
}

std::vector<MockSubscription> MockTransport::subscriptions() const {
  MutexLock lock(impl_->mutex);
  return impl_->subscriptions;
}

std::size_t MockTransport::active_subscriptions() const {
  MutexLock lock(impl_->mutex);
  return impl_->active();
}

std::size_t MockTransport::unsubscribe_calls() const {
  MutexLock lock(impl_->mutex);
  return impl_->unsubscribe_calls;
}

std::size_t MockTransport::delivered_count() const { return impl_->endpoint.delivered(); }

std::size_t MockTransport::dropped_by_fault() const {
  MutexLock lock(impl_->mutex);
  return impl_->dropped;
}

std::size_t MockTransport::duplicated_by_fault() const {
  MutexLock lock(impl_->mutex);
  return impl_->duplicated;
}

std::size_t MockTransport::redelivered_by_fault() const {
  MutexLock lock(impl_->mutex);
  return impl_->redelivered;
}

void MockTransport::clear_records() {
  MutexLock lock(impl_->mutex);
  impl_->publish_calls = 0;
  impl_->batch_sizes.clear();
  impl_->published.clear();
  impl_->subscriptions.clear();
  impl_->unsubscribe_calls = 0;
}

// ---- waits -------------------------------------------------------------------------------------

bool MockTransport::wait_for_published(std::size_t count, std::chrono::milliseconds timeout) const {
  const auto deadline = Clock::now() + timeout;
  UniqueMutexLock lock(impl_->mutex);
  while (impl_->published.size() < count) {
    if (lock.wait_until(impl_->changed, deadline) == std::cv_status::timeout) break;
  }
  return impl_->published.size() >= count;
}

bool MockTransport::wait_for_delivered(std::size_t count, std::chrono::milliseconds timeout) const {
  return impl_->endpoint.wait_delivered(count, Clock::now() + timeout);
}

bool MockTransport::wait_for_subscriptions(std::size_t active, std::chrono::milliseconds timeout) const {
  const auto deadline = Clock::now() + timeout;
  UniqueMutexLock lock(impl_->mutex);
  while (impl_->active() < active) {
    if (lock.wait_until(impl_->changed, deadline) == std::cv_status::timeout) break;
  }
  return impl_->active() >= active;
}

// ---- hooks -------------------------------------------------------------------------------------

void MockTransport::do_start() {
  MutexLock lock(impl_->mutex);
  if (impl_->fail_starts > 0) {
    --impl_->fail_starts;
    throw TransportError("mock: injected start failure");
  }
}

PublishResult MockTransport::do_publish(std::span<const Message> batch) {
  Impl& d = *impl_;
  Clock::duration latency{0};
  {
    MutexLock lock(d.mutex);
    ++d.publish_calls;
    ++d.total_publish_calls;
    d.batch_sizes.push_back(batch.size());
    latency = d.latency;
  }
  d.changed.notify_all();
  if (latency > Clock::duration::zero()) std::this_thread::sleep_for(latency);
  {
    MutexLock lock(d.mutex);
    if (d.disconnected && d.buffer_while_disconnected) {
      d.buffered.insert(d.buffered.end(), batch.begin(), batch.end());
      return PublishResult{batch.size(), true, ""};
    }
    if (d.disconnected) {
      ++d.refused_disconnected;
      return PublishResult{0, true, "mock: disconnected"};
    }
    if (d.fail_publishes > 0) {
      --d.fail_publishes;
      ++d.failed_by_fault;
      return PublishResult{0, d.fail_transient, "mock: injected publish failure"};
    }
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (d.options.max_message_bytes != 0 && batch[i].body.size() > d.options.max_message_bytes) {
      return PublishResult{i, false,
                           "mock: message of " + std::to_string(batch[i].body.size()) + " bytes exceeds max_message_bytes " +
                               std::to_string(d.options.max_message_bytes)};
    }
    bool drop = false;
    bool duplicate = false;
    bool redeliver = false;
    {
      MutexLock lock(d.mutex);
      if (d.drop > 0) {
        --d.drop;
        drop = true;
      } else if (d.duplicate > 0) {
        --d.duplicate;
        duplicate = true;
      } else if (d.redeliver > 0) {
        --d.redeliver;
        redeliver = true;
      }
    }
    if (!drop) {
      const loopback::RouteResult r = d.endpoint.route(batch[i], true, redeliver);
      if (!r.ok) {
        if (duplicate || redeliver) {
          MutexLock lock(d.mutex);
          if (duplicate) ++d.duplicate;  // not applied: keep it for the next message
          if (redeliver) ++d.redeliver;
        }
        return PublishResult{i, r.transient,
                             "message " + std::to_string(i + 1) + " of " + std::to_string(batch.size()) +
                                 ": " + r.error};
      }
      // The copy is best effort: a full subscription only loses the extra copy.
      if (duplicate) d.endpoint.route(batch[i], false);
    }
    {
      MutexLock lock(d.mutex);
      d.published.push_back(batch[i]);
      if (drop) ++d.dropped;
      if (duplicate) ++d.duplicated;
      if (redeliver) ++d.redelivered;
    }
    d.changed.notify_all();
  }
  return PublishResult{batch.size(), true, {}};
}

void MockTransport::do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                                 DeliveryHandler handler) {
  impl_->endpoint.subscribe(id, pattern, options, std::move(handler));
  {
    MutexLock lock(impl_->mutex);
    impl_->subscriptions.push_back(MockSubscription{id, pattern, options.group, true});
  }
  impl_->changed.notify_all();
}

void MockTransport::do_unsubscribe(std::uint64_t id) {
  impl_->endpoint.unsubscribe(id);
  {
    MutexLock lock(impl_->mutex);
    ++impl_->unsubscribe_calls;
    for (auto& s : impl_->subscriptions) {
      if (s.id == id) s.active = false;
    }
  }
  impl_->changed.notify_all();
}

bool MockTransport::do_flush(Deadline deadline) {
  {
    UniqueMutexLock lock(impl_->mutex);
    // As a client with a reconnect buffer: nothing buffered has left the process.
    while (!impl_->buffered.empty()) {
      if (lock.wait_until(impl_->changed, deadline) == std::cv_status::timeout) break;
    }
    if (!impl_->buffered.empty()) return false;
  }
  return impl_->endpoint.flush(deadline);
}

void MockTransport::do_stop(Deadline deadline) {
  impl_->endpoint.close(deadline);
  {
    MutexLock lock(impl_->mutex);
    for (auto& s : impl_->subscriptions) s.active = false;
  }
  impl_->changed.notify_all();
}

void MockTransport::do_prepare_fork(Deadline deadline) { impl_->endpoint.prepare_fork(deadline); }

void MockTransport::do_after_fork(bool in_child) { impl_->endpoint.after_fork(in_child); }

nlohmann::json MockTransport::do_health() const {
  nlohmann::json out = impl_->endpoint.health();
  MutexLock lock(impl_->mutex);
  out["connected"] = !impl_->disconnected;
  out["publish_calls"] = impl_->total_publish_calls;
  out["dropped_by_fault"] = impl_->dropped;
  out["duplicated_by_fault"] = impl_->duplicated;
  out["redelivered_by_fault"] = impl_->redelivered;
  out["failed_by_fault"] = impl_->failed_by_fault;
  out["refused_disconnected"] = impl_->refused_disconnected;
  return out;
}

MockOptions mock_options_from_config(const TransportConfig& config) {
  MockOptions options;
  loopback::EndpointOptions o{"mock",  "default", true, options.max_pending, options.capabilities.acknowledgements,
                              options.ack_wait, options.max_deliveries};
  loopback::apply_config(config, "mock", o);
  options.broker = o.broker;
  options.inline_delivery = o.inline_delivery;
  options.max_pending = o.max_pending;
  if (o.acknowledgements) options.capabilities = kMemoryAckCapabilities;
  options.ack_wait = o.ack_wait;
  options.max_deliveries = o.max_deliveries;
  return options;
}

}  // namespace notifications

// Linking notifications::mock (part of notifications::core) registers the scheme before main();
// the target's link options keep this object in a static link.
extern "C" int notifications_mock_registered;
int notifications_mock_registered = [] {
  notifications::register_transport("mock", [](const notifications::TransportConfig& config)
                                                -> std::unique_ptr<notifications::Transport> {
    return std::make_unique<notifications::MockTransport>(notifications::mock_options_from_config(config));
  });
  return 1;
}();
