// Private to notifications::sqlite: the sqlite:// transport's file, its tables and every statement
// the transport runs on it. The transport decides when; this says how.
//
// Tables (schema version 1, kept in notifications_meta as "transport_schema"):
//   notifications_events    (seq, subject, body, message_id, headers, time_us); retention never
//                           deletes the newest row, so a new row's seq (max + 1) is never one a
//                           consumer already passed, without AUTOINCREMENT's extra page write
//                           per commit
//   notifications_consumers (name, pattern) -> next_seq (read up to), acked_seq (all settled up
//                           to), created_us, updated_us
//   notifications_claims    (name, pattern, seq) -> deliveries, owner ("" when free), lease_until_us
// Times are wall-clock microseconds since the epoch, shared by every process on the machine.
//
// Thread-safety: none; an EventLog is one connection, used under its owner's mutex.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "notifications/transport.hpp"
#include "notifications/transports/sqlite.hpp"
#include "sqlite_db.hpp"

namespace notifications::sqlite {

// One stored message.
struct StoredMessage {
  std::int64_t seq = 0;
  Message message;
};

// A named consumer's identity in the file.
struct ConsumerKey {
  std::string name;
  std::string pattern;
};

// What a claim row says.
struct Claim {
  std::int64_t seq = 0;
  std::uint32_t deliveries = 0;
  std::string owner;
};

// The claims of one consumer in summary.
struct ClaimSummary {
  std::int64_t count = 0;
  std::int64_t lowest_seq = 0;        // 0 when count == 0
  std::int64_t earliest_lease_us = 0; // 0 when count == 0
};

class EventLog {
 public:
  // Opens (creating) the file: WAL, synchronous, busy timeout, schema. Throws TransportError
  // naming the file (not a database, a newer schema, cannot open).
  EventLog(const std::string& path, const SqliteTransportOptions& options);

  Database& db() { return db_; }

  // Appends `batch` in one write transaction; throws TransportError (db().last_failure() says why).
  void append(std::span<const Message> batch, std::int64_t now_us);

  // PRAGMA data_version: changes when another connection committed.
  std::int64_t data_version();
  // The last sequence assigned (0 when none): the newest row, which retention keeps.
  std::int64_t last_sequence();
  // The position just before the first message stored at or after `time_us` (last_sequence()
  // when there is none).
  std::int64_t position_before_time(std::int64_t time_us);
  // Up to `limit` messages after `after`, in order, appended to `out`.
  void read_after(std::int64_t after, std::size_t limit, std::vector<StoredMessage>& out);
  std::optional<StoredMessage> read_one(std::int64_t seq);

  // Named consumers. Call inside a write transaction (WriteTransaction on db()).
  // Creates it at `position` unless it exists; returns its next_seq.
  std::int64_t ensure_consumer(const ConsumerKey& key, std::int64_t position, std::int64_t now_us);
  std::int64_t next_seq(const ConsumerKey& key);
  void advance(const ConsumerKey& key, std::int64_t next_seq, std::int64_t acked_seq, std::int64_t now_us);
  // The owners holding claims of `key`.
  std::vector<std::string> claim_owners(const ConsumerKey& key);
  // Frees every claim of `owner` at once.
  void release_owner(const ConsumerKey& key, const std::string& owner);
  // Settlement of the delivery (seq, deliveries) by `owner`; false when that claim is no longer
  // the owner's (expired and taken by another member, or already settled).
  bool remove_claim(const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries, const std::string& owner);
  bool free_claim_at(const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries, const std::string& owner,
                     std::int64_t available_us);
  bool extend_claim(const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries, const std::string& owner,
                    std::int64_t lease_until_us);
  // Claims whose lease ended by `now_us` (free or expired), lowest first.
  void due_claims(const ConsumerKey& key, std::int64_t now_us, std::size_t limit, std::vector<Claim>& out);
  void take_claim(const ConsumerKey& key, std::int64_t seq, const std::string& owner, std::int64_t lease_until_us);
  void drop_claim(const ConsumerKey& key, std::int64_t seq);
  void insert_claim(const ConsumerKey& key, std::int64_t seq, const std::string& owner, std::int64_t lease_until_us);
  ClaimSummary claims(const ConsumerKey& key);

  // Retention: deletes messages stored before `cutoff_us` (when non-zero) and, with
  // `consumed`, those every named consumer acknowledged, but never the newest. Returns how many
  // were deleted.
  std::int64_t delete_old(std::int64_t cutoff_us, bool consumed);

 private:
  // The busy handler's state: when the current wait for a lock began, and how long it may last.
  struct BusyWait {
    std::chrono::steady_clock::time_point since{};
    std::chrono::milliseconds timeout{0};
  };

  // Sets the busy handler and the pragmas and creates the tables; runs between opening db_ and
  // preparing statements.
  static bool configure(Database& db, BusyWait& busy, const SqliteTransportOptions& options);

  BusyWait busy_;  // before db_: the handler that points at it is set on db_
  Database db_;
  bool configured_;
  Statement insert_, data_version_, last_sequence_, first_at_time_, read_after_, read_one_;
  Statement consumer_create_, consumer_next_, consumer_advance_;
  Statement owners_, release_owner_, claim_remove_, claim_free_, claim_extend_, claims_due_, claim_take_,
      claim_drop_, claim_insert_, claims_summary_;
  Statement delete_before_seq_, delete_consumed_;
  std::string headers_text_;  // reused by append()
};

}  // namespace notifications::sqlite
