// Bridge, outbound: instrumenting threads -> outbox -> sender thread -> transport (see
// bridge_outbound.hpp).
#include "remote/bridge_outbound.hpp"

#include "remote/bridge_impl.hpp"

namespace notifications {

namespace {
std::atomic<DurableOutboxFactory> durable_outbox_factory{nullptr};
}  // namespace

void register_durable_outbox(DurableOutboxFactory factory) { durable_outbox_factory.store(factory); }

}  // namespace notifications

namespace notifications::bridge_internal {

namespace {

bool needs_file(const BridgeConfig& config) {
  return config.durability != Durability::none || config.overflow == OverflowPolicy::spill;
}

// The outbox a Bridge keeps its events in: the given one, the durable one the configuration asks
// for, or memory.
std::shared_ptr<Outbox> choose_outbox(const BridgeConfig& config, std::shared_ptr<Outbox> given,
                                      std::size_t segment_items) {
  const std::string what = config.durability != Durability::none
                               ? "durability \"" + to_string(config.durability) + "\""
                               : std::string("overflow \"spill\"");
  if (given) {
    if (config.overflow == OverflowPolicy::spill && !given->persistent()) {
      throw ConfigError("overflow: \"spill\" needs an outbox that keeps events in a file; BridgeHooks::outbox (" +
                        given->description() + ") does not");
    }
    return given;
  }
  if (!needs_file(config)) return make_memory_outbox(config.queue_capacity, config.queue_max_bytes, segment_items);
  const DurableOutboxFactory factory = durable_outbox_factory.load();
  if (factory == nullptr) {
    throw ConfigError(what + " keeps events in a SQLite file, which needs the notifications::sqlite component: "
                      "find_package(notifications CONFIG REQUIRED COMPONENTS sqlite) and "
                      "target_link_libraries(<your target> PRIVATE notifications::sqlite)");
  }
  return factory(config);
}

}  // namespace

Outbound::Outbound(OutboundHost& host, const BridgeConfig& config, std::shared_ptr<Transport> transport,
                   const std::string& instance_id, std::shared_ptr<Outbox> outbox)
    : host_(host),
      config_(config),
      transport_(std::move(transport)),
      instance_id_(instance_id),
      outbox_(choose_outbox(config, std::move(outbox), std::min<std::size_t>(config.batch_size, kSegmentItems))),
      outbox_capacity_(outbox_->stats().capacity),
      redactor_(config.redact),
      confirm_before_settle_(outbox_->persistent() && !transport_->capabilities().persistent),
      linger_(std::min<std::chrono::microseconds>(transport_->capabilities().write_delay / 4, kMaxLinger)) {
  for (const std::string& pattern : config.forward) patterns_.emplace_back(pattern);
  if (outbox_->persistent()) {
    // What an earlier run left in the file counts as accepted by this one: flush() waits for it,
    // and accepted = sent + dropped + kept keeps holding.
    const std::size_t replayed = outbox_->stats().depth;
    counters_.replayed.store(replayed);
    counters_.accepted.store(replayed);
  }
}

void Outbound::forward(std::size_t pattern_index, const Event& event) {
  if (event.remote()) return;  // remote events are never forwarded again
  if (host_.in_forked_child()) {  // before any lock: the outbox's may be held by a thread that is gone
    host_.refuse_in_forked_child();
    return;
  }
  // With several forward patterns, the first matching one forwards the event.
  for (std::size_t i = 0; i < pattern_index; ++i) {
    if (patterns_[i].matches(event.name())) return;
  }
  if (!accepting_.load(std::memory_order_acquire)) {
    host_.drop(Drop::after_shutdown, event.name());
    return;
  }
  detail::OutgoingEvent outgoing;
  try {
    // Redacted before it is serialised: the outbox, the wire and every message quoting the
    // payload see only the redacted form; the context and tags too. No copy when no rule matches.
    std::optional<nlohmann::json> redacted;
    std::optional<nlohmann::json> context;
    std::optional<nlohmann::json> tags;
    if (!redactor_.empty()) {
      redacted = redactor_.redacted(event.payload());
      context = redactor_.redacted(event.context());
      tags = redactor_.redacted(event.tags());
    }
    if (redacted || context || tags) {
      outgoing = detail::outgoing_from_event(event, redacted ? *redacted : event.payload(),
                                             context ? *context : event.context(), tags ? *tags : event.tags());
    } else {
      outgoing = detail::outgoing_from_event(event);
    }
  } catch (const std::exception& e) {
    // Accepted and lost at once, so that accepted = sent + dropped keeps holding for flush().
    counters_.accepted.fetch_add(1, std::memory_order_relaxed);
    host_.drop(Drop::encode_failed, event.name(), 1, e.what());
    return;
  }
  if (const std::size_t limit = transport_->max_message_bytes();
      limit != 0 && outgoing.name().size() + outgoing.payload().size() + outgoing.attributes().size() > limit) {
    // Counted as accepted and dropped at once, like an encoding failure: never retried.
    counters_.accepted.fetch_add(1, std::memory_order_relaxed);
    host_.drop(Drop::too_large, event.name(), 1,
         "payload of " + std::to_string(outgoing.payload().size() + outgoing.attributes().size()) +
             " bytes (with its context and tags); the transport carries at most " +
             std::to_string(limit) + " bytes per message");
    return;
  }
  using Queue = Outbox;
  std::optional<detail::OutgoingEvent> evicted;
  Queue::Push result = Queue::Push::dropped_newest;
  std::string_view why;
  // Block policy, once saturated (a wait timed out and the transport has accepted nothing since):
  // no further call waits, so an outage costs the application at most one block_timeout.
  OverflowPolicy policy = config_.overflow;
  const bool saturated_now = policy == OverflowPolicy::block && saturated_.load(std::memory_order_relaxed);
  if (saturated_now) policy = OverflowPolicy::drop_newest;
  bool waited = false;
  try {
    result = outbox_->push(std::move(outgoing), policy, config_.block_timeout, &evicted, &waited);
  } catch (const std::bad_alloc&) {  // no room for a new queue segment: refused, nothing else changed
    why = "out of memory";
  } catch (const OutboxError& e) {  // a durable outbox's file refused it: refused, nothing else changed
    host_.drop(Drop::outbox_failed, event.name(), 1, e.what());
    return;
  } catch (const std::exception& e) {  // a custom outbox could not store it: refused likewise
    why = e.what();
  }
  if (waited) counters_.blocked.fetch_add(1, std::memory_order_relaxed);
  if (waited && result == Queue::Push::dropped_newest && !saturated_.exchange(true)) {
    why = "waited block_timeout_ms for room; until the transport accepts events again, no call waits";
  } else if (saturated_now && result == Queue::Push::dropped_newest) {
    why = "queue saturated: the transport has accepted nothing since a wait timed out";
  }
  switch (result) {
    case Queue::Push::accepted:
      counters_.accepted.fetch_add(1, std::memory_order_relaxed);
      break;
    case Queue::Push::accepted_dropped_oldest:
      counters_.accepted.fetch_add(1, std::memory_order_relaxed);
      host_.drop(Drop::queue_evicted, evicted ? evicted->name() : std::string_view("?"));
      break;
    case Queue::Push::dropped_newest:
      host_.drop(Drop::queue_full, event.name(), 1, why);
      break;
    case Queue::Push::closed:
      host_.drop(Drop::after_shutdown, event.name());
      break;
  }
}

std::chrono::milliseconds Outbound::backoff(int attempt, std::mt19937& rng) const {
  double wait = static_cast<double>(config_.retry.initial.count());
  for (int i = 1; i < attempt && wait < static_cast<double>(config_.retry.max.count()); ++i) {
    wait *= config_.retry.multiplier;
  }
  wait = std::min(wait, static_cast<double>(config_.retry.max.count()));
  std::uniform_real_distribution<double> jitter(1.0 - config_.retry.jitter, 1.0 + config_.retry.jitter);
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::max(1.0, wait * jitter(rng))));
}

