// Private: the parts of EventStream (notifications/event_stream.hpp) that its two files share:
// event_stream.cpp runs the stream (dispatch queue, replay ring, heartbeat, lifecycle, health),
// event_stream_client.cpp one client's life (connect, replay from the ring or the history, the
// writes of Connection::stream()).
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
//
// Scheduling: the stream's work is throughput work, and one event wakes as many threads as there
// are clients. On Linux its threads (the dispatcher, the heartbeat, and each client's thread
// while it streams) run under SCHED_BATCH: a woken one does not preempt the thread running, so
// the application's instrumenting threads keep their core (bench_sse: docs/benchmarks.md).
//
// Thread-safety: members as annotated (NOTIFICATIONS_GUARDED_BY); the functions are stateless.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "notifications/envelope.hpp"
#include "notifications/event_stream.hpp"
#include "notifications/notifier.hpp"
#include "process/thread_safety.hpp"
#include "remote/payload_redaction.hpp"

namespace notifications::detail::sse {

using Clock = std::chrono::steady_clock;

// One encoded event, shared by every client's queue and the replay ring.
struct Frame {
  std::uint64_t position = 0;  // 0: not in the ring (a control frame, or replayed from the history)
  std::string name;
  std::string event_id;  // the envelope's id; empty for control frames
  std::string text;  // the whole frame, ending with the blank line
};
using FramePtr = std::shared_ptr<const Frame>;

// A Last-Event-ID this stream wrote: "<stream>-<number>:<event id>".
struct Position {
  std::string_view stream;
  std::uint64_t number = 0;
  std::string_view event_id;
};

enum class CloseReason { none, closed, slow, write_failed, idle, shutdown };

// A comment-only frame (": <comment>").
FramePtr make_comment(std::string_view comment);
// A frame without id: "event: <event>\ndata: <data as JSON>".
FramePtr make_control(std::string_view event, const nlohmann::json& data);
// 16 random hex digits: a stream's part of its positions.
std::string stream_token();
// "id: <id>\nevent: <name>\ndata: <data>\n\n".
std::string frame_text(std::string_view id, std::string_view name, std::string_view data);
// nullopt when `text` is not a position of the form above.
std::optional<Position> parse_position(std::string_view text);

// The calling thread under SCHED_BATCH (Linux; nothing elsewhere or when refused) until the
// object is destroyed, which puts the thread's previous policy back: a client's thread belongs
// to the HTTP server, which runs other requests on it afterwards.
class BatchScheduling {
 public:
  explicit BatchScheduling(bool wanted) noexcept;
  ~BatchScheduling();
  BatchScheduling(const BatchScheduling&) = delete;
  BatchScheduling& operator=(const BatchScheduling&) = delete;

 private:
  int policy_ = -1;  // the previous policy; -1: nothing changed
  int priority_ = 0;
};

}  // namespace notifications::detail::sse

namespace notifications {

struct EventStream::Connection::Client {
  Client(Pattern p, std::string text) : pattern(std::move(p)), pattern_text(std::move(text)) {}

  const Pattern pattern;
  const std::string pattern_text;
  detail::Mutex mutex;
  std::condition_variable wake;
  // Replayed frames, written before `queue`; not bounded by client_queue (the ring bounds them).
  std::deque<detail::sse::FramePtr> replay NOTIFICATIONS_GUARDED_BY(mutex);
  std::deque<detail::sse::FramePtr> queue NOTIFICATIONS_GUARDED_BY(mutex);
  // Event ids replayed from the history: not sent again when they come live.
  std::unordered_set<std::string> replayed_ids NOTIFICATIONS_GUARDED_BY(mutex);
  detail::sse::CloseReason reason NOTIFICATIONS_GUARDED_BY(mutex) = detail::sse::CloseReason::none;
  bool final_frame_queued NOTIFICATIONS_GUARDED_BY(mutex) = false;  // the shutdown event: end after it
  // Set when stream() begins: before, the queue is bounded by dispatch_queue, not client_queue
  // (live events wait there while a history is read for the client).
  bool streaming NOTIFICATIONS_GUARDED_BY(mutex) = false;
  detail::sse::Clock::time_point last_event NOTIFICATIONS_GUARDED_BY(mutex) = detail::sse::Clock::now();
  detail::sse::Clock::time_point last_frame NOTIFICATIONS_GUARDED_BY(mutex) = detail::sse::Clock::now();
};

using Client = EventStream::Connection::Client;

struct EventStream::State {
  State(Notifier& n, EventStreamOptions o)
      : notifier(n), options(std::move(o)), redactor(options.redact), token(detail::sse::stream_token()) {}

