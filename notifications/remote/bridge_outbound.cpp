// Bridge, outbound: instrumenting threads -> outbound queue -> sender thread -> transport.
#include "remote/bridge_impl.hpp"

namespace notifications {

using namespace bridge_internal;

void Bridge::Impl::forward(std::size_t pattern_index, const Event& event) {
  if (event.remote()) return;  // remote events are never forwarded again
  if (in_forked_child()) {     // before any lock: the queue's may be held by a thread that is gone
    refuse_in_forked_child();
    return;
  }
  // With several forward patterns, the first matching one forwards the event.
  for (std::size_t i = 0; i < pattern_index; ++i) {
    if (forward_patterns[i].matches(event.name())) return;
  }
  if (!accepting.load(std::memory_order_acquire)) {
    drop(Drop::after_shutdown, event.name());
    return;
  }
  detail::OutgoingEvent outgoing;
  try {
    outgoing = detail::outgoing_from_event(event);
  } catch (const std::exception& e) {
    // Accepted and lost at once, so that accepted = sent + dropped keeps holding for flush().
    counters.accepted.fetch_add(1, std::memory_order_relaxed);
    drop(Drop::encode_failed, event.name(), 1, e.what());
    return;
  }
  if (const std::size_t limit = transport->max_message_bytes();
      limit != 0 && outgoing.name().size() + outgoing.payload().size() > limit) {
    // Counted as accepted and dropped at once, like an encoding failure: never retried.
    counters.accepted.fetch_add(1, std::memory_order_relaxed);
    drop(Drop::too_large, event.name(), 1,
         "payload of " + std::to_string(outgoing.payload().size()) + " bytes; the transport carries at most " +
             std::to_string(limit) + " bytes per message");
    return;
  }
  using Queue = Outbox;
  std::optional<detail::OutgoingEvent> evicted;
  Queue::Push result = Queue::Push::dropped_newest;
  std::string_view why;
  // Block policy, once saturated (a wait timed out and the transport has accepted nothing since):
  // no further call waits, so an outage costs the application at most one block_timeout.
  OverflowPolicy policy = config.overflow;
  const bool saturated_now = policy == OverflowPolicy::block && saturated.load(std::memory_order_relaxed);
  if (saturated_now) policy = OverflowPolicy::drop_newest;
  bool waited = false;
  try {
    result = outbox->push(std::move(outgoing), policy, config.block_timeout, &evicted, &waited);
  } catch (const std::bad_alloc&) {  // no room for a new queue segment: refused, nothing else changed
    why = "out of memory";
  } catch (const std::exception& e) {  // a custom outbox could not store it: refused likewise
    why = e.what();
  }
  if (waited) counters.blocked.fetch_add(1, std::memory_order_relaxed);
  if (waited && result == Queue::Push::dropped_newest && !saturated.exchange(true)) {
    why = "waited block_timeout_ms for room; until the transport accepts events again, no call waits";
  } else if (saturated_now && result == Queue::Push::dropped_newest) {
    why = "queue saturated: the transport has accepted nothing since a wait timed out";
  }
  switch (result) {
    case Queue::Push::accepted:
      counters.accepted.fetch_add(1, std::memory_order_relaxed);
      break;
    case Queue::Push::accepted_dropped_oldest:
      counters.accepted.fetch_add(1, std::memory_order_relaxed);
      drop(Drop::queue_evicted, evicted ? evicted->name() : std::string_view("?"));
      break;
    case Queue::Push::dropped_newest:
      drop(Drop::queue_full, event.name(), 1, why);
      break;
    case Queue::Push::closed:
      drop(Drop::after_shutdown, event.name());
      break;
  }
}

std::chrono::milliseconds Bridge::Impl::backoff(int attempt, std::mt19937& rng) const {
  double wait = static_cast<double>(config.retry.initial.count());
  for (int i = 1; i < attempt && wait < static_cast<double>(config.retry.max.count()); ++i) {
    wait *= config.retry.multiplier;
  }
  wait = std::min(wait, static_cast<double>(config.retry.max.count()));
  std::uniform_real_distribution<double> jitter(1.0 - config.retry.jitter, 1.0 + config.retry.jitter);
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::max(1.0, wait * jitter(rng))));
}

bool Bridge::Impl::sleep_or_deadline(std::chrono::milliseconds duration) {
  const auto wake = Clock::now() + duration;
  std::unique_lock lock(progress_mutex);
  while (!past_deadline()) {
    // shutdown() sets the deadline and then signals progress: the wait is cut to it.
    const std::int64_t ns = deadline_ns.load(std::memory_order_acquire);
    auto until = wake;
    if (ns != 0) until = std::min(until, Clock::time_point(Clock::duration(ns)));
    if (Clock::now() >= until) break;
    progress.wait_until(lock, until, [&] { return past_deadline() || deadline_ns.load(std::memory_order_acquire) != ns; });
  }
  return past_deadline();
}

// The sender thread's state between batches: takes from the outbox, encodes, publishes, settles.
// A transient failure releases the rest of the batch and backs off; the next take() returns the
// same items in the same order, with the sequence numbers they were given the first time.
class Bridge::Impl::Sender {
 public:
  explicit Sender(Impl& impl) : impl_(impl), rng_(std::random_device{}()) {}