// The sender thread's state between batches: takes from the outbox, encodes, publishes, settles.
// A transient failure releases the rest of the batch and backs off; the next take() returns the
// same items in the same order, with the sequence numbers they were given the first time.
class Outbound::Sender {
 public:
  explicit Sender(Outbound& outbound) : out_(outbound), rng_(std::random_device{}()) {}

  // Sends `batch` (taken from the outbox): every item ends settled, or released for a retry.
  void send(std::span<detail::OutgoingEvent> batch) {
    if (out_.host_.past_deadline()) {
      if (out_.outbox_->persistent()) {  // kept in the file for the next start
        out_.outbox_->release();
        return;
      }
      for (const auto& event : batch) out_.host_.drop(Drop::shutdown_deadline, event.name());
      out_.outbox_->settle(batch.size(), Outbox::Settled::dropped, kDropNames[static_cast<int>(Drop::shutdown_deadline)]);
      return;
    }
    out_.oldest_unsent_.store(batch.empty() ? 0 : ended_at(batch[0]), std::memory_order_relaxed);
    batch_ = batch;
    std::size_t next = 0;  // the first item not yet settled
    while (next < batch.size()) {
      base_ = next;
      // Encode a run: up to the first item that cannot be encoded (settled as dropped after the
      // run, so that items leave in order).
      std::size_t count = 0;
      std::size_t end = next;
      std::optional<Drop> failed;
      std::string why;
      for (; end < batch.size(); ++end) {
        if (!encode(batch[end], count, failed, why)) break;
        ++count;
      }
      if (!publish(std::span<const Message>(messages_).first(count))) {
        out_.outbox_->release();
        return;
      }
      next = end;
      if (failed) {
        out_.host_.drop(*failed, batch[next].name(), 1, why);
        out_.outbox_->settle(1, Outbox::Settled::dropped, kDropNames[static_cast<int>(*failed)]);
        ++next;
        out_.oldest_unsent_.store(next < batch.size() ? ended_at(batch[next]) : 0, std::memory_order_relaxed);
      }
    }
    out_.oldest_unsent_.store(0, std::memory_order_relaxed);  // all settled
    for (auto& message : messages_) {
      if (message.body.capacity() > kKeptBodyBytes) std::string().swap(message.body);  // after a rare large event
    }
  }

