// EventStream (notifications/event_stream.hpp), the stream itself: options, the listener and the
// dispatcher, fan-out and the replay ring, heartbeats and idle clients, start, shutdown and
// health. Threads and locks: stream/event_stream_state.hpp.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <random>
#include <stdexcept>
#include <utility>

#include "notifications/config.hpp"
#include "process/log.hpp"
#include "process/thread_name.hpp"
#include "stream/event_stream_state.hpp"

namespace notifications {

namespace detail::sse {

FramePtr make_comment(std::string_view comment) {
  auto frame = std::make_shared<Frame>();
  frame->text.append(": ").append(comment).append("\n\n");
  return frame;
}

FramePtr make_control(std::string_view event, const nlohmann::json& data) {
  auto frame = std::make_shared<Frame>();
  frame->text.append("event: ").append(event).append("\ndata: ").append(data.dump()).append("\n\n");
  return frame;
}

std::string stream_token() {
  std::random_device device;
  std::mt19937_64 generator((static_cast<std::uint64_t>(device()) << 32) ^ device() ^
                            static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()));
  static constexpr char kHex[] = "0123456789abcdef";
  std::uint64_t value = generator();
  std::string token(16, '0');
  for (char& c : token) {
    c = kHex[value & 0xf];
    value >>= 4;
  }
  return token;
}

std::string frame_text(std::string_view id, std::string_view name, std::string_view data) {
  std::string text;
  text.reserve(id.size() + name.size() + data.size() + 24);
  text.append("id: ").append(id).append("\nevent: ").append(name).append("\ndata: ").append(data).append("\n\n");
  return text;
}

BatchScheduling::BatchScheduling(bool wanted) noexcept {
#if defined(__linux__)
  if (!wanted) return;
  sched_param previous{};
  int policy = 0;
  if (pthread_getschedparam(pthread_self(), &policy, &previous) != 0 || policy != SCHED_OTHER) return;
  const sched_param batch{};
  if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch) == 0) {
    policy_ = policy;
    priority_ = previous.sched_priority;
  }
#endif
}

BatchScheduling::~BatchScheduling() {
#if defined(__linux__)
  if (policy_ < 0) return;
  sched_param previous{};
  previous.sched_priority = priority_;
  pthread_setschedparam(pthread_self(), policy_, &previous);
#endif
}

}  // namespace detail::sse

using namespace detail::sse;

void EventStreamOptions::validate() const {
  if (max_connections == 0) throw ConfigError("EventStreamOptions::max_connections is 0; at least 1");
  if (dispatch_queue == 0) throw ConfigError("EventStreamOptions::dispatch_queue is 0; at least 1");
  if (client_queue == 0) throw ConfigError("EventStreamOptions::client_queue is 0; at least 1");
  if (heartbeat_interval.count() <= 0) {
    throw ConfigError("EventStreamOptions::heartbeat_interval is " + std::to_string(heartbeat_interval.count()) +
                      " ms; more than 0");
  }
  if (idle_timeout.count() < 0) {
    throw ConfigError("EventStreamOptions::idle_timeout is " + std::to_string(idle_timeout.count()) +
                      " ms; 0 (never) or more");
  }
  if (write_deadline.count() <= 0) {
    throw ConfigError("EventStreamOptions::write_deadline is " + std::to_string(write_deadline.count()) +
                      " ms; more than 0");
  }
  if (reconnect_delay.count() < 0) {
    throw ConfigError("EventStreamOptions::reconnect_delay is " + std::to_string(reconnect_delay.count()) +
                      " ms; 0 or more");
  }
  if (redact.size() > detail::kMaxRedactRules) {
    throw ConfigError("EventStreamOptions::redact has " + std::to_string(redact.size()) + " rules; at most " +
                      std::to_string(detail::kMaxRedactRules));
  }
  for (std::size_t i = 0; i < redact.size(); ++i) {
    const std::string problem = detail::redact_rule_problem(redact[i]);
    if (!problem.empty()) {
      throw ConfigError("EventStreamOptions::redact[" + std::to_string(i) + "] is not a redaction rule: " + problem);
    }
  }
}

void EventStream::State::enqueue(const Event& event) {
  {
    detail::MutexLock lock(queue_mutex);
    // An event still being dispatched when shutdown() unsubscribed: the stream carries no more.
    if (dispatcher_stop) return;
    if (queue.size() < options.dispatch_queue) {
      queue.push_back(event);
      if (queue.size() == 1) queue_ready.notify_one();
      return;
    }
  }
  const std::uint64_t dropped = counters.dropped_events.fetch_add(1, std::memory_order_relaxed) + 1;
  // The first drop and then one line per 1,000: the count is in health().
  if (dropped == 1 || dropped % 1000 == 0) {
    detail::log(LogLevel::warn,
                "event stream: dropped event \"{}\": the dispatch queue holds {} events ({} dropped so far)",
                event.name(), options.dispatch_queue, dropped);
  }
}