  // Sends `batch` (taken from the outbox): every item ends settled, or released for a retry.
  void send(std::span<detail::OutgoingEvent> batch) {
    if (impl_.past_deadline()) {
      for (const auto& event : batch) impl_.drop(Drop::shutdown_deadline, event.name());
      impl_.outbox->settle(batch.size(), Outbox::Settled::dropped, kDropNames[static_cast<int>(Drop::shutdown_deadline)]);
      return;
    }
    std::size_t next = 0;  // the first item not yet settled
    while (next < batch.size()) {
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
        impl_.outbox->release();
        return;
      }
      next = end;
      if (failed) {
        impl_.drop(*failed, batch[next].name(), 1, why);
        impl_.outbox->settle(1, Outbox::Settled::dropped, kDropNames[static_cast<int>(*failed)]);
        ++next;
      }
    }
    for (auto& message : messages_) {
      if (message.body.capacity() > Impl::kKeptBodyBytes) std::string().swap(message.body);  // after a rare large event
    }
  }

  std::mt19937& rng() { return rng_; }

 private:
  // Encodes `event` into messages_[slot]; false (with the reason) when it cannot be sent.
  bool encode(detail::OutgoingEvent& event, std::size_t slot, std::optional<Drop>& failed, std::string& why) {
    auto stream = streams_.find(event.name());
    if (stream == streams_.end()) {
      try {
        stream = streams_.emplace(std::string(event.name()), Stream{subject_for(impl_.config.prefix, std::string(event.name())), 0}).first;
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
      detail::encode_outgoing(event, impl_.config.app, impl_.hooks.instance_id, sequence, stream->second.subject,
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
      for (std::size_t i = offset; i < messages.size(); ++i) impl_.drop(reason, names_[i], 1, why);
      impl_.outbox->settle(messages.size() - offset, Outbox::Settled::dropped, kDropNames[static_cast<int>(reason)]);
      offset = messages.size();
      attempt_ = 0;
    };
    while (offset < messages.size()) {
      const PublishResult result = impl_.transport->publish(messages.subspan(offset));
      const std::size_t published = std::min(result.published, messages.size() - offset);
      if (published > 0) {
        offset += published;
        impl_.saturated.store(false, std::memory_order_relaxed);  // the transport takes events again
        attempt_ = 0;  // progress: back off from the start again
        // Settled before counted as sent: once flush() returns, the outbox no longer holds them.
        try {
          impl_.outbox->settle(published, Outbox::Settled::confirmed);
        } catch (...) {
          impl_.note_sent(published);
          throw;
        }
        impl_.note_sent(published);
      }
      if (offset == messages.size()) break;
      impl_.counters.failed.fetch_add(1, std::memory_order_relaxed);
      impl_.set_error(result.error);
      if (!result.transient) {
        // The first message was refused for good; the rest may still go (a message too large for
        // the server does not make the next one fail).
        const std::size_t limit = impl_.transport->max_message_bytes();
        const bool too_large = limit != 0 && messages[offset].body.size() > limit;
        const Drop reason = too_large ? Drop::too_large : Drop::publish_rejected;
        impl_.drop(reason, names_[offset], 1, result.error);
        impl_.outbox->settle(1, Outbox::Settled::dropped, kDropNames[static_cast<int>(reason)]);
        ++offset;
        attempt_ = 0;
        continue;
      }
      ++attempt_;
      if (impl_.config.retry.max_attempts > 0 && attempt_ >= impl_.config.retry.max_attempts) {
        drop_rest(Drop::retries_exhausted, result.error);
        break;
      }
      if (impl_.past_deadline() || impl_.sleep_or_deadline(impl_.backoff(attempt_, rng_))) {
        drop_rest(Drop::shutdown_deadline, result.error);
        break;
      }
      impl_.counters.retried.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    return true;
  }

  Impl& impl_;
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

void Bridge::Impl::run_sender() {
  detail::name_this_thread("ntf-sender");
  detail::mark_bus_thread();
  struct Done {  // tells shutdown() this thread returned, however it leaves
    Impl& impl;
    ~Done() {
      {
        std::lock_guard lock(impl.progress_mutex);
        impl.sender_done = true;
      }
      impl.progress.notify_all();
    }
  } done{*this};
  auto last_confirm = Clock::now() - kConfirmInterval;
  Sender sender(*this);
  while (true) {
    park_if_requested();
    std::span<detail::OutgoingEvent> batch;
    try {
      if (!outbox->take(batch, config.batch_size, Clock::now() + std::chrono::milliseconds(100))) {
        break;  // closed and nothing left
      }
    } catch (const std::exception& e) {  // a custom outbox failed: nothing was taken
      set_error(std::string("outbox: take failed: ") + e.what());
      if (past_deadline() || sleep_or_deadline(backoff(1, sender.rng()))) break;
      continue;
    }
    // What was sent is confirmed by a transport flush once the queue is idle, at most every
    // kConfirmInterval (a flush may wait for a round trip, or for a slow in-process subscriber:
    // never while events wait); nothing is asked once everything sent is confirmed.
    if (batch.empty() && !past_deadline() && Clock::now() - last_confirm >= kConfirmInterval &&
        counters.confirmed.load(std::memory_order_relaxed) < counters.sent.load(std::memory_order_relaxed)) {
      last_confirm = Clock::now();
      confirm(last_confirm + kConfirmInterval);
    }
    if (batch.empty()) continue;
    try {
      sender.send(batch);
    } catch (const std::exception& e) {
      // A custom outbox's settle() or release() failed: what it did not settle, the next take()
      // hands out again (promise 3), so an event may be sent twice but is not lost.
      set_error(std::string("outbox: ") + e.what());
    }
  }
  // Anything left (deadline passed while retrying, then closed) is counted.
  try {
    for (const auto& event : outbox->drain()) drop(Drop::shutdown_deadline, event.name());
  } catch (const std::exception& e) {
    set_error(std::string("outbox: drain failed: ") + e.what());
  }
}

}  // namespace notifications