  std::mt19937& rng() { return rng_; }

 private:
  // A durable outbox over a transport that is not persistent: what publish() accepted counts as
  // confirmed only once a flush covers it (NATS: a round trip with the server).
  bool confirmed_by_flush() {
    return out_.transport_->flush(Clock::now() + kConfirmTimeout);
  }

  // Encodes `event` into messages_[slot]; false (with the reason) when it cannot be sent.
  bool encode(detail::OutgoingEvent& event, std::size_t slot, std::optional<Drop>& failed, std::string& why) {
    auto stream = streams_.find(event.name());
    if (stream == streams_.end()) {
      try {
        stream = streams_.emplace(std::string(event.name()), Stream{subject_for(out_.config_.prefix, std::string(event.name())), 0}).first;
      } catch (const std::exception& e) {
        failed = Drop::invalid_subject;
        why = e.what();
        return false;
      }
    }
    if (slot == messages_.size()) {
      messages_.emplace_back();
      names_.emplace_back();
    }
    const std::uint64_t sequence = event.sequence != 0 ? event.sequence : stream->second.sequence + 1;
    try {
      detail::encode_outgoing(event, out_.config_.app, out_.instance_id_, sequence, stream->second.subject,
                              messages_[slot]);
    } catch (const std::exception& e) {
      failed = Drop::encode_failed;
      why = e.what();
      return false;
    }
    if (event.sequence == 0) {
      event.sequence = sequence;
      stream->second.sequence = sequence;
    }
    names_[slot].assign(event.name());
    return true;
  }