  Notifier& notifier;
  const EventStreamOptions options;
  const detail::Redactor redactor;
  // This stream's part of every position ("<token>-<number>:<event id>"), and the envelope's
  // producer_instance of the events instrumented in this process.
  const std::string token;
  const pid_t owner = ::getpid();

  // Lifecycle: started and stopping only change under registry_mutex.
  mutable detail::Mutex registry_mutex;
  bool started NOTIFICATIONS_GUARDED_BY(registry_mutex) = false;
  bool stopping NOTIFICATIONS_GUARDED_BY(registry_mutex) = false;
  std::unordered_set<std::shared_ptr<Client>> clients NOTIFICATIONS_GUARDED_BY(registry_mutex);
  std::deque<detail::sse::FramePtr> ring NOTIFICATIONS_GUARDED_BY(registry_mutex);
  std::uint64_t next_position NOTIFICATIONS_GUARDED_BY(registry_mutex) = 1;
  std::condition_variable registry_changed;  // a client came or went; heartbeat stop

  detail::Mutex queue_mutex;
  std::deque<Event> queue NOTIFICATIONS_GUARDED_BY(queue_mutex);
  bool dispatcher_stop NOTIFICATIONS_GUARDED_BY(queue_mutex) = false;
  std::condition_variable queue_ready;

  bool heartbeat_stop NOTIFICATIONS_GUARDED_BY(registry_mutex) = false;

  // start() and shutdown() run one at a time, whole: neither sees the other half done.
  detail::Mutex lifecycle_mutex;
  Subscription subscription NOTIFICATIONS_GUARDED_BY(lifecycle_mutex);
  std::thread dispatcher NOTIFICATIONS_GUARDED_BY(lifecycle_mutex);
  std::thread heartbeat NOTIFICATIONS_GUARDED_BY(lifecycle_mutex);
  std::optional<bool> shutdown_result NOTIFICATIONS_GUARDED_BY(lifecycle_mutex);  // set by the first shutdown()

  struct Counters {
    std::atomic<std::uint64_t> connections_total{0}, refused{0}, dropped_slow{0}, dropped_write{0},
        closed_idle{0}, events{0}, dropped_events{0}, frames_sent{0}, heartbeats{0}, replayed{0}, gaps{0},
        history_replays{0}, history_skipped{0};
  } counters;

  void enqueue(const Event& event);
  void dispatch_loop();
  void heartbeat_loop();
  std::shared_ptr<detail::sse::Frame> encode(const Event& event);
  std::shared_ptr<detail::sse::Frame> encode(Envelope envelope);
  // The client's replay from the history after `event_id`: the frames, and the ids they carry.
  // nullopt when the history does not hold that event (or more than replay_events after it), or
  // cannot be read; `why` then says which.
  std::optional<std::deque<detail::sse::FramePtr>> history_replay(const Client& client, std::string_view event_id,
                                                     std::unordered_set<std::string>& ids, std::string& why);
  void fan_out(const detail::sse::FramePtr& frame) NOTIFICATIONS_REQUIRES(registry_mutex);
  void unregister(const std::shared_ptr<Client>& client);
  std::string position_text(std::uint64_t position, std::string_view event_id) const {
    std::string text = token + "-" + std::to_string(position);
    return text.append(":").append(event_id);
  }
  // Queues `frame` for `client` unless it is closed; drops a client whose queue is full.
  void push_live(Client& client, const detail::sse::FramePtr& frame);
};

}  // namespace notifications
