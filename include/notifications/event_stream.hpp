// EventStream: a notifier's events as Server-Sent Events (the text/event-stream format a browser's
// EventSource reads), with replay after a reconnect, heartbeats, and slow clients dropped instead
// of waited for (docs/event_stream.md). It knows no HTTP server: notifications::prometheus's
// MetricsServer serves it at GET /events, and anything that can write bytes to a client can call
// EventStream::Connection::stream().
//
// Thread-safety: every member function of EventStream may be called from any thread, concurrently.
// A Connection is used by one thread (the one serving that client); its close() may be called
// from any thread.
//
// Lifecycle (as the Bridge's): constructing wires everything and starts nothing; start() subscribes
// to the notifier and starts the dispatcher and the heartbeat threads ("ntf-sse-dispatch",
// "ntf-sse-heartbeat"); shutdown(deadline) stops the heartbeat, unsubscribes, lets the dispatcher
// hand out what it already took, then sends every client the "shutdown" event and waits, until the
// deadline, for their streams to end. A connection asked for before start() or after shutdown
// began is refused (EventStreamRefused, status 503), never left outside the registry.
//
// What a client receives (one frame per event, in the order the dispatcher took them):
//   id: <position>        "<stream>-<number>:<event id>", resumable: send it back as
//                         Last-Event-ID to get what followed it
//   event: <event name>
//   data: <envelope JSON>  docs/envelope.md, one line; the redact rules apply
// and, with nothing to send for heartbeat_interval, a comment line (": heartbeat").
//
// Replay: a connection with a Last-Event-ID first receives, from the replay ring (the last
// replay_events events the stream carried, whatever their name), every event after that position
// that matches its pattern, then the live events, with no gap and no duplicate between the two.
// When the position is no longer in the ring (older than its oldest event, or from another
// EventStream: a restarted server) and an EventHistory holds that event, the client receives what
// the history stored after it, then the live events, with no gap and no duplicate among the
// events the history holds. Otherwise it receives a "notifications.gap" event whose data says why
// and which position is the oldest kept, then everything the ring holds that matches, then the
// live events.
//
// Fork: an EventStream belongs to the process that started it; a forked child must not use it
// (its threads are not in the child) and its destructor there leaves it as it is.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/errors.hpp"
#include "notifications/pattern.hpp"

namespace notifications {

class Notifier;

// A longer record of past events than an EventStream's replay ring, which a client older than the
// ring is replayed from: make_sqlite_event_history() (notifications/sqlite.hpp) reads the events
// a sqlite:// file holds.
// Thread-safety: events_after() may be called from several threads at once (each connecting
// client's), never with a lock of the stream held.
class EventHistory {
 public:
  virtual ~EventHistory() = default;
  // The encoded envelopes (docs/envelope.md) of the events stored after the one whose envelope
  // id is `event_id`, oldest first, at most `limit`; nullopt when that event is not (or no
  // longer) stored. Throws when the record cannot be read.
  virtual std::optional<std::vector<std::string>> events_after(std::string_view event_id, std::size_t limit) = 0;
};

// Thread-safety: a plain value.
struct EventStreamOptions {
  // The events the stream carries (and keeps for replay); each client narrows it with its own
  // pattern. A stream subscribes to the notifier with it, so instrument() of a name it matches is
  // no longer free ("is anyone listening" becomes true).
  Pattern pattern = Pattern::all();
  std::size_t max_connections = 100;  // more are refused with status 503
  // How many events the replay ring keeps (0: none; a Last-Event-ID older than the newest event
  // then gets the history or the gap event).
  std::size_t replay_events = 10000;
  // Events taken from instrumenting threads and not yet taken by the dispatcher (which may hold
  // as many again in the batch it is handing out); past it an event is dropped (counted in
  // health()["dropped_events"] and logged), never waited for. Also the bound of a client's queue
  // before its stream() begins (while a history is read for it).
  std::size_t dispatch_queue = 65536;
  // Frames queued for a streaming client; a client this far behind is dropped (counted as
  // "slow"). Memory is bounded in frames, not bytes: a frame is about its envelope's size.
  std::size_t client_queue = 4096;
  std::chrono::milliseconds heartbeat_interval{15000};
  // A connection that received no event for this long is closed (0: never). Browsers reconnect
  // by themselves, with Last-Event-ID.
  std::chrono::milliseconds idle_timeout{0};
  // How long writing one frame to a client may take; the HTTP server enforces it (MetricsServer
  // sets its socket timeout to it). A client that does not take a frame in time is dropped.
  std::chrono::milliseconds write_deadline{5000};
  // The "retry:" field sent first: how long a browser waits before it reconnects.
  std::chrono::milliseconds reconnect_delay{2000};
  // Where a client older than the ring is replayed from (null: the ring only).
  std::shared_ptr<EventHistory> history{};
  // The most events one client is replayed from the history; a client further behind gets the
  // gap event instead (0: the history is not used).
  std::size_t history_events = 100000;
  // Payload, context and tags redaction rules, as BridgeConfig::redact (docs/configuration.md).
  std::vector<std::string> redact{};
  // Linux: the stream's threads (dispatcher, heartbeat, and each client's thread while it
  // streams) run under SCHED_BATCH, so that the threads one event wakes (one per client) do not
  // preempt the application's threads; false leaves them under the default policy.
  bool batch_scheduling = true;
  // The envelope's "producer" field (producer_instance is the process's instance id).
  std::string producer = "notifications";