  // Publishes `messages` in order, settling what the transport confirmed and what it refused for
  // good. False after a transient failure that is to be retried (the caller releases the rest).
  bool publish(std::span<const Message> messages) {
    std::size_t offset = 0;
    auto drop_rest = [&](Drop reason, std::string_view why) {
      if (out_.outbox_->persistent()) {  // never dropped: released, kept in the file
        out_.outbox_->release();
        offset = messages.size();
        return;
      }
      for (std::size_t i = offset; i < messages.size(); ++i) out_.host_.drop(reason, names_[i], 1, why);
      out_.outbox_->settle(messages.size() - offset, Outbox::Settled::dropped, kDropNames[static_cast<int>(reason)]);
      offset = messages.size();
      attempt_ = 0;
    };
    while (offset < messages.size()) {
      const PublishResult result = out_.transport_->publish(messages.subspan(offset));
      const std::size_t published = std::min(result.published, messages.size() - offset);
      if (published > 0 && out_.confirm_before_settle_ && !confirmed_by_flush()) {
        // Handed over but not confirmed: kept, and sent again (same Message::id) after a backoff.
        out_.counters_.failed.fetch_add(1, std::memory_order_relaxed);
        out_.host_.set_error("the transport did not confirm what was published (flush failed); the outbox sends it again");
        ++attempt_;
        if (!out_.host_.past_deadline() && !out_.host_.sleep_or_deadline(out_.backoff(attempt_, rng_))) {
          out_.counters_.retried.fetch_add(1, std::memory_order_relaxed);
        }
        return false;
      }
      if (published > 0) {
        if (out_.observer_ != nullptr) observe_published(offset, published);
        offset += published;
        out_.oldest_unsent_.store(
            base_ + offset < batch_.size() ? ended_at(batch_[base_ + offset]) : 0,
            std::memory_order_relaxed);  // before they count as sent: flush() then sees lag 0
        out_.saturated_.store(false, std::memory_order_relaxed);  // the transport takes events again
        attempt_ = 0;  // progress: back off from the start again
        // Settled before counted as sent: once flush() returns, the outbox no longer holds them.
        try {
          out_.outbox_->settle(published, Outbox::Settled::confirmed);
        } catch (...) {
          out_.note_sent(published);
          throw;
        }
        out_.note_sent(published);
        if (out_.confirm_before_settle_) out_.raise_confirmed(out_.counters_.sent.load());  // flushed before settled
      }
      if (offset == messages.size()) break;
      out_.counters_.failed.fetch_add(1, std::memory_order_relaxed);
      out_.host_.set_error(result.error);
      if (!result.transient) {
        // The first message was refused for good; the rest may still go (a message too large for
        // the server does not make the next one fail).
        const std::size_t limit = out_.transport_->max_message_bytes();
        const bool too_large = limit != 0 && messages[offset].body.size() > limit;
        const Drop reason = too_large ? Drop::too_large : Drop::publish_rejected;
        out_.host_.drop(reason, names_[offset], 1, result.error);
        out_.outbox_->settle(1, Outbox::Settled::dropped, kDropNames[static_cast<int>(reason)]);
        ++offset;
        attempt_ = 0;
        continue;
      }
      ++attempt_;
      if (out_.config_.retry.max_attempts > 0 && attempt_ >= out_.config_.retry.max_attempts &&
          !out_.outbox_->persistent()) {
        drop_rest(Drop::retries_exhausted, result.error);
        break;
      }
      if (out_.host_.past_deadline() || out_.host_.sleep_or_deadline(out_.backoff(attempt_, rng_))) {
        drop_rest(Drop::shutdown_deadline, result.error);
        break;
      }
      out_.counters_.retried.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  // When `event`'s instrumented block ended (its time plus its duration), in system clock ticks.
  static std::int64_t ended_at(const detail::OutgoingEvent& event) {
    return std::chrono::time_point_cast<std::chrono::system_clock::duration>(event.time + event.duration)
        .time_since_epoch()
        .count();
  }

  // Tells the observer that messages [first, first + count) of the run being published (batch_
  // items from base_) were published now.
  void observe_published(std::size_t first, std::size_t count) {
    const auto now = std::chrono::system_clock::now();
    for (std::size_t i = base_ + first; i < base_ + first + count; ++i) {
      out_.observer_->published(std::chrono::duration_cast<std::chrono::nanoseconds>(
          now - (batch_[i].time + batch_[i].duration)));
    }
  }

  Outbound& out_;
  std::span<detail::OutgoingEvent> batch_;  // the batch send() works on
  std::size_t base_ = 0;                    // its item in messages_[0]
  std::mt19937 rng_;
  int attempt_ = 0;  // transient failures in a row, across the takes that retry them
  // Messages and names are overwritten in place batch after batch: their buffers are reused.
  std::vector<Message> messages_;
  std::vector<std::string> names_;
  // By event name: its subject (validated once) and the last sequence number given on it.
  struct Stream {
    std::string subject;
    std::uint64_t sequence = 0;
  };
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view name) const noexcept { return std::hash<std::string_view>{}(name); }
  };
  std::unordered_map<std::string, Stream, NameHash, std::equal_to<>> streams_;
};

