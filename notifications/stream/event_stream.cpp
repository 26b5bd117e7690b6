// EventStream (notifications/event_stream.hpp): the notifier's events as Server-Sent Events.
//
// Threads and locks:
//   - instrumenting threads run the listener: it copies the event into the dispatch queue
//     (State::queue_mutex) and wakes the dispatcher; it never encodes nor waits;
//   - "ntf-sse-dispatch" encodes each event once into a frame, then, under State::registry_mutex,
//     numbers it, appends it to the replay ring and hands it to every matching client's queue
//     (Client::mutex, taken inside registry_mutex: that is the only nesting);
//   - "ntf-sse-heartbeat" queues a heartbeat comment for clients that were sent nothing for an
//     interval and closes idle ones; it sleeps without a deadline while no client is connected;
//   - each client's own thread (an HTTP server's connection thread) runs Connection::stream(),
//     writing what its queue holds without any of the stream's locks held.
// connect() replays from the ring and registers the client under registry_mutex, so no frame the
// dispatcher numbers can fall between the replay and the live stream, nor be in both.
#include "notifications/event_stream.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>
#include <unordered_set>
#include <utility>

#include "notifications/config.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifier.hpp"
#include "process/log.hpp"
#include "process/thread_name.hpp"
#include "process/thread_safety.hpp"
#include "remote/payload_redaction.hpp"

namespace notifications {

namespace {

using Clock = std::chrono::steady_clock;

// One encoded event, shared by every client's queue and the replay ring.
struct Frame {
  std::uint64_t position = 0;  // 0: not in the ring (a control frame, or replayed from the history)
  std::string name;
  std::string event_id;  // the envelope's id; empty for control frames
  std::string text;  // the whole frame, ending with the blank line
};
using FramePtr = std::shared_ptr<const Frame>;

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

// "id: ...\nevent: <name>\ndata: <envelope>\n\n".
std::string frame_text(std::string_view id, std::string_view name, std::string_view data) {
  std::string text;
  text.reserve(id.size() + name.size() + data.size() + 24);
  text.append("id: ").append(id).append("\nevent: ").append(name).append("\ndata: ").append(data).append("\n\n");
  return text;
}

// A Last-Event-ID this stream wrote: "<stream>-<number>:<event id>".
struct Position {
  std::string_view stream;
  std::uint64_t number = 0;
  std::string_view event_id;
};
std::optional<Position> parse_position(std::string_view text) {
  const std::size_t colon = text.find(':');
  if (colon == std::string_view::npos || text.size() > 256) return std::nullopt;
  const std::string_view head = text.substr(0, colon);
  const std::size_t dash = head.rfind('-');
  if (dash == std::string_view::npos || dash == 0) return std::nullopt;
  Position position;
  position.stream = head.substr(0, dash);
  position.event_id = text.substr(colon + 1);
  const char* first = head.data() + dash + 1;
  const char* last = head.data() + head.size();
  const auto [end, error] = std::from_chars(first, last, position.number);
  if (error != std::errc() || end != last || first == last) return std::nullopt;
  return position;
}

enum class CloseReason { none, closed, slow, write_failed, idle, shutdown };

}  // namespace

struct EventStream::Connection::Client {
  Client(Pattern p, std::string text) : pattern(std::move(p)), pattern_text(std::move(text)) {}

  const Pattern pattern;
  const std::string pattern_text;
  detail::Mutex mutex;
  std::condition_variable wake;
  // Replayed frames, written before `queue`; not bounded by client_queue (the ring bounds them).
  std::deque<FramePtr> replay NOTIFICATIONS_GUARDED_BY(mutex);
  std::deque<FramePtr> queue NOTIFICATIONS_GUARDED_BY(mutex);
  // Event ids replayed from the history: not sent again when they come live.
  std::unordered_set<std::string> replayed_ids NOTIFICATIONS_GUARDED_BY(mutex);
  CloseReason reason NOTIFICATIONS_GUARDED_BY(mutex) = CloseReason::none;
  bool final_frame_queued NOTIFICATIONS_GUARDED_BY(mutex) = false;  // the shutdown event: end after it
  Clock::time_point last_event NOTIFICATIONS_GUARDED_BY(mutex) = Clock::now();
  Clock::time_point last_frame NOTIFICATIONS_GUARDED_BY(mutex) = Clock::now();
  bool registered = false;  // guarded by State::registry_mutex
};

using Client = EventStream::Connection::Client;

struct EventStream::State {
  State(Notifier& n, EventStreamOptions o)
      : notifier(n), options(std::move(o)), redactor(options.redact), token(stream_token()), instance(token) {}

