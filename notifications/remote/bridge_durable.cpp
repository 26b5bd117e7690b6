// Bridge, durable handlers: registration, start, stop and health of the DurableConsumers
// (remote/durable_consumer.hpp) that Bridge::subscribe_durable() adds.
#include "remote/bridge_impl.hpp"

namespace notifications {

using namespace bridge_internal;
using detail::MutexLock;

namespace {

std::string option_problem(const std::string& name, const DurableOptions& o) {
  const auto bad = [&](const std::string& key, const std::string& why) {
    return "durable handler \"" + name + "\": option " + key + " " + why;
  };
  if (o.max_attempts < 1) return bad("max_attempts", "must be at least 1");
  if (o.backoff.initial.count() < 1) return bad("backoff.initial", "must be at least 1 ms");
  if (o.backoff.max < o.backoff.initial) return bad("backoff.max", "must be at least backoff.initial");
  if (!(o.backoff.multiplier >= 1.0 && o.backoff.multiplier <= 1000.0)) return bad("backoff.multiplier", "must be 1 .. 1000");
  if (!(o.backoff.jitter >= 0.0 && o.backoff.jitter <= 1.0)) return bad("backoff.jitter", "must be 0 .. 1");
  if (o.handler_deadline.count() < 0) return bad("handler_deadline", "must not be negative (0: no limit)");
  if (o.max_stuck_handlers < 1) return bad("max_stuck_handlers", "must be at least 1");
  if (o.max_queued < 1) return bad("max_queued", "must be at least 1");
  if (o.keep_done < 1) return bad("keep_done", "must be at least 1");
  if (o.keep_done_for.count() < 1) return bad("keep_done_for", "must be at least 1 hour");
  if (o.revive_after.count() < 1) return bad("revive_after", "must be at least 1 ms");
  if (o.handler_deadline.count() > 0 && o.revive_after <= o.handler_deadline) {
    return bad("revive_after", "must be longer than handler_deadline (" + std::to_string(o.handler_deadline.count()) +
                                   " ms), or a call still within its deadline could be taken over");
  }
  if (o.ack_wait.count() < 0) return bad("ack_wait", "must not be negative (0: the transport's default)");
  return {};
}

}  // namespace

void Bridge::Impl::subscribe_durable(const std::string& name, const std::string& pattern, DurableHandler handler,
                                     DurableOptions options) {
  if (const std::string problem = subject_problem(name); !problem.empty() || name.find('.') != std::string::npos) {
    throw DurableError("durable handler name \"" + truncated(name, 120) +
                       "\" must be one token of letters, digits, '_' and '-'" +
                       (problem.empty() ? std::string() : ": " + problem));
  }
  if (const std::string problem = subject_pattern_problem(pattern); !problem.empty()) {
    throw DurableError("durable handler \"" + name + "\": pattern \"" + truncated(pattern, 120) + "\": " + problem);
  }
  if (!handler) throw DurableError("durable handler \"" + name + "\": the handler is empty");
  if (std::string problem = option_problem(name, options); !problem.empty()) throw DurableError(problem);
  const TransportCapabilities caps = transport->capabilities();
  DeliveryOptions wanted;
  wanted.start = options.start;
  if (caps.acknowledgements) wanted.ack_wait = options.ack_wait;
  if (const std::string option = unsupported_delivery_option(caps, wanted); !option.empty()) {
    throw DurableError("durable handler \"" + name + "\": option " + option + " is not supported by the " +
                       transport->kind() + " transport");
  }
  if (!caps.acknowledgements && options.ack_wait.count() != 0) {
    throw DurableError("durable handler \"" + name + "\": option ack_wait needs a transport with acknowledgements (" +
                       transport->kind() + " has none)");
  }
  const std::string subject_pattern = config.prefix + "." + pattern;
  if (const std::string problem = subject_pattern_problem(subject_pattern); !problem.empty()) {
    throw DurableError("durable handler \"" + name + "\": subject pattern \"" + truncated(subject_pattern, 120) +
                       "\": " + problem);
  }
  std::shared_ptr<DurableConsumer> consumer;
  {
    MutexLock lock(durable_mutex);
    const State now = state.load();
    if (now == State::stopping || now == State::stopped) {
      throw DurableError("durable handler \"" + name + "\": the bridge is shut down");
    }
    for (const auto& existing : durables) {
      if (existing->name() == name) throw DurableError("durable handler \"" + name + "\" is already registered");
    }
    if (!options.store) {
      if (!default_durable_store) default_durable_store = make_memory_durable_store();
      options.store = default_durable_store;
    }
    std::shared_ptr<DurableStore> store = options.store;
    std::weak_ptr<Impl> weak = weak_from_this();
    consumer = std::make_shared<DurableConsumer>(
        name, pattern, subject_pattern, std::move(handler), std::move(options), std::move(store), transport,
        [weak](std::string_view event_name, std::string_view subject) -> std::string {
          auto self = weak.lock();
          return self ? self->name_subject_problem(event_name, subject) : std::string();
        });
    consumer->set_observer(observer);
    durables.push_back(consumer);
  }
  if (state.load() == State::running) consumer->start();
}

std::shared_ptr<DurableConsumer> Bridge::Impl::durable(const std::string& name) const {
  MutexLock lock(durable_mutex);
  for (const auto& consumer : durables) {
    if (consumer->name() == name) return consumer;
  }
  throw DurableError("no durable handler \"" + truncated(name, 120) + "\" on this bridge");
}

void Bridge::Impl::start_durables() {
  std::vector<std::shared_ptr<DurableConsumer>> list;
  {
    MutexLock lock(durable_mutex);
    list = durables;
  }
  for (const auto& consumer : list) consumer->start();
}

void Bridge::Impl::stop_durables(Clock::time_point deadline, ShutdownReport& report) {
  std::vector<std::shared_ptr<DurableConsumer>> list;
  {
    MutexLock lock(durable_mutex);
    list = durables;
  }
  for (const auto& consumer : list) {
    const DurableConsumer::StopReport stopped = consumer->stop(deadline);
    report.durable_returned += stopped.returned;
    report.durable_unfinished += stopped.unfinished;
  }
}

nlohmann::json Bridge::Impl::durable_health() const {
  std::vector<std::shared_ptr<DurableConsumer>> list;
  {
    MutexLock lock(durable_mutex);
    list = durables;
  }
  nlohmann::json out = nlohmann::json::object();
  for (const auto& consumer : list) out[consumer->name()] = consumer->health();
  return out;
}

void Bridge::subscribe_durable(const std::string& name, const std::string& pattern, DurableHandler handler,
                               DurableOptions options) {
  impl_->subscribe_durable(name, pattern, std::move(handler), std::move(options));
}

std::shared_ptr<DurableStore> Bridge::durable_store(const std::string& name) const {
  return impl_->durable(name)->store();
}

bool Bridge::replay_dead_letter(const std::string& name, std::uint64_t id, std::chrono::milliseconds timeout) {
  return impl_->durable(name)->replay(id, timeout);
}

}  // namespace notifications