  // Throws ConfigError naming the first bad option.
  void validate() const;
};

// A connection was refused: `status` is the HTTP status that says why (400: a bad pattern or
// Last-Event-ID; 503: too many connections, not started, or shutting down).
// Thread-safety: immutable once thrown.
class EventStreamRefused : public Error {
 public:
  EventStreamRefused(int status, const std::string& message)
      : Error("event_stream_refused", message), status_(status) {}
  int status() const noexcept { return status_; }

 private:
  int status_;
};

class EventStream {
 public:
  // Writes all of `bytes` to the client; false when it could not (the client went away, or the
  // write deadline passed). Called on the thread that called Connection::stream().
  using Writer = std::function<bool(std::string_view bytes)>;

  class Connection;

  // Wires the stream to `notifier`, which must outlive it. Throws ConfigError for bad options.
  EventStream(Notifier& notifier, EventStreamOptions options = {});
  // Shuts down (with the write deadline) when that was not done.
  ~EventStream();
  EventStream(const EventStream&) = delete;
  EventStream& operator=(const EventStream&) = delete;

  // Subscribes and starts the threads. Throws std::logic_error when called twice.
  void start();
  // See the lifecycle above. Idempotent (a later call returns what the first returned, once the
  // first is over); the deadline bounds the wait for clients, not the hand-out of the events the
  // dispatcher already took. Returns false when some client's stream had not ended
  // by the deadline (it ends at its next write).
  bool shutdown(std::chrono::milliseconds deadline);

  // Registers a client that receives the events matching `pattern` (the syntax of subscriptions,
  // docs/dispatch.md; empty: every event the stream carries), from after `last_event_id` when
  // not empty. Throws EventStreamRefused naming what was wrong.
  std::unique_ptr<Connection> connect(std::string_view pattern, std::string_view last_event_id = {});

  // The options it was made with (validated).
  const EventStreamOptions& options() const noexcept;

  // {"state", "connections", "max_connections", "connections_total", "refused", "dropped_slow",
  //  "dropped_write", "closed_idle", "events", "dropped_events", "frames_sent", "heartbeats",
  //  "replayed", "gaps", "history_replays", "history_skipped", "replay_events", "oldest_id", "newest_id"}:
  //  counters since start, the ring's size and ends.
  nlohmann::json health() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

// One registered client. Thread-safety: above.
class EventStream::Connection {
 public:
  ~Connection();  // unregisters
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Writes the stream to `write` until the client is dropped or closed, the stream shuts down
  // (after the "shutdown" event) or idle_timeout passes. Called once.
  void stream(const Writer& write);
  // Ends stream() at its next wake-up, from any thread.
  void close();

  struct Client;

 private:
  friend class EventStream;
  Connection(std::shared_ptr<EventStream::State> state, std::shared_ptr<Client> client);
  std::shared_ptr<EventStream::State> state_;
  std::shared_ptr<Client> client_;
};

}  // namespace notifications