// Lingering: a transport that holds writes back for a while (write_delay) sends what comes in
// that while in one write anyway. When batches follow each other closely (the previous one ended
// at most two lingers before this one was taken: a steady stream, not a lone event), the sender
// waits linger_ after sending a batch that did not fill batch_size and left the outbox empty
// (an outbox may hand out less than it holds), outside the outbox. Events
// that come meanwhile are taken together, and the instrumenting threads that push them wake
// nobody: at steady rates the sender wakes once per linger instead of once per event, and
// instrument() pays no futex wake-up. A lone event is sent at once; a batch that fills
// batch_size is followed by the next take at once.
void Outbound::run() {
  auto last_confirm = Clock::now() - kConfirmInterval;
  auto last_batch_end = Clock::now() - std::chrono::hours(1);  // no batch yet
  Sender sender(*this);
  const bool persistent = outbox_->persistent();
  while (true) {
    host_.park_if_requested();
    // Past the deadline a durable outbox keeps the rest for the next start.
    if (persistent && host_.past_deadline()) break;
    std::span<OutboxEvent> batch;
    try {
      if (!outbox_->take(batch, config_.batch_size, take_until(last_confirm))) {
        break;  // closed and nothing left
      }
    } catch (const std::exception& e) {  // a custom outbox failed: nothing was taken
      host_.set_error(std::string("outbox: take failed: ") + e.what());
      if (host_.past_deadline() || host_.sleep_or_deadline(backoff(1, sender.rng()))) break;
      continue;
    }
    // What was sent is confirmed by a transport flush once the outbox is idle, at most every
    // kConfirmInterval (a flush may wait for a round trip, or for a slow in-process subscriber:
    // never while events wait); nothing is asked once everything sent is confirmed.
    if (batch.empty() && !host_.past_deadline() && Clock::now() - last_confirm >= kConfirmInterval &&
        counters_.confirmed.load(std::memory_order_relaxed) < counters_.sent.load(std::memory_order_relaxed)) {
      last_confirm = Clock::now();
      confirm(last_confirm + kConfirmInterval);
    }
    if (batch.empty()) {
      oldest_unsent_.store(0, std::memory_order_relaxed);
      continue;
    }
    const std::size_t taken = batch.size();
    const bool streaming = linger_.count() > 0 && Clock::now() - last_batch_end <= 2 * linger_;
    try {
      sender.send(batch);
    } catch (const std::exception& e) {
      // A custom outbox's settle() or release() failed: what it did not settle, the next take()
      // hands out again (promise 3), so an event may be sent twice but is not lost.
      host_.set_error(std::string("outbox: ") + e.what());
    }
    last_batch_end = Clock::now();
    if (streaming && taken < config_.batch_size && outbox_->depth_unlocked() == 0) host_.linger(linger_);
  }
  drop_remaining();  // anything left (deadline passed while retrying, then closed)
}