  Notifier& notifier;
  const EventStreamOptions options;
  const detail::Redactor redactor;
  const std::string token;     // this stream's part of every position: "<token>-<number>"
  const std::string instance;  // the envelope's producer_instance
  const pid_t owner = ::getpid();

  // Lifecycle: started and stopping only change under registry_mutex.
  mutable detail::Mutex registry_mutex;
  bool started NOTIFICATIONS_GUARDED_BY(registry_mutex) = false;
  bool stopping NOTIFICATIONS_GUARDED_BY(registry_mutex) = false;
  std::unordered_set<std::shared_ptr<Client>> clients NOTIFICATIONS_GUARDED_BY(registry_mutex);
  std::deque<FramePtr> ring NOTIFICATIONS_GUARDED_BY(registry_mutex);
  std::uint64_t next_position NOTIFICATIONS_GUARDED_BY(registry_mutex) = 1;
  std::condition_variable registry_changed;  // a client came or went; heartbeat stop

  detail::Mutex queue_mutex;
  std::deque<Event> queue NOTIFICATIONS_GUARDED_BY(queue_mutex);
  bool dispatcher_stop NOTIFICATIONS_GUARDED_BY(queue_mutex) = false;
  std::condition_variable queue_ready;

  bool heartbeat_stop NOTIFICATIONS_GUARDED_BY(registry_mutex) = false;

  Subscription subscription;
  std::thread dispatcher;
  std::thread heartbeat;
  std::atomic<bool> shut_down{false};

  struct Counters {
    std::atomic<std::uint64_t> connections_total{0}, refused{0}, dropped_slow{0}, dropped_write{0},
        closed_idle{0}, events{0}, dropped_events{0}, frames_sent{0}, heartbeats{0}, replayed{0}, gaps{0},
        history_replays{0}, history_skipped{0};
  } counters;

  void enqueue(const Event& event);
  void dispatch_loop();
  void heartbeat_loop();
  std::shared_ptr<Frame> encode(const Event& event);
  std::shared_ptr<Frame> encode(Envelope envelope);
  // The client's replay from the history after `event_id`: the frames, and the ids they carry.
  // nullopt when the history does not hold that event (or more than replay_events after it), or
  // cannot be read; `why` then says which.
  std::optional<std::deque<FramePtr>> history_replay(const Client& client, std::string_view event_id,
                                                     std::unordered_set<std::string>& ids, std::string& why);
  void fan_out(const FramePtr& frame) NOTIFICATIONS_REQUIRES(registry_mutex);
  void unregister(const std::shared_ptr<Client>& client);
  std::string position_text(std::uint64_t position, std::string_view event_id) const {
    std::string text = token + "-" + std::to_string(position);
    return text.append(":").append(event_id);
  }
  // Queues `frame` for `client` unless it is closed; drops a client whose queue is full.
  void push_live(Client& client, const FramePtr& frame, bool event);
};

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
  return encode(envelope_from_event(event, options.producer, instance));
}

