// Bridge, inbound: transport callback -> inbound queue -> dispatcher thread -> local notifier.
// The Inbound part (remote/bridge_inbound.hpp) owns the state; Bridge::Impl's inbound members
// below glue it to the notifier, the hooks, logging and drop accounting.
#include "remote/bridge_inbound.hpp"

#include "remote/bridge_impl.hpp"
#include "remote/envelope_plain.hpp"
#include "remote/payload_redaction.hpp"

namespace notifications {

using namespace bridge_internal;

// ---- Inbound -----------------------------------------------------------------------------------

std::chrono::milliseconds bridge_internal::redelivery_window(const RedeliveryPolicy& policy,
                                                            const TransportCapabilities& capabilities) {
  if (policy.window.count() > 0) return policy.window;
  return std::max<std::chrono::milliseconds>(std::chrono::minutes(2), capabilities.dedupe_window);
}

Inbound::Inbound(const BridgeConfig& config, const TransportCapabilities& capabilities,
                 std::chrono::microseconds idle_spin, std::size_t batch)
    // A transport that batches its writes (write_delay) was chosen for throughput: the
    // dispatcher polls its empty queue only while that pays.
    : queue_(config.queue_capacity, idle_spin, batch, config.queue_max_bytes, capabilities.write_delay.count() > 0),
      suppressing_(may_redeliver(capabilities) && config.redelivery.window_count > 0),
      delivered_(redelivery_window(config.redelivery, capabilities), config.redelivery.window_count) {}

bool Inbound::offer(Delivery&& delivery, std::string_view& why) {
  Queue::Push result = Queue::Push::dropped_newest;
  try {
    // With more to follow the dispatcher is woken by the last delivery of the run (or by
    // shutdown and fork, which wake or close the queue): one wake-up per burst.
    const bool more_follows = delivery.more_follows;
    result = queue_.push(std::move(delivery), OverflowPolicy::drop_newest, std::chrono::milliseconds(0), nullptr,
                         nullptr, more_follows);
  } catch (const std::bad_alloc&) {  // refused like a full queue
    why = "out of memory";
  }
  if (result != Queue::Push::accepted) return false;
  taken_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool Inbound::suppress_redelivery(const std::string& id) {
  if (!suppressing_ || id.empty() || !delivered_.contains(id, Clock::now())) return false;
  counters_.redeliveries_suppressed.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Inbound::remember_delivered(const std::string& id) {
  if (suppressing_ && !id.empty()) delivered_.remember(id, Clock::now());
}

Inbound::SequenceNote Inbound::note_sequence(const Envelope& envelope, const std::string& subject) {
  std::string& key = sequence_key_;  // reused: no allocation per event once warm
  key.assign(envelope.producer_instance);
  key.push_back('\0');
  key += subject;
  auto found = last_sequence_.find(key);
  if (found == last_sequence_.end()) {
    if (last_sequence_.size() >= kMaxSequenceStreams) last_sequence_.clear();
    found = last_sequence_.emplace(key, 0).first;
  }
  std::uint64_t& last = found->second;
  const std::uint64_t sequence = envelope.sequence;
  SequenceNote note;
  note.previous = last;
  if (last == 0) {
    last = sequence;
    return note;
  }
  const bool forward_jump = sequence > last && sequence - last - 1 > kMaxPlausibleGap;
  const bool backward_jump = sequence < last && last - sequence > kMaxPlausibleGap;
  if (forward_jump || backward_jump) {
    // A producer that restarted its sequence, or a forged one: start over from here, count no loss.
    counters_.sequence_resets.fetch_add(1, std::memory_order_relaxed);
    last = sequence;
    note.kind = SequenceNote::Kind::reset;
    return note;
  }
  if (sequence > last + 1) {
    note.kind = SequenceNote::Kind::gap;
    note.missing = sequence - last - 1;
    counters_.lost.fetch_add(note.missing, std::memory_order_relaxed);
  }
  if (sequence > last) last = sequence;  // an older one (a duplicate or reordering) moves nothing
  return note;
}

void Inbound::reset() {
  queue_.take_all();
  last_sequence_.clear();
  delivered_.clear();
  reset_counters();
}

void Inbound::reset_counters() {
  for (auto* counter : {&counters_.received, &counters_.malformed, &counters_.echo_suppressed, &counters_.lost,
                        &counters_.sequence_resets, &counters_.redeliveries_suppressed}) {
    counter->store(0);
  }
}

nlohmann::json Inbound::redelivery_health() const {
  return {{"active", suppressing_},
          {"window_ms", delivered_.window().count()},
          {"window_count", delivered_.max_count()}};
}

// ---- Bridge::Impl, inbound -----------------------------------------------------------------------

void Bridge::Impl::receive(Delivery&& delivery) {
  auto settle = delivery.settle;
  std::string_view why;
  if (inbound.offer(std::move(delivery), why)) return;
  // Not taken: let a transport with acknowledgements redeliver it later.
  if (settle) settle(Settle::nak);
  drop(Drop::inbound_full, "(inbound message)", 1, why);
}

namespace {

// A malformed message's body for a log line: as received (cut); when the route has redact rules,
// its JSON with them applied, and nothing of it when it is not JSON.
std::string body_for_log(const std::string& body, const BridgeConfig& config) {
  if (config.redact.empty()) return truncated(body, 120);
  nlohmann::json value = nlohmann::json::parse(body, nullptr, false);
  if (value.is_discarded()) return "(not shown: not JSON, and the route has redact rules)";
  detail::Redactor(config.redact).redact(value);
  return truncated(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 120);
}

}  // namespace

void Bridge::Impl::dead_letter(const Message& message, const std::string& reason) {
  inbound.counters().malformed.fetch_add(1, std::memory_order_relaxed);
  std::uint64_t suppressed = 0;
  if (malformed_log_rate.allow(suppressed)) {  // one line a second, whatever the peer sends
    detail::log(detail::LogLevel::warn,
                "notifications bridge: malformed message on \"{}\": {}; body: {}{}; total malformed: {}",
                truncated(message.subject, 120), truncated(reason), body_for_log(message.body, config),
                suppressed == 0 ? std::string() : " (" + std::to_string(suppressed) + " more malformed since the last line)",
                inbound.counters().malformed.load());
  }
  if (!hooks.dead_letter) return;
  try {
    hooks.dead_letter(message, reason);
  } catch (...) {
    set_error("dead-letter hook threw: " + detail::describe_exception(std::current_exception()));
  }
}

void Bridge::Impl::note_sequence(const Envelope& envelope, const std::string& subject) {
  const Inbound::SequenceNote note = inbound.note_sequence(envelope, subject);
  if (note.kind == Inbound::SequenceNote::Kind::reset) {
    std::uint64_t suppressed = 0;
    if (reset_log_rate.allow(suppressed)) {
      detail::log(detail::LogLevel::warn,
                  "notifications bridge: sequence on \"{}\" from {} jumped from {} to {}: taken as a reset "
                  "of the producer's sequence, not as loss{}",
                  truncated(subject, 120), truncated(envelope.producer, 60), note.previous, envelope.sequence,
                  suppressed == 0 ? std::string() : " (" + std::to_string(suppressed) + " more resets since the last line)");
    }
  } else if (note.kind == Inbound::SequenceNote::Kind::gap) {
    set_error(std::to_string(note.missing) + " event(s) lost on \"" + truncated(subject, 120) + "\" from " +
              truncated(envelope.producer, 60) + " (sequence " + std::to_string(note.previous) + " then " +
              std::to_string(envelope.sequence) + ")");
    log_loss(subject, note.missing);
  }
}

// Settles each delivery once, after it was handled (promise I1); a redelivery of an id delivered
// within the window is acked and not delivered again (I2).
void Bridge::Impl::dispatch(Delivery& delivery) {
  if (inbound.suppress_redelivery(delivery.message.id)) {
    if (delivery.settle) delivery.settle(Settle::ack);
    return;
  }
  // The payload is validated here and built only when a listener reads it, unless recent
  // listeners read nearly every payload (PayloadReadGuess).
  std::optional<detail::PayloadSpan> payload;
  DecodeResult decoded = inbound.payload_reads().defer_next()
                             ? detail::decode_envelope_deferring_payload(delivery.message.body, payload)
                             : decode_envelope(delivery.message.body);
  if (!decoded) {
    dead_letter(delivery.message, decoded.error);
    if (delivery.settle) delivery.settle(Settle::term);
    return;
  }
  // The subject is what the broker's permissions protect: the name in the body must be the one the
  // subject carries, and a valid subject token sequence (no spaces, wildcards or control bytes).
  if (const std::string problem = name_subject_problem(decoded.envelope->name, delivery.message.subject);
      !problem.empty()) {
    dead_letter(delivery.message, problem);
    if (delivery.settle) delivery.settle(Settle::term);
    return;
  }
  if (decoded.envelope->producer_instance == hooks.instance_id) {
    inbound.counters().echo_suppressed.fetch_add(1, std::memory_order_relaxed);
    if (delivery.settle) delivery.settle(Settle::ack);
    return;
  }
  inbound.counters().received.fetch_add(1, std::memory_order_relaxed);
  if (config.group.empty() && decoded.envelope->sequence != 0) {
    note_sequence(*decoded.envelope, delivery.message.subject);
  }
  const std::string name = decoded.envelope->name;
  const Clock::time_point started = observer ? Clock::now() : Clock::time_point{};
  bool ok = true;
  std::shared_ptr<const detail::DeferredPayload> deferred;
  try {
    if (payload) {
      deferred = detail::deferred_payload(std::move(delivery.message.body), *payload);
      notifier.publish(detail::event_with_deferred_payload(std::move(*decoded.envelope), transport->kind(), deferred));
    } else {
      notifier.publish(event_from_envelope(std::move(*decoded.envelope), transport->kind()));
    }
  } catch (...) {
    // Strict-mode listener errors or an invalid name: the event was delivered to every
    // listener that did not throw.
    ok = false;
    drop(Drop::dispatch_failed, name, 1, detail::describe_exception(std::current_exception()));
  }
  if (deferred) inbound.payload_reads().observed(deferred->built());
  if (observer) observer->delivered(name, Clock::now() - started, ok);
  inbound.remember_delivered(delivery.message.id);
  if (delivery.settle) delivery.settle(Settle::ack);
}

void Bridge::Impl::run_dispatcher() {
  detail::name_this_thread("ntf-dispatcher");
  detail::mark_bus_thread();
  struct Done {  // tells shutdown() this thread returned, however it leaves
    Impl& impl;
    ~Done() {
      impl.dispatcher_backlog.store(0, std::memory_order_relaxed);
      {
        detail::MutexLock lock(impl.progress_mutex);
        impl.dispatcher_done = true;
      }
      impl.progress.notify_all();
    }
  } done{*this};
  dispatcher_id.store(std::this_thread::get_id());
  Inbound::Batch batch;
  while (true) {
    park_if_requested();
    // No timer: a pause request wakes this wait (set_pause), shutdown closes the queue.
    if (!inbound.pop_batch(batch, kDispatchBatch)) break;
    dispatcher_backlog.store(batch.size(), std::memory_order_relaxed);
    for (Delivery& delivery : batch) {
      if (past_deadline()) {  // shutdown's deadline passed: count the rest, deliver no more
        dispatcher_backlog.fetch_sub(1, std::memory_order_relaxed);
        drop(Drop::inbound_deadline, "(inbound message)");
        if (delivery.settle) delivery.settle(Settle::nak);
        continue;
      }
      dispatch(delivery);
      // Only now: one still inside a listener at shutdown's deadline was not delivered.
      dispatcher_backlog.fetch_sub(1, std::memory_order_relaxed);
    }
    // Sequentially consistent, as in wait_delivered(): either it sees this count, or this sees
    // its waiter and wakes it. Once per batch, and a wake-up only when someone waits.
    inbound.handled(batch.size());
    if (wait_delivered_waiters.load() > 0) signal_progress();
  }
}

std::string Bridge::Impl::name_subject_problem(std::string_view name, std::string_view subject) const {
  const std::string& prefix = config.prefix;
  const bool maps = subject.size() == prefix.size() + 1 + name.size() && subject.starts_with(prefix) &&
                    subject[prefix.size()] == '.' && subject.ends_with(name);
  if (!maps) {
    return "envelope field \"name\" is \"" + truncated(name, 120) + "\" but the message arrived on subject \"" +
           truncated(subject, 120) + "\" (expected \"" + prefix + "." + truncated(name, 120) + "\")";
  }
  if (std::string problem = subject_problem(subject); !problem.empty()) {
    return "envelope field \"name\" \"" + truncated(name, 120) + "\" is not a valid event name: " + truncated(problem);
  }
  return {};
}

}  // namespace notifications
