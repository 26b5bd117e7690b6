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
  using Queue = decltype(outbound);
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
    result = outbound.push(std::move(outgoing), policy, config.block_timeout, &evicted, &waited);
  } catch (const std::bad_alloc&) {  // no room for a new queue segment: refused, nothing else changed
    why = "out of memory";
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

void Bridge::Impl::publish_in_order(std::span<const Message> messages, const std::vector<std::string>& names, std::mt19937& rng) {
  std::size_t offset = 0;
  int attempt = 0;
  auto drop_rest = [&](Drop reason, std::string_view why) {
    for (std::size_t i = offset; i < messages.size(); ++i) drop(reason, names[i], 1, why);
    offset = messages.size();
  };
  while (offset < messages.size()) {
    const PublishResult result = transport->publish(messages.subspan(offset));
    const std::size_t published = std::min(result.published, messages.size() - offset);
    offset += published;
    if (published > 0) saturated.store(false, std::memory_order_relaxed);  // the transport takes events again
    note_sent(published);
    if (offset == messages.size()) break;
    if (published > 0) attempt = 0;  // progress: back off from the start again
    counters.failed.fetch_add(1, std::memory_order_relaxed);
    set_error(result.error);
    if (!result.transient) {
      // The first message was refused for good; the rest may still go (a message too large for
      // the server does not make the next one fail).
      const std::size_t limit = transport->max_message_bytes();
      const Message& refused = messages[offset];
      const bool too_large = limit != 0 && refused.body.size() > limit;
      drop(too_large ? Drop::too_large : Drop::publish_rejected, names[offset], 1, result.error);
      ++offset;
      attempt = 0;
      continue;
    }
    ++attempt;
    if (config.retry.max_attempts > 0 && attempt >= config.retry.max_attempts) {
      drop_rest(Drop::retries_exhausted, result.error);
      break;
    }
    if (past_deadline() || sleep_or_deadline(backoff(attempt, rng))) {
      drop_rest(Drop::shutdown_deadline, result.error);
      break;
    }
    counters.retried.fetch_add(1, std::memory_order_relaxed);
  }
}

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
  std::mt19937 rng(std::random_device{}());
  decltype(outbound)::Batch batch;
  // Messages and names are overwritten in place batch after batch: their buffers are reused.
  std::vector<Message> messages;
  std::vector<std::string> names;
  // By event name: its subject (validated once) and the last sequence number sent on it.
  struct Stream {
    std::string subject;
    std::uint64_t sequence = 0;
  };
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view name) const noexcept { return std::hash<std::string_view>{}(name); }
  };
  std::unordered_map<std::string, Stream, NameHash, std::equal_to<>> streams;
  batch.reserve(config.batch_size);
  while (true) {
    park_if_requested();
    if (!outbound.pop_batch(batch, config.batch_size, Clock::now() + std::chrono::milliseconds(100))) {
      break;  // closed and empty
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
    if (past_deadline()) {
      for (const auto& event : batch) drop(Drop::shutdown_deadline, event.name());
      continue;
    }
    std::size_t count = 0;
    for (const auto& event : batch) {
      auto stream = streams.find(event.name());
      if (stream == streams.end()) {
        try {
          stream = streams.emplace(std::string(event.name()), Stream{subject_for(config.prefix, std::string(event.name())), 0}).first;
        } catch (const std::exception& e) {
          drop(Drop::invalid_subject, event.name(), 1, e.what());
          continue;
        }
      }
      if (count == messages.size()) {
        messages.emplace_back();
        names.emplace_back();
      }
      try {
        detail::encode_outgoing(event, config.app, hooks.instance_id, stream->second.sequence + 1,
                                stream->second.subject, messages[count]);
      } catch (const std::exception& e) {
        drop(Drop::encode_failed, event.name(), 1, e.what());
        continue;
      }
      ++stream->second.sequence;
      names[count].assign(event.name());
      ++count;
    }
    publish_in_order(std::span<const Message>(messages).first(count), names, rng);
    for (std::size_t i = 0; i < count; ++i) {
      if (messages[i].body.capacity() > kKeptBodyBytes) std::string().swap(messages[i].body);  // after a rare large event
    }
  }
  // Anything left (deadline passed while retrying, then closed) is counted.
  for (const auto& event : outbound.take_all()) drop(Drop::shutdown_deadline, event.name());
}

}  // namespace notifications