std::shared_ptr<Frame> EventStream::State::encode(Envelope envelope) {
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

void EventStream::State::push_live(Client& client, const FramePtr& frame, bool event) {
  bool dropped = false;
  {
    detail::MutexLock lock(client.mutex);
    if (client.reason != CloseReason::none || client.final_frame_queued) return;
    if (!client.replayed_ids.empty() && client.replayed_ids.erase(frame->event_id) > 0) return;
    if (client.queue.size() >= options.client_queue) {
      client.reason = CloseReason::slow;
      dropped = true;
    } else {
      client.queue.push_back(frame);
      if (event) client.last_event = Clock::now();
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
    if (client->pattern.matches(frame->name)) push_live(*client, frame, true);
  }
}

void EventStream::State::dispatch_loop() {
  detail::name_this_thread("ntf-sse-dispatch");
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
    if (!client->registered) return;
    client->registered = false;
    clients.erase(client);
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
  {
    detail::MutexLock lock(state.registry_mutex);
    if (state.started || state.stopping) throw std::logic_error("EventStream::start: called twice");
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
  if (state.shut_down.exchange(true)) return true;
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
  if (!was_started) return true;

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
  return state.clients.empty();
}

std::optional<std::deque<FramePtr>> EventStream::State::history_replay(const Client& client, std::string_view event_id,
                                                                      std::unordered_set<std::string>& ids,
                                                                      std::string& why) {
  std::optional<std::vector<std::string>> stored;
  try {
    // One more than the most a client is given: more than that means a gap either way.
    stored = options.history->events_after(event_id, options.history_events + 1);
  } catch (const std::exception& e) {
    detail::log(LogLevel::warn, "event stream: the history could not be read: {}", e.what());
    why = "the history could not be read";
    return std::nullopt;
  }
  if (!stored) {
    why = "older than the replay ring and the history";
    return std::nullopt;
  }
  if (stored->size() > options.history_events) {
    why = "more than history_events events followed it";
    return std::nullopt;
  }
  std::deque<FramePtr> frames;
  for (const std::string& body : *stored) {
    DecodeResult decoded = decode_envelope(body);
    if (!decoded) {
      counters.history_skipped.fetch_add(1, std::memory_order_relaxed);
      detail::log(LogLevel::warn, "event stream: skipped a stored event that is not an envelope: {}", decoded.error);
      continue;
    }
    if (!client.pattern.matches(decoded.envelope->name)) continue;
    std::shared_ptr<Frame> frame = encode(std::move(*decoded.envelope));
    frame->text = frame_text(position_text(0, frame->event_id), frame->name, frame->text);
    ids.insert(frame->event_id);
    frames.push_back(std::move(frame));
  }
  return frames;
}

std::unique_ptr<EventStream::Connection> EventStream::connect(std::string_view pattern_text,
                                                              std::string_view last_event_id) {
  State& state = *state_;
  Pattern pattern = Pattern::all();
  if (!pattern_text.empty()) {
    try {
      pattern = Pattern(pattern_text);
    } catch (const InvalidPattern& e) {
      state.counters.refused.fetch_add(1, std::memory_order_relaxed);
      throw EventStreamRefused(400, std::string("bad \"pattern\": ") + e.what());
    }
  }
  // A position of another stream (a restarted server's) is well formed but not in the ring: the
  // history, or the gap event, as for one older than the ring.
  std::optional<Position> position;
  if (!last_event_id.empty()) {
    position = parse_position(last_event_id);
    if (!position) {
      state.counters.refused.fetch_add(1, std::memory_order_relaxed);
      throw EventStreamRefused(400, "bad Last-Event-ID: expected a position this server sent "
                                    "(\"<stream>-<number>:<event id>\"), got " +
                                        std::to_string(last_event_id.size()) + " bytes that are not one");
    }
  }

  auto client = std::make_shared<Client>(std::move(pattern), std::string(pattern_text.empty() ? ">" : pattern_text));
  // The ring's frames for the client, should the history not hold its position.
  std::deque<FramePtr> fallback;
  bool from_history = false;
  {
    detail::MutexLock lock(state.registry_mutex);
    if (!state.started || state.stopping) {
      state.counters.refused.fetch_add(1, std::memory_order_relaxed);
      throw EventStreamRefused(503, state.stopping ? "the event stream is shutting down" : "the event stream has not started");
    }
    if (state.clients.size() >= state.options.max_connections) {
      state.counters.refused.fetch_add(1, std::memory_order_relaxed);
      throw EventStreamRefused(503, "the event stream serves at most " + std::to_string(state.options.max_connections) +
                                        " connections (EventStreamOptions::max_connections)");
    }
    if (position) {
      const bool known = position->stream == state.token;
      const std::uint64_t after = position->number;
      const std::uint64_t oldest = state.ring.empty() ? state.next_position : state.ring.front()->position;
      // Known and within the ring (or exactly at its newest edge): no gap.
      const bool complete = known && after != 0 && after + 1 >= oldest && after < state.next_position;
      from_history = !complete && state.options.history && state.options.history_events > 0 &&
                     !position->event_id.empty();
      detail::MutexLock client_lock(client->mutex);
      std::deque<FramePtr>& into = from_history ? fallback : client->replay;
      std::uint64_t replayed = 0;
      if (!complete && !from_history) {
        // The client's position is not repeated: it is the client's own text.
        nlohmann::json gap = {
            {"reason", known ? "older than the replay ring" : "not a position of this stream (the server restarted?)"},
            {"oldest_id", state.ring.empty() ? nlohmann::json(nullptr)
                                             : nlohmann::json(state.position_text(oldest, state.ring.front()->event_id))}};
        into.push_back(make_control("notifications.gap", gap));
        state.counters.gaps.fetch_add(1, std::memory_order_relaxed);
      }
      for (const FramePtr& frame : state.ring) {
        if ((!complete || frame->position > after) && client->pattern.matches(frame->name)) {
          into.push_back(frame);
          ++replayed;
        }
      }
      if (!from_history) state.counters.replayed.fetch_add(replayed, std::memory_order_relaxed);
    }
    client->registered = true;
    state.clients.insert(client);
  }
  state.registry_changed.notify_all();
  state.counters.connections_total.fetch_add(1, std::memory_order_relaxed);
  std::unique_ptr<Connection> connection(new Connection(state_, client));

  if (from_history) {
    // Read without the stream's locks: live events meanwhile wait in the client's queue (its
    // stream() has not started), and those the history also holds are taken out below.
    std::unordered_set<std::string> ids;
    std::string why;
    std::optional<std::deque<FramePtr>> stored = state.history_replay(*client, position->event_id, ids, why);
    detail::MutexLock client_lock(client->mutex);
    if (stored) {
      std::erase_if(client->queue, [&ids](const FramePtr& frame) { return ids.erase(frame->event_id) > 0; });
      state.counters.replayed.fetch_add(stored->size(), std::memory_order_relaxed);
      state.counters.history_replays.fetch_add(1, std::memory_order_relaxed);
      client->replay = std::move(*stored);
      client->replayed_ids = std::move(ids);
    } else {
      const FramePtr& oldest = fallback.empty() ? FramePtr() : fallback.front();
      nlohmann::json gap = {{"reason", why},
                            {"oldest_id", oldest ? nlohmann::json(state.position_text(oldest->position, oldest->event_id))
                                                 : nlohmann::json(nullptr)}};
      state.counters.gaps.fetch_add(1, std::memory_order_relaxed);
      state.counters.replayed.fetch_add(fallback.size(), std::memory_order_relaxed);
      client->replay.push_back(make_control("notifications.gap", gap));
      client->replay.insert(client->replay.end(), fallback.begin(), fallback.end());
    }
  }
  return connection;
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
    health["oldest_id"] = state.ring.empty() ? nlohmann::json(nullptr) : nlohmann::json(state.position_text(state.ring.front()->position, state.ring.front()->event_id));
    health["newest_id"] = state.ring.empty() ? nlohmann::json(nullptr) : nlohmann::json(state.position_text(state.ring.back()->position, state.ring.back()->event_id));
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

EventStream::Connection::Connection(std::shared_ptr<EventStream::State> state, std::shared_ptr<Client> client)
    : state_(std::move(state)), client_(std::move(client)) {}

EventStream::Connection::~Connection() { state_->unregister(client_); }

void EventStream::Connection::close() {
  {
    detail::MutexLock lock(client_->mutex);
    if (client_->reason == CloseReason::none) client_->reason = CloseReason::closed;
  }
  client_->wake.notify_one();
}

void EventStream::Connection::stream(const Writer& write) {
  State& state = *state_;
  Client& client = *client_;
  const std::string hello = "retry: " + std::to_string(state.options.reconnect_delay.count()) + "\n: connected\n\n";
  if (!write(hello)) {
    state.counters.dropped_write.fetch_add(1, std::memory_order_relaxed);
    state.unregister(client_);
    return;
  }
  std::deque<FramePtr> batch;
  std::string buffer;
  for (;;) {
    bool last = false;
    {
      detail::UniqueMutexLock lock(client.mutex);
      while (client.reason == CloseReason::none && client.replay.empty() && client.queue.empty()) {
        lock.wait(client.wake);
      }
      if (client.reason != CloseReason::none) break;
      if (!client.replay.empty()) {
        batch.swap(client.replay);
      } else {
        batch.swap(client.queue);
      }
      client.last_frame = Clock::now();
      last = client.final_frame_queued && client.queue.empty() && client.replay.empty();
    }
    // One write per batch, of at most about 64 KiB: fewer system calls when the client is behind.
    std::size_t written = 0;
    bool failed = false;
    while (written < batch.size() && !failed) {
      buffer.clear();
      std::size_t count = 0;
      while (written + count < batch.size() && (count == 0 || buffer.size() < 65536)) {
        buffer.append(batch[written + count]->text);
        ++count;
      }
      if (!write(buffer)) {
        failed = true;
      } else {
        written += count;
        state.counters.frames_sent.fetch_add(count, std::memory_order_relaxed);
      }
    }
    batch.clear();
    if (failed) {
      bool counted = false;
      {
        detail::MutexLock lock(client.mutex);
        if (client.reason == CloseReason::none) {
          client.reason = CloseReason::write_failed;
          counted = true;
        }
      }
      if (counted) {
        state.counters.dropped_write.fetch_add(1, std::memory_order_relaxed);
        detail::log(LogLevel::info,
                    "event stream: a client of \"{}\" went away, or did not take a write within {} ms: its stream ended",
                    client.pattern_text, state.options.write_deadline.count());
      }
      break;
    }
    if (last) break;
  }
  state.unregister(client_);
}

}  // namespace notifications
