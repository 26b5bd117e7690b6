// Component notifications::sqlite, besides the sqlite:// transport (transports/sqlite.hpp):
//   - the SQLite outbox: where a Bridge keeps the events it accepted in a file until the
//     transport confirmed them, so that a broker outage, a crash or a deploy does not lose them.
//     Linking notifications::sqlite is enough: a BridgeConfig with durability async or sync, or
//     overflow spill, then uses it (register_durable_outbox). docs/outbox.md says what each mode
//     keeps, and what it cannot. list_outbox(), outbox_row() and purge_outbox() let an operator
//     see and drop what an outbox file holds;
//   - the SQLite durable store (make_sqlite_durable_store): the inbox and dead letters of durable
//     handlers (notifications/durable.hpp) in a file that survives restarts and is shared by the
//     processes of one machine. docs/durable_sqlite.md describes its tables and concurrency.
//
// Thread-safety: every function here may be called from any thread. The outbox returned is
// thread-safe as every Outbox (notifications/outbox.hpp), the store as every DurableStore
// (notifications/durable.hpp); SqliteDurableStoreOptions and OutboxRow are plain values.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "notifications/config.hpp"
#include "notifications/durable.hpp"
#include "notifications/event_stream.hpp"
#include "notifications/outbox.hpp"

namespace notifications {

// An EventStream's history (EventStreamOptions::history, docs/event_stream.md) read from the
// events the sqlite:// file at `path` holds (as long as its retention keeps them): a browser that
// reconnects after the stream's ring no longer reaches its position, or after a restart of the
// server, is replayed from the file. Each lookup opens the file read-only for itself: the file
// must exist by then (a lookup throws TransportError otherwise, naming it; the client gets the gap
// event). Thread-safe: lookups may run on several threads at once.
std::shared_ptr<EventHistory> make_sqlite_event_history(std::string path);

// An outbox in the file config.outbox.path (created when missing, WAL mode), under
// config.durability and config.outbox.synchronous, holding at most config.queue_capacity events
// (and config.queue_max_bytes) in memory besides what is committed. Events an earlier run left in
// the file are handed out first, in their order. One outbox per file: a second one, in this
// process or another, is refused. Throws OutboxError naming the file when it cannot be opened,
// is not a database, or is locked by another outbox.
std::shared_ptr<Outbox> make_sqlite_outbox(const BridgeConfig& config);

// ---- outbox rows, for operators (and the CLI built on them)
//
// An outbox file holds the events a Bridge accepted and the transport has not confirmed yet
// (durability async or sync, or spilled). They are sent first, in id order, with the same event
// ids, by the next start of a Bridge on that file: there is no separate "replay" of outbox rows,
// restarting the service is the replay. What a running outbox holds only in memory (async: the
// batch not yet committed) is not in the file and not listed.

// One stored event (a row of the table notifications_outbox).
struct OutboxRow {
  std::uint64_t id = 0;          // the row id: the order in which they are sent; never reused
  std::string event_id;          // the envelope id (Message::id) the event is sent with
  std::string name;              // the event name
  std::string payload;           // the payload, compact JSON text
  std::string traceparent;       // W3C traceparent, empty when none
  std::chrono::system_clock::time_point time{};  // when the event was instrumented
  std::chrono::microseconds duration{0};
  std::optional<std::pair<std::string, std::string>> exception;  // (type, message) of a failed block
  // The event's context and tags, {"context":{...},"tags":{...}} (compact JSON), empty for none.
  std::string attributes;
};

// Up to `limit` rows with ids above `after_id`, in id order (page with the last id returned).
// Reads with a connection of its own and takes no lock, so it works while a Bridge's outbox writes
// the file (WAL): the rows are those committed when the read began. Throws OutboxError naming the
// file when it does not exist, is not a database, or holds no outbox table.
std::vector<OutboxRow> list_outbox(const std::string& path, std::size_t limit = 100, std::uint64_t after_id = 0);
// The row `id`, if the file holds it. Throws as list_outbox().
std::optional<OutboxRow> outbox_row(const std::string& path, std::uint64_t id);
// Deletes the rows `ids` (empty: every row) in one transaction; returns how many were deleted
// (ids not in the file are skipped). Only while no outbox uses the file: a running outbox keeps
// which rows it loaded in memory and would still send them, so purge_outbox() takes the outbox's
// own lock ("<path>.lock", the one make_sqlite_outbox() holds for its life) without waiting, and
// when a Bridge holds it throws OutboxError naming the file and saying to stop the service first.
// While it purges, an outbox starting on the file is refused the same way. Throws OutboxError as
// list_outbox() too.
std::size_t purge_outbox(const std::string& path, const std::vector<std::uint64_t>& ids = {});

// ---- the durable store

// How the SQLite durable store uses its file. Thread-safety: a plain value.
struct SqliteDurableStoreOptions {
  enum class Synchronous {
    normal,  // a commit survives a crash of the process (WAL, synchronous=NORMAL)
    full,    // also of the OS or a power loss (synchronous=FULL; every commit waits for the disk)
  };
  // How long a write waits for another connection's lock (other processes, other store objects,
  // or an InboxWork of a handler that ran SQL) before it throws DurableError; 1 .. 600000.
  std::uint32_t busy_timeout_ms = 5000;
  Synchronous synchronous = Synchronous::normal;
  // False: open only a file that already holds a durable store (tools that inspect one, such as
  // the `notifications dlq` command): a missing file, or one without the store's tables, throws
  // DurableError naming it, and nothing is created.
  bool create = true;
};

// The inbox and dead letters of durable handlers in the SQLite file `path` (created when missing
// unless options.create is false, WAL mode), as tables notifications_inbox and
// notifications_dead_letters beside whatever else the file holds: it may be the file of a
// sqlite:// transport or of an outbox. Any number of store objects, in any number of processes of
// one machine, may use one file at once; each state change is one write transaction. Throws
// DurableError naming the file when it cannot be opened, is not a database, was written by a newer
// version, or an option is out of range.
//
// Connections: the store object's own one, under a mutex, for claim(), fail(), renew(),
// prune_done(), the dead letters and health(); and one per open InboxWork (from a small pool of
// the store object's), holding the work's transaction from its first execute() (or complete())
// until complete() or its destruction. So a handler's open work never makes the store object's
// other calls wait for the mutex; but once it executed SQL it holds the file's write lock, and
// every writer of the file (this store's claims and renewals included) waits for it, at most
// busy_timeout_ms: keep the handler's SQL short and at the end of the handler.
std::shared_ptr<DurableStore> make_sqlite_durable_store(const std::string& path,
                                                        SqliteDurableStoreOptions options = {});

}  // namespace notifications
