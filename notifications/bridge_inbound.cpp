// Bridge, inbound: transport callback -> inbound queue -> dispatcher thread -> local notifier.
#include "notifications/bridge_impl.hpp"

namespace notifications {

using namespace bridge_internal;

void Bridge::Impl::receive(Delivery&& delivery) {
  auto settle = delivery.settle;
  using Queue = detail::BoundedQueue<Delivery>;
  Queue::Push result = Queue::Push::dropped_newest;
  std::string_view why;
  try {
    result = inbound.push(std::move(delivery), OverflowPolicy::drop_newest, std::chrono::milliseconds(0));
  } catch (const std::bad_alloc&) {  // refused like a full queue: counted, and nak'd below
    why = "out of memory";
  }
  if (result == Queue::Push::accepted) return;
  // Not taken: let a transport with acknowledgements redeliver it later.
  if (settle) settle(Settle::nak);
  drop(Drop::inbound_full, "(inbound message)", 1, why);
}

void Bridge::Impl::dead_letter(const Message& message, const std::string& reason) {
  counters.malformed.fetch_add(1, std::memory_order_relaxed);
  detail::log(detail::LogLevel::warn, "notifications bridge: malformed message on \"{}\": {}; body: {}",
               truncated(message.subject, 120), truncated(reason), truncated(message.body, 120));
  if (!hooks.dead_letter) return;
  try {
    hooks.dead_letter(message, reason);
  } catch (...) {
    set_error("dead-letter hook threw: " + detail::describe_exception(std::current_exception()));
  }
}

void Bridge::Impl::note_sequence(const Envelope& envelope, const std::string& subject) {
  std::string& key = sequence_key;  // reused: no allocation per event once warm
  key.assign(envelope.producer_instance);
  key.push_back('\0');
  key += subject;
  auto found = last_sequence.find(key);
  if (found == last_sequence.end()) {
    if (last_sequence.size() >= kMaxSequenceStreams) last_sequence.clear();
    found = last_sequence.emplace(key, 0).first;
  }
  std::uint64_t& last = found->second;
  if (last != 0 && envelope.sequence > last + 1) {
    const std::uint64_t missing = envelope.sequence - last - 1;
    counters.lost.fetch_add(missing, std::memory_order_relaxed);
    set_error(std::to_string(missing) + " event(s) lost on \"" + subject + "\" from " + envelope.producer +
              " (sequence " + std::to_string(last) + " then " + std::to_string(envelope.sequence) + ")");
    log_loss(subject, missing);
  }
  if (envelope.sequence > last) last = envelope.sequence;
}

void Bridge::Impl::dispatch(Delivery& delivery) {
  DecodeResult decoded = decode_envelope(delivery.message.body);
  if (!decoded) {
    dead_letter(delivery.message, decoded.error);
    if (delivery.settle) delivery.settle(Settle::term);
    return;
  }
  if (decoded.envelope->producer_instance == hooks.instance_id) {
    counters.echo_suppressed.fetch_add(1, std::memory_order_relaxed);
    if (delivery.settle) delivery.settle(Settle::ack);
    return;
  }
  counters.received.fetch_add(1, std::memory_order_relaxed);
  if (config.group.empty() && decoded.envelope->sequence != 0) {
    note_sequence(*decoded.envelope, delivery.message.subject);
  }
  const std::string name = decoded.envelope->name;
  try {
    notifier.publish(event_from_envelope(std::move(*decoded.envelope), transport->kind()));
  } catch (...) {
    // Strict-mode listener errors or an invalid name: the event was delivered to every
    // listener that did not throw.
    drop(Drop::dispatch_failed, name, 1, detail::describe_exception(std::current_exception()));
  }
  if (delivery.settle) delivery.settle(Settle::ack);
}

void Bridge::Impl::run_dispatcher() {
  detail::name_this_thread("ntf-dispatcher");
  dispatcher_id.store(std::this_thread::get_id());
  decltype(inbound)::Batch batch;
  while (true) {
    park_if_requested();
    if (!inbound.pop_batch(batch, kDispatchBatch, Clock::now() + std::chrono::milliseconds(100))) break;
    for (Delivery& delivery : batch) {
      if (past_deadline()) {  // shutdown's deadline passed: count the rest, deliver no more
        drop(Drop::shutdown_deadline, "(inbound message)");
        if (delivery.settle) delivery.settle(Settle::nak);
        continue;
      }
      dispatch(delivery);
    }
  }
}

}  // namespace notifications
