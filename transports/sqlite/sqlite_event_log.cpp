#include "sqlite_event_log.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

namespace notifications::sqlite {

namespace {

constexpr int kSchemaVersion = 1;

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS notifications_events("
    " seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, body BLOB NOT NULL,"
    " message_id TEXT NOT NULL, headers TEXT, time_us INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS notifications_consumers("
    " name TEXT NOT NULL, pattern TEXT NOT NULL, next_seq INTEGER NOT NULL, acked_seq INTEGER NOT NULL,"
    " created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, PRIMARY KEY(name, pattern)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS notifications_claims("
    " name TEXT NOT NULL, pattern TEXT NOT NULL, seq INTEGER NOT NULL, deliveries INTEGER NOT NULL,"
    " owner TEXT NOT NULL, lease_until_us INTEGER NOT NULL, PRIMARY KEY(name, pattern, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS notifications_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;";

// Binds name and pattern at 1 and 2.
void bind_key(Statement& statement, const ConsumerKey& key) {
  statement.bind(1, key.name);
  statement.bind(2, key.pattern);
}

// Binds one delivery of a claim: name, pattern, seq, deliveries and owner at 1 to 5.
void bind_delivery(Statement& statement, const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries,
                   const std::string& owner) {
  bind_key(statement, key);
  statement.bind(3, seq);
  statement.bind(4, static_cast<std::int64_t>(deliveries));
  statement.bind(5, owner);
}

// Runs a statement without results; returns the rows it changed.
int run(Database& db, Statement& statement) {
  statement.step();
  const int changed = sqlite3_changes(db.handle());
  statement.reset();
  return changed;
}

std::string headers_from_text(std::string_view text, std::vector<std::pair<std::string, std::string>>& out) {
  if (text.empty()) return {};
  const auto parsed = nlohmann::json::parse(text, nullptr, false);
  if (!parsed.is_array()) return "headers are not a JSON array";
  for (const auto& pair : parsed) {
    if (pair.is_array() && pair.size() == 2 && pair[0].is_string() && pair[1].is_string()) {
      out.emplace_back(pair[0].get<std::string>(), pair[1].get<std::string>());
    }
  }
  return {};
}

StoredMessage read_row(const Statement& statement) {
  StoredMessage row;
  row.seq = statement.int64(0);
  row.message.subject = std::string(statement.text(1));
  row.message.body = std::string(statement.blob(2));
  row.message.id = std::string(statement.text(3));
  if (!statement.is_null(4)) headers_from_text(statement.text(4), row.message.headers);
  return row;
}

}  // namespace

bool EventLog::configure(Database& db, BusyWait& busy, const SqliteTransportOptions& options) {
  // SQLite's own busy_timeout sleeps 1 ms at the first collision, then longer: a group member's
  // claim that meets a producer's commit (each a fraction of a millisecond) would wait that long.
  // This one starts at 20 us and doubles up to 1 ms, until busy_timeout has passed.
  busy.timeout = options.busy_timeout;
  sqlite3_busy_handler(
      db.handle(),
      [](void* context, int count) -> int {
        auto& wait = *static_cast<BusyWait*>(context);
        const auto now = std::chrono::steady_clock::now();
        if (count == 0) wait.since = now;
        if (now - wait.since >= wait.timeout) return 0;
        const auto pause = std::chrono::microseconds(20) * (1 << std::min(count, 6));
        std::this_thread::sleep_for(std::min<std::chrono::microseconds>(pause, std::chrono::milliseconds(1)));
        return 1;
      },
      &busy);
  db.switch_to_wal(options.busy_timeout);
  db.exec(options.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", "set synchronous");
  {
    WriteTransaction transaction(db);
    db.exec(kSchema, "create the transport's tables");
    std::string version;
    {
      Statement read(db, "SELECT value FROM notifications_meta WHERE key='transport_schema'", "read the schema version");
      if (read.step()) version = std::string(read.text(0));
    }
    if (!version.empty() && std::atoi(version.c_str()) > kSchemaVersion) {
      db.fail(SQLITE_ERROR, "schema version " + version + " is newer than this library's (" +
                                std::to_string(kSchemaVersion) + "): a newer program wrote it");
    }
    db.exec("INSERT OR REPLACE INTO notifications_meta VALUES('transport_schema','1')", "write the schema version");
    transaction.commit();
  }
  return true;
}

EventLog::EventLog(const std::string& path, const SqliteTransportOptions& options)
    : db_(path, Database::Role::transport),
      configured_(configure(db_, busy_, options)),
      insert_(db_, "INSERT INTO notifications_events(subject, body, message_id, headers, time_us) VALUES(?,?,?,?,?)",
              "append a message"),
      data_version_(db_, "PRAGMA data_version", "read data_version"),
      last_sequence_(db_, "SELECT COALESCE(max(seq), 0) FROM notifications_events", "read the last sequence"),
      first_at_time_(db_, "SELECT seq FROM notifications_events WHERE time_us >= ? ORDER BY seq LIMIT 1",
                     "find a start time"),
      read_after_(db_,
                  "SELECT seq, subject, body, message_id, headers FROM notifications_events WHERE seq > ?"
                  " ORDER BY seq LIMIT ?",
                  "read messages"),
      read_one_(db_, "SELECT seq, subject, body, message_id, headers FROM notifications_events WHERE seq = ?",
                "read a message"),
      consumer_create_(db_,
                       "INSERT OR IGNORE INTO notifications_consumers(name, pattern, next_seq, acked_seq,"
                       " created_us, updated_us) VALUES(?,?,?,?,?,?)",
                       "create a consumer"),
      consumer_next_(db_, "SELECT next_seq FROM notifications_consumers WHERE name=? AND pattern=?",
                     "read a consumer's position"),
      consumer_advance_(db_,
                        "UPDATE notifications_consumers SET next_seq=?3, acked_seq=?4, updated_us=?5"
                        " WHERE name=?1 AND pattern=?2",
                        "move a consumer's position"),
      owners_(db_, "SELECT DISTINCT owner FROM notifications_claims WHERE name=? AND pattern=? AND owner != ''",
              "read claim owners"),
      release_owner_(db_,
                     "UPDATE notifications_claims SET owner='', lease_until_us=0 WHERE name=? AND pattern=? AND owner=?",
                     "release an exited member's claims"),
      claim_remove_(db_,
                    "DELETE FROM notifications_claims WHERE name=? AND pattern=? AND seq=? AND deliveries=? AND owner=?",
                    "settle a delivery"),
      claim_free_(db_,
                  "UPDATE notifications_claims SET owner='', lease_until_us=?6 WHERE name=?1 AND pattern=?2 AND seq=?3"
                  " AND deliveries=?4 AND owner=?5",
                  "nak a delivery"),
      claim_extend_(db_,
                    "UPDATE notifications_claims SET lease_until_us=?6 WHERE name=?1 AND pattern=?2 AND seq=?3"
                    " AND deliveries=?4 AND owner=?5",
                    "extend a delivery's ack wait"),
      claims_due_(db_,
                  "SELECT seq, deliveries, owner FROM notifications_claims WHERE name=? AND pattern=?"
                  " AND lease_until_us <= ? ORDER BY seq LIMIT ?",
                  "read due redeliveries"),
      claim_take_(db_,
                  "UPDATE notifications_claims SET owner=?4, deliveries=deliveries+1, lease_until_us=?5"
                  " WHERE name=?1 AND pattern=?2 AND seq=?3",
                  "claim a redelivery"),
      claim_drop_(db_, "DELETE FROM notifications_claims WHERE name=? AND pattern=? AND seq=?", "drop a claim"),
      claim_insert_(db_,
                    "INSERT OR IGNORE INTO notifications_claims(name, pattern, seq, deliveries, owner, lease_until_us)"
                    " VALUES(?,?,?,1,?,?)",
                    "claim a message"),
      claims_summary_(db_,
                      "SELECT count(*), min(seq), min(lease_until_us) FROM notifications_claims"
                      " WHERE name=? AND pattern=?",
                      "summarise claims"),
      delete_before_seq_(db_,
                         "DELETE FROM notifications_events WHERE seq < ?"
                         " AND seq < (SELECT max(seq) FROM notifications_events)",
                         "delete old messages"),
      delete_consumed_(db_,
                       "DELETE FROM notifications_events WHERE seq <= (SELECT min(acked_seq) FROM"
                       " notifications_consumers) AND seq < (SELECT max(seq) FROM notifications_events)",
                       "delete consumed messages") {}

void EventLog::append(std::span<const Message> batch, std::int64_t now_us) {
  WriteTransaction transaction(db_);
  for (const Message& message : batch) {
    insert_.bind(1, message.subject);
    insert_.bind_blob(2, message.body);
    insert_.bind(3, message.id);
    if (message.headers.empty()) {
      insert_.bind_null(4);
    } else {
      nlohmann::json pairs = nlohmann::json::array();
      for (const auto& [key, value] : message.headers) pairs.push_back({key, value});
      headers_text_ = pairs.dump();
      insert_.bind(4, headers_text_);
    }
    insert_.bind(5, now_us);
    insert_.step();
    insert_.reset();
  }
  transaction.commit();
}

std::int64_t EventLog::data_version() {
  data_version_.step();
  const std::int64_t version = data_version_.int64(0);
  data_version_.reset();
  return version;
}

std::int64_t EventLog::last_sequence() {
  const std::int64_t seq = last_sequence_.step() ? last_sequence_.int64(0) : 0;
  last_sequence_.reset();
  return seq;
}

std::int64_t EventLog::position_before_time(std::int64_t time_us) {
  first_at_time_.bind(1, time_us);
  const bool found = first_at_time_.step();
  const std::int64_t seq = found ? first_at_time_.int64(0) - 1 : 0;
  first_at_time_.reset();
  return found ? seq : last_sequence();
}

void EventLog::read_after(std::int64_t after, std::size_t limit, std::vector<StoredMessage>& out) {
  read_after_.bind(1, after);
  read_after_.bind(2, static_cast<std::int64_t>(limit));
  try {
    while (read_after_.step()) out.push_back(read_row(read_after_));
  } catch (...) {
    read_after_.reset();
    throw;
  }
  read_after_.reset();
}

std::optional<StoredMessage> EventLog::read_one(std::int64_t seq) {
  read_one_.bind(1, seq);
  std::optional<StoredMessage> row;
  if (read_one_.step()) row = read_row(read_one_);
  read_one_.reset();
  return row;
}

std::int64_t EventLog::ensure_consumer(const ConsumerKey& key, std::int64_t position, std::int64_t now_us) {
  bind_key(consumer_create_, key);
  consumer_create_.bind(3, position);
  consumer_create_.bind(4, position);
  consumer_create_.bind(5, now_us);
  consumer_create_.bind(6, now_us);
  run(db_, consumer_create_);
  return next_seq(key);
}

std::int64_t EventLog::next_seq(const ConsumerKey& key) {
  bind_key(consumer_next_, key);
  const std::int64_t next = consumer_next_.step() ? consumer_next_.int64(0) : 0;
  consumer_next_.reset();
  return next;
}

void EventLog::advance(const ConsumerKey& key, std::int64_t next_seq, std::int64_t acked_seq, std::int64_t now_us) {
  bind_key(consumer_advance_, key);
  consumer_advance_.bind(3, next_seq);
  consumer_advance_.bind(4, acked_seq);
  consumer_advance_.bind(5, now_us);
  run(db_, consumer_advance_);
}

std::vector<std::string> EventLog::claim_owners(const ConsumerKey& key) {
  bind_key(owners_, key);
  std::vector<std::string> owners;
  while (owners_.step()) owners.emplace_back(owners_.text(0));
  owners_.reset();
  return owners;
}

void EventLog::release_owner(const ConsumerKey& key, const std::string& owner) {
  bind_key(release_owner_, key);
  release_owner_.bind(3, owner);
  run(db_, release_owner_);
}

bool EventLog::remove_claim(const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries,
                            const std::string& owner) {
  bind_delivery(claim_remove_, key, seq, deliveries, owner);
  return run(db_, claim_remove_) > 0;
}

bool EventLog::free_claim_at(const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries,
                             const std::string& owner, std::int64_t available_us) {
  bind_delivery(claim_free_, key, seq, deliveries, owner);
  claim_free_.bind(6, available_us);
  return run(db_, claim_free_) > 0;
}

bool EventLog::extend_claim(const ConsumerKey& key, std::int64_t seq, std::uint32_t deliveries,
                            const std::string& owner, std::int64_t lease_until_us) {
  bind_delivery(claim_extend_, key, seq, deliveries, owner);
  claim_extend_.bind(6, lease_until_us);
  return run(db_, claim_extend_) > 0;
}

void EventLog::due_claims(const ConsumerKey& key, std::int64_t now_us, std::size_t limit, std::vector<Claim>& out) {
  bind_key(claims_due_, key);
  claims_due_.bind(3, now_us);
  claims_due_.bind(4, static_cast<std::int64_t>(limit));
  while (claims_due_.step()) {
    out.push_back(Claim{claims_due_.int64(0), static_cast<std::uint32_t>(claims_due_.int64(1)),
                        std::string(claims_due_.text(2))});
  }
  claims_due_.reset();
}

void EventLog::take_claim(const ConsumerKey& key, std::int64_t seq, const std::string& owner,
                          std::int64_t lease_until_us) {
  bind_key(claim_take_, key);
  claim_take_.bind(3, seq);
  claim_take_.bind(4, owner);
  claim_take_.bind(5, lease_until_us);
  run(db_, claim_take_);
}

void EventLog::drop_claim(const ConsumerKey& key, std::int64_t seq) {
  bind_key(claim_drop_, key);
  claim_drop_.bind(3, seq);
  run(db_, claim_drop_);
}

void EventLog::insert_claim(const ConsumerKey& key, std::int64_t seq, const std::string& owner,
                            std::int64_t lease_until_us) {
  bind_key(claim_insert_, key);
  claim_insert_.bind(3, seq);
  claim_insert_.bind(4, owner);
  claim_insert_.bind(5, lease_until_us);
  run(db_, claim_insert_);
}

ClaimSummary EventLog::claims(const ConsumerKey& key) {
  bind_key(claims_summary_, key);
  ClaimSummary summary;
  if (claims_summary_.step()) {
    summary.count = claims_summary_.int64(0);
    summary.lowest_seq = claims_summary_.int64(1);
    summary.earliest_lease_us = claims_summary_.int64(2);
  }
  claims_summary_.reset();
  return summary;
}

std::int64_t EventLog::delete_old(std::int64_t cutoff_us, bool consumed) {
  std::int64_t deleted = 0;
  WriteTransaction transaction(db_);
  if (cutoff_us > 0) {
    first_at_time_.bind(1, cutoff_us);
    const bool found = first_at_time_.step();
    const std::int64_t keep_from = found ? first_at_time_.int64(0) : last_sequence() + 1;
    first_at_time_.reset();
    delete_before_seq_.bind(1, keep_from);
    deleted += run(db_, delete_before_seq_);
  }
  if (consumed) deleted += run(db_, delete_consumed_);
  transaction.commit();
  return deleted;
}

}  // namespace notifications::sqlite