std::shared_ptr<Frame> EventStream::State::encode(const Event& event) {
  // A received event keeps its producer: the same as a history replays of it.
  if (const auto& origin = event.origin()) {
    return encode(envelope_from_event(event, origin->producer, origin->producer_instance));
  }
  return encode(envelope_from_event(event, options.producer, token));
}

std::shared_ptr<Frame> EventStream::State::encode(Envelope envelope) {
  // The name is written as the frame's "event:" line: a line break would end it, and what
  // followed would be read as fields of the stream's own (a forged id, a made-up event).
  if (envelope.name.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
    throw std::invalid_argument("its name holds a line break or a NUL, which cannot be an SSE event name");
  }
  if (!redactor.empty()) {
    redactor.redact(envelope.payload);
    if (envelope.context.is_object()) redactor.redact(envelope.context);
    if (envelope.tags.is_object()) redactor.redact(envelope.tags);
  }
  auto frame = std::make_shared<Frame>();
  frame->text = encode_envelope(envelope);  // the data line: the frame is completed by its user
  frame->name = std::move(envelope.name);
  frame->event_id = std::move(envelope.id);
  return frame;
}

void EventStream::State::push_live(Client& client, const FramePtr& frame) {
  bool dropped = false;
  {
    detail::MutexLock lock(client.mutex);
    if (client.reason != CloseReason::none || client.final_frame_queued) return;
    if (!client.replayed_ids.empty() && client.replayed_ids.erase(frame->event_id) > 0) return;
    if (client.queue.size() >= (client.streaming ? options.client_queue : options.dispatch_queue)) {
      client.reason = CloseReason::slow;
      dropped = true;
    } else {
      client.queue.push_back(frame);
      client.last_event = Clock::now();
    }
  }
  client.wake.notify_one();
  if (dropped) {
    counters.dropped_slow.fetch_add(1, std::memory_order_relaxed);
    detail::log(LogLevel::warn, "event stream: dropped a client of \"{}\": {} frames were waiting for it",
                client.pattern_text, options.client_queue);
  }
}

void EventStream::State::fan_out(const FramePtr& frame) {
  if (options.replay_events > 0) {
    ring.push_back(frame);
    if (ring.size() > options.replay_events) ring.pop_front();
  }
  for (const std::shared_ptr<Client>& client : clients) {
    if (client->pattern.matches(frame->name)) push_live(*client, frame);
  }
}

void EventStream::State::dispatch_loop() {
  detail::name_this_thread("ntf-sse-dispatch");
  const BatchScheduling batch_scheduling(options.batch_scheduling);
  std::deque<Event> batch;
  for (;;) {
    {
      detail::UniqueMutexLock lock(queue_mutex);
      while (queue.empty() && !dispatcher_stop) lock.wait(queue_ready);
      if (queue.empty()) return;  // stopping, and everything taken was handed out
      batch.swap(queue);
    }
    for (const Event& event : batch) {
      std::shared_ptr<Frame> frame;
      try {
        frame = encode(event);
      } catch (const std::exception& e) {
        counters.dropped_events.fetch_add(1, std::memory_order_relaxed);
        detail::log(LogLevel::warn, "event stream: dropped event \"{}\": it could not be encoded: {}", event.name(),
                    e.what());
        continue;
      }
      detail::MutexLock lock(registry_mutex);
      frame->position = next_position++;
      frame->text = frame_text(position_text(frame->position, frame->event_id), frame->name, frame->text);
      counters.events.fetch_add(1, std::memory_order_relaxed);
      fan_out(frame);
    }
    batch.clear();
  }
}

void EventStream::State::heartbeat_loop() {
  detail::name_this_thread("ntf-sse-heartbeat");
  const BatchScheduling batch_scheduling(options.batch_scheduling);
  const FramePtr heartbeat = make_comment("heartbeat");
  const auto interval = options.heartbeat_interval;
  const auto idle = options.idle_timeout;
  const auto period = idle.count() > 0 ? std::min(interval, idle) : interval;
  detail::UniqueMutexLock lock(registry_mutex);
  while (!heartbeat_stop) {
    if (clients.empty()) {
      lock.wait(registry_changed);  // nothing to keep alive: no wake-up until a client comes
      continue;
    }
    lock.wait_until(registry_changed, Clock::now() + period);
    if (heartbeat_stop) return;
    const auto now = Clock::now();
    for (const std::shared_ptr<Client>& client : clients) {
      bool beat = false;
      bool closed_idle = false;
      {
        detail::MutexLock client_lock(client->mutex);
        if (client->reason != CloseReason::none || client->final_frame_queued) continue;
        if (idle.count() > 0 && now - client->last_event >= idle) {
          client->reason = CloseReason::idle;
          closed_idle = true;
        } else if (now - client->last_frame >= interval && client->queue.empty() && client->replay.empty()) {
          client->queue.push_back(heartbeat);
          client->last_frame = now;
          beat = true;
        }
      }
      if (closed_idle) counters.closed_idle.fetch_add(1, std::memory_order_relaxed);
      if (beat) counters.heartbeats.fetch_add(1, std::memory_order_relaxed);
      if (beat || closed_idle) client->wake.notify_one();
    }
  }
}

