// EventStream (notifications/event_stream.hpp), one client's life: connect() (the checks, the
// replay from the ring or from the history, the registration) and Connection (its writes, its
// end). Threads and locks: stream/event_stream_state.hpp.
#include <algorithm>
#include <charconv>
#include <utility>
#include <vector>

#include "process/log.hpp"
#include "stream/event_stream_state.hpp"

namespace notifications {

namespace detail::sse {

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

}  // namespace detail::sse

using namespace detail::sse;

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
    // The stream's own pattern too: the file may hold events this stream does not carry.
    if (!options.pattern.matches(decoded.envelope->name) || !client.pattern.matches(decoded.envelope->name)) continue;
    std::shared_ptr<Frame> frame;
    try {
      frame = encode(std::move(*decoded.envelope));
    } catch (const std::exception& e) {
      counters.history_skipped.fetch_add(1, std::memory_order_relaxed);
      detail::log(LogLevel::warn, "event stream: skipped a stored event that cannot be streamed: {}", e.what());
      continue;
    }
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
  const BatchScheduling batch_scheduling(state.options.batch_scheduling);
  {
    detail::MutexLock lock(client.mutex);
    client.streaming = true;
  }
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
    // Writes of at most about 64 KiB: fewer system calls when the client is behind. Each must be
    // taken within the write deadline (the server's socket timeout bounds each send() only, and
    // a client that reads a little at a time would restart it), and a client dropped meanwhile
    // (too far behind) gets no more of the batch.
    std::size_t written = 0;
    bool failed = false;
    while (written < batch.size() && !failed) {
      if (written > 0) {
        detail::MutexLock lock(client.mutex);
        if (client.reason != CloseReason::none) break;
      }
      buffer.clear();
      std::size_t count = 0;
      while (written + count < batch.size() && (count == 0 || buffer.size() < 65536)) {
        buffer.append(batch[written + count]->text);
        ++count;
      }
      const auto started = Clock::now();
      if (!write(buffer) || Clock::now() - started > state.options.write_deadline) {
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
