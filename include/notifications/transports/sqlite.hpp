// SQLite transport (sqlite://): processes on one machine exchange messages through one SQLite
// file, with no server. Component notifications::sqlite; linking it registers the "sqlite" scheme.
//
// Storage: producers append rows (one write transaction per publish() batch, WAL mode) to the
// table notifications_events, numbered by a sequence that only grows. publish() returns once its
// batch is committed: a published message survives a crash of any process (synchronous=normal) or
// also of the OS (synchronous=full). Retention removes rows older than max_age and, with
// delete_consumed, rows every named consumer has acknowledged, but never the newest row (the
// next one is numbered after it); a row is otherwise kept.
//
// Subscriptions, by DeliveryOptions:
//   plain (no group, no durable): reads from this process's memory position; starts at
//     `start` (new_only: after the last row at subscribe; all_retained; from_time; from_sequence);
//     its position ends with it. Acknowledgements are kept in memory.
//   named (group or durable; the durable name wins when both are set): a consumer identified by
//     (name, pattern), stored in the file (notifications_consumers), shared by every subscription
//     with that name and pattern in any process: each message goes to one member, claimed in a
//     write transaction (notifications_claims), so a member that dies holds nothing for long.
//     `start` applies when the consumer is created; later subscriptions resume at its position.
// Every delivery must be settled (Delivery::settle, exactly once, from any thread): ack ends it,
// nak redelivers it after Settlement::delay (nak_delay when zero), term ends it as failed (counted
// "terminated"). An unsettled delivery is redelivered after ack_wait (in_progress restarts it);
// one whose claimant process has exited is released when a member of its consumer subscribes.
// After max_deliveries deliveries (0: no limit) a message is not delivered again: counted
// "exhausted" and logged. A subscription holds at most max_in_flight unsettled deliveries; it
// reads more as they are settled. Settlements made after stop() are still written.
// Order: each subscription sees messages in sequence order, except that a nak'd or expired
// delivery may come back after later ones (nak_may_be_overtaken). DeliveryOptions::ordered holds
// the next message of a consumer (across all its members) until the previous one is settled; a
// nak'd one then comes back before anything later.
//
// Polling, demand-driven: one poller thread per started transport reads for all its
// subscriptions; it polls again at once while there was work, otherwise waits, doubling from
// min_poll_interval up to idle_interval (so an idle transport wakes at most 1/idle_interval
// times a second). A publish() through any sqlite:// transport of this process on the same file
// wakes it at once; another process's writes are seen at its next poll. A poll that finds the
// file unchanged (PRAGMA data_version) and no redelivery due reads nothing.
// Delivery handlers run on the poller thread: as every DeliveryHandler, they must only hand off.
//
// Errors: a file that cannot be opened, is not a database, or was made by an incompatible version
// fails start() with a TransportError naming the file and what to do. A write that fails
// (busy past busy_timeout, disk full, I/O error) makes publish() accept nothing more (transient);
// what it committed before stays. Polls that fail are logged (once per kind of failure), counted
// in health() ("poll_errors") and retried at idle_interval.
//
// Fork: the connections and the poller cannot cross fork(); prepare_fork() stops the poller and
// closes them, after_fork() reopens them in the parent and in the child (each process then claims
// as a member of its named consumers).
//
// URL: "sqlite:///abs/path/events.db" or "sqlite://relative/path.db", with options as query
// parameters or in TransportConfig::options (the URL wins): synchronous (normal|full),
// busy_timeout_ms, idle_interval_ms, min_poll_interval_us, batch_size, max_in_flight, ack_wait_ms,
// max_deliveries, nak_delay_ms, max_age_ms (0: kept), delete_consumed (true|false),
// cleanup_interval_ms. Unknown keys and bad values throw TransportError naming them.
//
// Capabilities: persistent, ordered, consumer_groups, acknowledgements, durable_consumers,
// start_positions, nak_may_be_overtaken, ordered_delivery_option; not exactly_once (a publisher
// that repeats a message after a crash stores it twice; the Bridge's redelivery suppression
// removes such repeats within its window), no dedupe window, no server. Message::id and headers
// are stored with the row. health(): kind, state, path, published, delivered, redelivered,
// acked, naked, terminated, exhausted, expired, stale_settlements, retention_deleted,
// deleted_before_redelivery, poll_errors, polls, idle_wakeups, last_sequence,
// subscriptions (pattern, consumer, position, lag, in_flight).
//
// Thread-safety: as every Transport (notifications/transport.hpp): any member from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "notifications/transport.hpp"

namespace notifications {

inline constexpr TransportCapabilities kSqliteCapabilities{.persistent = true,
                                                           .ordered = true,
                                                           .consumer_groups = true,
                                                           .acknowledgements = true,
                                                           .durable_consumers = true,
                                                           .start_positions = true,
                                                           .nak_may_be_overtaken = true,
                                                           .ordered_delivery_option = true};

// Thread-safety: a plain value.
struct SqliteTransportOptions {
  std::string path;                                      // the database file; created when missing
  bool synchronous_full = false;                         // false: synchronous=normal
  std::chrono::milliseconds busy_timeout{5000};          // waiting for another writer's lock
  std::chrono::milliseconds idle_interval{100};          // the longest wait between polls
  std::chrono::microseconds min_poll_interval{200};      // the first wait after a poll found nothing
  std::size_t batch_size = 256;                          // rows read per poll and subscription
  std::size_t max_in_flight = 1024;                      // unsettled deliveries per subscription
  std::chrono::milliseconds ack_wait{30000};             // default DeliveryOptions::ack_wait
  std::uint32_t max_deliveries = 0;                      // default DeliveryOptions::max_deliveries
  std::chrono::milliseconds nak_delay{0};                // redelivery delay of a nak without one
  std::chrono::milliseconds max_age{0};                  // retention by age; 0: rows are kept
  bool delete_consumed = false;                          // delete rows every named consumer acked
  std::chrono::milliseconds cleanup_interval{1000};      // how often retention runs
};

// A sqlite:// transport, not started. Throws TransportError when options are invalid (empty
// path, zero batch_size, max_in_flight or idle_interval, min_poll_interval above idle_interval).
std::unique_ptr<Transport> make_sqlite_transport(SqliteTransportOptions options);

// The options that make_transport() uses for a "sqlite://..." URL and config.options. Throws
// TransportError naming the URL and the bad key or value.
SqliteTransportOptions sqlite_options_from_config(const TransportConfig& config);

}  // namespace notifications
