// Bridge, inbound: transport callback -> inbound queue -> dispatcher thread -> local notifier.
#include "remote/bridge_impl.hpp"

namespace notifications {

using namespace bridge_internal;

void Bridge::Impl::receive(Delivery&& delivery) {
  auto settle = delivery.settle;
  using Queue = decltype(inbound);
  Queue::Push result = Queue::Push::dropped_newest;
  std::string_view why;
  try {
    result = inbound.push(std::move(delivery), OverflowPolicy::drop_newest, std::chrono::milliseconds(0));
  } catch (const std::bad_alloc&) {  // refused like a full queue: counted, and nak'd below
    why = "out of memory";
  }
  if (result == Queue::Push::accepted) {
    inbound_taken.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Not taken: let a transport with acknowledgements redeliver it later.
  if (settle) settle(Settle::nak);
  drop(Drop::inbound_full, "(inbound message)", 1, why);
}

void Bridge::Impl::dead_letter(const Message& message, const std::string& reason) {
  counters.malformed.fetch_add(1, std::memory_order_relaxed);
  std::uint64_t suppressed = 0;
  if (malformed_log_rate.allow(suppressed)) {  // one line a second, whatever the peer sends
    detail::log(detail::LogLevel::warn,
                "notifications bridge: malformed message on \"{}\": {}; body: {}{}; total malformed: {}",
                truncated(message.subject, 120), truncated(reason), truncated(message.body, 120),
                suppressed == 0 ? std::string() : " (" + std::to_string(suppressed) + " more malformed since the last line)",
                counters.malformed.load());
  }
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
  const std::uint64_t sequence = envelope.sequence;
  if (last == 0) {
    last = sequence;
    return;
  }
  const bool forward_jump = sequence > last && sequence - last - 1 > kMaxPlausibleGap;
  const bool backward_jump = sequence < last && last - sequence > kMaxPlausibleGap;
  if (forward_jump || backward_jump) {
    // A producer that restarted its sequence, or a forged one: start over from here, count no
    // loss, and say so.
    counters.sequence_resets.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t suppressed = 0;
    if (reset_log_rate.allow(suppressed)) {
      detail::log(detail::LogLevel::warn,
                  "notifications bridge: sequence on \"{}\" from {} jumped from {} to {}: taken as a reset "
                  "of the producer's sequence, not as loss{}",
                  truncated(subject, 120), truncated(envelope.producer, 60), last, sequence,
                  suppressed == 0 ? std::string() : " (" + std::to_string(suppressed) + " more resets since the last line)");
    }
    last = sequence;
    return;
  }
  if (sequence > last + 1) {
    const std::uint64_t missing = sequence - last - 1;
    counters.lost.fetch_add(missing, std::memory_order_relaxed);
    set_error(std::to_string(missing) + " event(s) lost on \"" + truncated(subject, 120) + "\" from " +
              truncated(envelope.producer, 60) + " (sequence " + std::to_string(last) + " then " +
              std::to_string(sequence) + ")");
    log_loss(subject, missing);
  }
  if (sequence > last) last = sequence;  // an older one (a duplicate or reordering) moves nothing
}

void Bridge::Impl::dispatch(Delivery& delivery) {
  DecodeResult decoded = decode_envelope(delivery.message.body);
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
  detail::mark_bus_thread();
  struct Done {  // tells shutdown() this thread returned, however it leaves
    Impl& impl;
    ~Done() {
      impl.dispatcher_backlog.store(0, std::memory_order_relaxed);
      {
        std::lock_guard lock(impl.progress_mutex);
        impl.dispatcher_done = true;
      }
      impl.progress.notify_all();
    }
  } done{*this};
  dispatcher_id.store(std::this_thread::get_id());
  decltype(inbound)::Batch batch;
  while (true) {
    park_if_requested();
    if (!inbound.pop_batch(batch, kDispatchBatch, Clock::now() + std::chrono::milliseconds(100))) break;
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
    inbound_handled.fetch_add(batch.size());
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