void EventStream::State::unregister(const std::shared_ptr<Client>& client) {
  {
    detail::MutexLock lock(registry_mutex);
    if (clients.erase(client) == 0) return;  // already unregistered
  }
  registry_changed.notify_all();
}

EventStream::EventStream(Notifier& notifier, EventStreamOptions options) {
  options.validate();
  state_ = std::make_shared<State>(notifier, std::move(options));
}

EventStream::~EventStream() {
  if (!state_) return;
  if (state_->owner != ::getpid()) {
    // A forked child: the threads are not here; joining or destroying them would abort.
    new std::shared_ptr<State>(std::move(state_));  // NOLINT: left as it is, by contract
    return;
  }
  shutdown(state_->options.write_deadline);
}

void EventStream::start() {
  State& state = *state_;
  detail::MutexLock lifecycle(state.lifecycle_mutex);
  {
    detail::MutexLock lock(state.registry_mutex);
    if (state.started || state.stopping) {
      throw std::logic_error(state.stopping ? "EventStream::start: called after shutdown()" : "EventStream::start: called twice");
    }
    state.started = true;
  }
  std::weak_ptr<State> weak = state_;
  state.subscription = state.notifier.subscribe(state.options.pattern, [weak](const Event& event) {
    if (auto locked = weak.lock()) locked->enqueue(event);
  });
  state.dispatcher = std::thread([s = state_.get()] { s->dispatch_loop(); });
  state.heartbeat = std::thread([s = state_.get()] { s->heartbeat_loop(); });
}

bool EventStream::shutdown(std::chrono::milliseconds deadline) {
  State& state = *state_;
  detail::MutexLock lifecycle(state.lifecycle_mutex);
  if (state.shutdown_result) return *state.shutdown_result;
  state.shutdown_result = false;
  const auto until = Clock::now() + deadline;
  bool was_started = false;
  {
    detail::MutexLock lock(state.registry_mutex);
    was_started = state.started;
    state.stopping = true;  // connect() refuses from here on
    state.heartbeat_stop = true;
  }
  state.registry_changed.notify_all();
  if (state.heartbeat.joinable()) state.heartbeat.join();
  state.subscription.unsubscribe();
  {
    detail::MutexLock lock(state.queue_mutex);
    state.dispatcher_stop = true;
  }
  state.queue_ready.notify_all();
  if (state.dispatcher.joinable()) state.dispatcher.join();
  if (!was_started) {
    state.shutdown_result = true;
    return true;
  }

  // Every client is sent the shutdown event after what it was already given, then its stream ends.
  const FramePtr goodbye = make_control("shutdown", {{"reason", "the server is shutting down"}});
  std::vector<std::shared_ptr<Client>> clients;
  {
    detail::MutexLock lock(state.registry_mutex);
    clients.assign(state.clients.begin(), state.clients.end());
  }
  for (const std::shared_ptr<Client>& client : clients) {
    {
      detail::MutexLock lock(client->mutex);
      if (client->reason == CloseReason::none && !client->final_frame_queued) {
        client->queue.push_back(goodbye);
        client->final_frame_queued = true;
      }
    }
    client->wake.notify_one();
  }
  detail::UniqueMutexLock lock(state.registry_mutex);
  while (!state.clients.empty()) {
    if (lock.wait_until(state.registry_changed, until) == std::cv_status::timeout) break;
  }
  state.shutdown_result = state.clients.empty();
  return *state.shutdown_result;
}

const EventStreamOptions& EventStream::options() const noexcept { return state_->options; }

nlohmann::json EventStream::health() const {
  const State& state = *state_;
  nlohmann::json health = nlohmann::json::object();
  {
    detail::MutexLock lock(state.registry_mutex);
    health["state"] = state.stopping ? "stopped" : state.started ? "running" : "created";
    health["connections"] = state.clients.size();
    health["replay_events"] = state.ring.size();
    const auto id_of = [&state](const FramePtr& frame) {
      return nlohmann::json(state.position_text(frame->position, frame->event_id));
    };
    health["oldest_id"] = state.ring.empty() ? nlohmann::json(nullptr) : id_of(state.ring.front());
    health["newest_id"] = state.ring.empty() ? nlohmann::json(nullptr) : id_of(state.ring.back());
  }
  health["max_connections"] = state.options.max_connections;
  const auto& c = state.counters;
  health["connections_total"] = c.connections_total.load();
  health["refused"] = c.refused.load();
  health["dropped_slow"] = c.dropped_slow.load();
  health["dropped_write"] = c.dropped_write.load();
  health["closed_idle"] = c.closed_idle.load();
  health["events"] = c.events.load();
  health["dropped_events"] = c.dropped_events.load();
  health["frames_sent"] = c.frames_sent.load();
  health["heartbeats"] = c.heartbeats.load();
  health["replayed"] = c.replayed.load();
  health["gaps"] = c.gaps.load();
  health["history_replays"] = c.history_replays.load();
  health["history_skipped"] = c.history_skipped.load();
  return health;
}

}  // namespace notifications