// Idle, the sender wakes only for a reason: once the outbox has been quiet kLull, to confirm
// what was sent and is unconfirmed, at most every kConfirmInterval; never when everything sent is
// confirmed (a pause request wakes the outbox, shutdown closes it). An outbox that cannot be
// woken is asked again every kLull.
Clock::time_point Outbound::take_until(Clock::time_point last_confirm) const {
  constexpr auto kLull = std::chrono::milliseconds(100);
  const auto now = Clock::now();
  if (!outbox_->wakes()) return now + kLull;
  if (counters_.confirmed.load(std::memory_order_relaxed) < counters_.sent.load(std::memory_order_relaxed)) {
    return std::max(now + kLull, last_confirm + kConfirmInterval);
  }
  return Clock::time_point::max();
}

void Outbound::close() { outbox_->close(); }

void Outbound::drop_remaining() {
  oldest_unsent_.store(0, std::memory_order_relaxed);  // the sender stopped: no lag to report any more
  try {
    for (const auto& event : outbox_->drain()) host_.drop(Drop::shutdown_deadline, event.name());
    if (outbox_->persistent()) {
      const OutboxStats stats = outbox_->stats();
      kept_.store(stats.depth + stats.in_flight);
      if (stats.depth + stats.in_flight > 0) {
        detail::log(detail::LogLevel::info, "notifications bridge: {} events kept in the outbox ({}) for the next start",
                    stats.depth + stats.in_flight, outbox_->description());
      }
    }
  } catch (const std::exception& e) {
    host_.set_error(std::string("outbox: drain failed: ") + e.what());
  }
}

void Outbound::note_sent(std::uint64_t count) {
  counters_.sent.fetch_add(count, std::memory_order_relaxed);
  host_.signal_progress();
}

bool Outbound::confirm(Deadline deadline) {
  const std::uint64_t sent_before = counters_.sent.load();
  if (!transport_->flush(deadline)) return false;
  raise_confirmed(sent_before);
  return true;
}

void Outbound::raise_confirmed(std::uint64_t to) {
  std::uint64_t current = counters_.confirmed.load();
  while (current < to && !counters_.confirmed.compare_exchange_weak(current, to)) {
  }
}

void Outbound::reset_in_forked_child() {
  outbox_->reset_in_forked_child();
  for (auto* counter : {&counters_.accepted, &counters_.sent, &counters_.confirmed, &counters_.blocked,
                        &counters_.failed, &counters_.retried, &counters_.replayed}) {
    counter->store(0);
  }
  saturated_.store(false, std::memory_order_relaxed);
  oldest_unsent_.store(0, std::memory_order_relaxed);
}

std::chrono::milliseconds Outbound::lag() const noexcept {
  const std::int64_t oldest = oldest_unsent_.load(std::memory_order_relaxed);
  if (oldest == 0) return std::chrono::milliseconds(0);
  const auto age = std::chrono::system_clock::now() -
                   std::chrono::system_clock::time_point(std::chrono::system_clock::duration(oldest));
  return std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(age));
}

nlohmann::json Outbound::queue_health(bool forked_child) const {
  if (forked_child) return {{"depth", outbox_->depth_unlocked()}, {"capacity", outbox_capacity_}};
  const OutboxStats queue = outbox_->stats();
  nlohmann::json health = {{"depth", queue.depth},        {"in_flight", queue.in_flight},
                            {"capacity", queue.capacity},  {"bytes", queue.bytes},
                            {"max_bytes", queue.max_bytes}, {"overflow", to_string(config_.overflow)},
                            {"saturated", saturated_.load()}, {"outbox", outbox_->description()},
                            {"lag_ms", lag().count()}};
  if (outbox_->persistent()) {
    health["durability"] = to_string(config_.durability);
    health["stored"] = queue.stored;
    health["spilled"] = queue.spilled;
    health["store_failures"] = queue.store_failures;
  }
  return health;
}

}  // namespace notifications::bridge_internal
