// The SQLite durable store (make_sqlite_durable_store in include/notifications/sqlite.hpp): the
// inbox's claims, failures and renewals, the dead letters and health, on the store object's own
// connection. The file, its tables and connections: sqlite_durable_db.hpp; the handler's work:
// sqlite_durable_work.cpp.
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/durable.hpp"
#include "notifications/sqlite.hpp"
#include "sqlite_durable_db.hpp"

namespace notifications {
namespace {

using detail::MutexLock;
using sqlite::Connection;
using sqlite::Database;
using sqlite::from_us;
using sqlite::now_us;
using sqlite::run;
using sqlite::Statement;
using sqlite::to_us;
using sqlite::Use;
using sqlite::WorkPool;
using sqlite::WriteTransaction;

constexpr std::uint32_t kMaxBusyTimeoutMs = 600000;

std::int64_t clamp_to_int64(std::size_t n) {
  return n > static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max())
             ? std::numeric_limits<std::int64_t>::max()
             : static_cast<std::int64_t>(n);
}

// The statements of a store object's own connection.
// Thread-safety: none; used under the store's mutex.
struct StoreStatements {
  explicit StoreStatements(Database& db)
      : inbox_read(db,
                   "SELECT state, owner, failed_attempts, last_error, renewed_at_us FROM notifications_inbox"
                   " WHERE handler=? AND event_id=?",
                   "read an inbox row"),
        inbox_insert(db,
                     "INSERT INTO notifications_inbox(handler, event_id, state, owner, failed_attempts, last_error,"
                     " claimed_at_us, renewed_at_us, done_at_us) VALUES(?1, ?2, 'pending', ?3, 0, '', ?4, ?4, NULL)",
                     "claim a new event"),
        inbox_take(db,
                   "UPDATE notifications_inbox SET state='pending', owner=?3, claimed_at_us=?4, renewed_at_us=?4"
                   " WHERE handler=?1 AND event_id=?2",
                   "claim an event"),
        inbox_release(db,
                      "UPDATE notifications_inbox SET owner='' WHERE handler=?1 AND event_id=?2 AND state='pending'"
                      " AND owner=?3",
                      "release a claim"),
        inbox_fail(db,
                   "UPDATE notifications_inbox SET failed_attempts=failed_attempts+1, last_error=?4, owner='',"
                   " first_failed_at_us=COALESCE(first_failed_at_us, ?5)"
                   " WHERE handler=?1 AND event_id=?2 AND state='pending' AND owner=?3",
                   "record a failed attempt"),
        inbox_failures(db, "SELECT failed_attempts FROM notifications_inbox WHERE handler=? AND event_id=?",
                       "read an event's failures"),
        inbox_first_failure(db,
                            "SELECT first_failed_at_us FROM notifications_inbox WHERE handler=? AND event_id=?"
                            " AND first_failed_at_us IS NOT NULL",
                            "read an event's first failure"),
        inbox_renew(db, "UPDATE notifications_inbox SET renewed_at_us=?2 WHERE owner=?1 AND state='pending'",
                    "renew an owner's claims"),
        inbox_prune(db,
                    "DELETE FROM notifications_inbox WHERE handler=?1 AND state='done' AND (done_at_us < ?2 OR"
                    " (done_at_us, event_id) < (SELECT done_at_us, event_id FROM notifications_inbox"
                    " WHERE handler=?1 AND state='done' ORDER BY done_at_us DESC, event_id DESC LIMIT 1 OFFSET ?3))",
                    "prune done inbox rows"),
        inbox_dead(db,
                   "INSERT INTO notifications_inbox(handler, event_id, state, owner, failed_attempts, last_error,"
                   " claimed_at_us, renewed_at_us, done_at_us) VALUES(?1, ?2, 'dead', '', ?3, ?4, ?5, ?5, NULL)"
                   " ON CONFLICT(handler, event_id) DO UPDATE SET state='dead', owner='', last_error=excluded.last_error"
                   " WHERE state='dead' OR (state='pending' AND owner IN (?6, ''))",
                   "mark an event dead in the inbox"),
        inbox_counts(db, "SELECT state, count(*) FROM notifications_inbox GROUP BY state", "count inbox rows"),
        letter_insert(db,
                      "INSERT INTO notifications_dead_letters(handler, event_id, subject, body, reason, last_error,"
                      " attempts, first_failed_at_us, dead_at_us) VALUES(?,?,?,?,?,?,?,?,?)",
                      "store a dead letter"),
        letters_read(db,
                     "SELECT id, handler, event_id, subject, body, reason, last_error, attempts, first_failed_at_us,"
                     " dead_at_us FROM notifications_dead_letters WHERE id > ?1 AND (?2 = '' OR handler = ?2)"
                     " ORDER BY id LIMIT ?3",
                     "read dead letters"),
        letter_read(db,
                    "SELECT id, handler, event_id, subject, body, reason, last_error, attempts, first_failed_at_us,"
                    " dead_at_us FROM notifications_dead_letters WHERE id = ?",
                    "read a dead letter"),
        letter_update(db,
                      "UPDATE notifications_dead_letters SET attempts=attempts+1, last_error=?2, dead_at_us=?3"
                      " WHERE id=?1 RETURNING handler, event_id, attempts",
                      "update a dead letter"),
        letter_remove(db, "DELETE FROM notifications_dead_letters WHERE id=?", "remove a dead letter"),
        inbox_take_back(db,
                        "UPDATE notifications_inbox SET state='pending', owner='', failed_attempts=0, last_error='',"
                        " first_failed_at_us=NULL, renewed_at_us=?3 WHERE handler=?1 AND event_id=?2 AND state='dead'",
                        "make a dead event claimable again"),
        letters_purge(db, "DELETE FROM notifications_dead_letters WHERE ?1 = '' OR handler = ?1", "purge dead letters"),
        letters_count(db, "SELECT count(*) FROM notifications_dead_letters", "count dead letters") {}

  Statement inbox_read, inbox_insert, inbox_take, inbox_release, inbox_fail, inbox_failures, inbox_first_failure, inbox_renew,
      inbox_prune, inbox_dead, inbox_counts;
  Statement letter_insert, letters_read, letter_read, letter_update, letter_remove, inbox_take_back, letters_purge,
      letters_count;
};

DeadLetter read_letter(Statement& s) {
  DeadLetter letter;
  letter.id = static_cast<std::uint64_t>(s.int64(0));
  letter.handler = std::string(s.text(1));
  letter.event_id = std::string(s.text(2));
  letter.subject = std::string(s.text(3));
  letter.body = std::string(s.blob(4));
  letter.reason = std::string(s.text(5));
  letter.last_error = std::string(s.text(6));
  letter.attempts = static_cast<std::uint32_t>(s.int64(7));
  letter.first_failed_at = from_us(s.int64(8));
  letter.dead_at = from_us(s.int64(9));
  return letter;
}

// Thread-safety: as every DurableStore, any member from any thread. mutex_ serialises the store
// object's own connection; InboxWorks use connections of their own (WorkPool), so a handler's
// open work never waits for mutex_ nor makes its calls wait (only the file's write lock is shared).
class SqliteDurableStore final : public DurableStore {
 public:
  SqliteDurableStore(const std::string& path, const SqliteDurableStoreOptions& options)
      : pool_(std::make_shared<WorkPool>(path, options)),
        synchronous_full_(options.synchronous == SqliteDurableStoreOptions::Synchronous::full),
        busy_timeout_ms_(options.busy_timeout_ms),
        connection_(std::make_unique<Connection>(path, options, /*create_schema=*/true)),
        statements_(std::make_unique<StoreStatements>(connection_->db())) {}

  ~SqliteDurableStore() override {
    MutexLock lock(mutex_);
    statements_.reset();  // before the connection they belong to
    connection_.reset();
  }

  std::string description() const override { return "sqlite " + pool_->path(); }

  InboxClaim claim(const std::string& handler, const std::string& event_id, const std::string& owner,
                   std::chrono::milliseconds revive_after, bool replay) override {
    MutexLock lock(mutex_);
    WriteTransaction transaction(connection_->db());
    bool changed = false;
    InboxClaim result = claim_in_transaction(handler, event_id, owner, revive_after, replay, now_us(), changed);
    if (changed) transaction.commit();  // otherwise nothing changed: it rolls back
    return result;
  }

  std::vector<InboxClaim> claim_many(const std::string& handler, const std::vector<std::string>& event_ids,
                                     const std::string& owner, std::chrono::milliseconds revive_after) override {
    MutexLock lock(mutex_);
    WriteTransaction transaction(connection_->db());
    const std::int64_t now = now_us();
    std::vector<InboxClaim> results;
    results.reserve(event_ids.size());
    bool changed = false;
    for (const std::string& event_id : event_ids) {
      bool this_changed = false;
      results.push_back(claim_in_transaction(handler, event_id, owner, revive_after, false, now, this_changed));
      changed = changed || this_changed;
    }
    if (changed) transaction.commit();
    return results;
  }

  void release(const std::string& handler, const std::vector<std::string>& event_ids,
               const std::string& owner) override {
    if (event_ids.empty()) return;
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    WriteTransaction transaction(db);
    for (const std::string& event_id : event_ids) {
      Statement& release = statements_->inbox_release;
      release.bind(1, handler);
      release.bind(2, event_id);
      release.bind(3, owner);
      run(db, release);
    }
    transaction.commit();
  }

  std::unique_ptr<InboxWork> work(const std::string& handler, const std::string& event_id,
                                  const std::string& owner) override {
    return sqlite::make_inbox_work(pool_, handler, event_id, owner);
  }

  std::uint32_t fail(const std::string& handler, const std::string& event_id, const std::string& owner,
                     const std::string& error) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    StoreStatements& s = *statements_;
    WriteTransaction transaction(db);
    s.inbox_fail.bind(1, handler);
    s.inbox_fail.bind(2, event_id);
    s.inbox_fail.bind(3, owner);
    s.inbox_fail.bind(4, error);
    s.inbox_fail.bind(5, now_us());
    run(db, s.inbox_fail);
    std::uint32_t failures = 0;
    {
      Use read(s.inbox_failures);
      read->bind(1, handler);
      read->bind(2, event_id);
      if (read->step()) failures = static_cast<std::uint32_t>(read->int64(0));
    }
    transaction.commit();
    return failures;
  }

  void renew(const std::string& owner) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    WriteTransaction transaction(db);
    statements_->inbox_renew.bind(1, owner);
    statements_->inbox_renew.bind(2, now_us());
    run(db, statements_->inbox_renew);
    transaction.commit();
  }

  std::size_t prune_done(const std::string& handler, std::size_t keep, std::chrono::hours keep_for) override {
    if (keep == 0) {
      throw DurableError("durable store file \"" + pool_->path() + "\": prune_done(\"" + handler +
                         "\") with keep 0: DurableOptions::keep_done must be at least 1");
    }
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    WriteTransaction transaction(db);
    Statement& prune = statements_->inbox_prune;
    prune.bind(1, handler);
    prune.bind(2, now_us() - std::chrono::duration_cast<std::chrono::microseconds>(keep_for).count());
    prune.bind(3, clamp_to_int64(keep - 1));
    const int deleted = run(db, prune);
    transaction.commit();
    return static_cast<std::size_t>(deleted);
  }

  std::uint64_t add_dead_letter(const DeadLetter& letter, const std::string& owner) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    StoreStatements& s = *statements_;
    const std::int64_t now = now_us();
    const std::int64_t dead_at = letter.dead_at == std::chrono::system_clock::time_point{} ? now : to_us(letter.dead_at);
    std::int64_t first_failed_at =
        letter.first_failed_at == std::chrono::system_clock::time_point{} ? dead_at : to_us(letter.first_failed_at);
    WriteTransaction transaction(db);
    if (!letter.event_id.empty()) {  // the first failure the inbox recorded wins over the caller's
      Use read(s.inbox_first_failure);
      read->bind(1, letter.handler);
      read->bind(2, letter.event_id);
      if (read->step()) first_failed_at = read->int64(0);
    }
    s.letter_insert.bind(1, letter.handler);
    s.letter_insert.bind(2, letter.event_id);
    s.letter_insert.bind(3, letter.subject);
    s.letter_insert.bind_blob(4, letter.body);
    s.letter_insert.bind(5, letter.reason);
    s.letter_insert.bind(6, letter.last_error);
    s.letter_insert.bind(7, static_cast<std::int64_t>(letter.attempts));
    s.letter_insert.bind(8, first_failed_at);
    s.letter_insert.bind(9, dead_at);
    run(db, s.letter_insert);
    const auto id = static_cast<std::uint64_t>(sqlite3_last_insert_rowid(db.handle()));
    if (!letter.event_id.empty()) {  // a malformed message without an id has no inbox row
      mark_dead(letter.handler, letter.event_id, static_cast<std::int64_t>(letter.attempts), letter.last_error, owner,
                now);
    }
    transaction.commit();
    return id;
  }

  std::vector<DeadLetter> dead_letters(const DeadLetterQuery& query) const override {
    MutexLock lock(mutex_);
    Use read(statements_->letters_read);
    read->bind(1, static_cast<std::int64_t>(std::min<std::uint64_t>(
                      query.after_id, static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))));
    read->bind(2, query.handler);
    read->bind(3, clamp_to_int64(query.limit));
    std::vector<DeadLetter> letters;
    while (read->step()) letters.push_back(read_letter(*read));
    return letters;
  }

  std::optional<DeadLetter> dead_letter(std::uint64_t id) const override {
    MutexLock lock(mutex_);
    Use read(statements_->letter_read);
    read->bind(1, static_cast<std::int64_t>(id));
    if (!read->step()) return std::nullopt;
    return read_letter(*read);
  }

  void update_dead_letter(std::uint64_t id, const std::string& error, const std::string& owner) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    StoreStatements& s = *statements_;
    const std::int64_t now = now_us();
    WriteTransaction transaction(db);
    std::string handler;
    std::string event_id;
    std::int64_t attempts = 0;
    bool found = false;
    {
      Use update(s.letter_update);
      update->bind(1, static_cast<std::int64_t>(id));
      update->bind(2, error);
      update->bind(3, now);
      if (update->step()) {
        found = true;
        handler = std::string(update->text(0));
        event_id = std::string(update->text(1));
        attempts = update->int64(2);
        while (update->step()) {
        }
      }
    }
    if (!found) return;  // removed or purged meanwhile: nothing to update
    if (!event_id.empty()) mark_dead(handler, event_id, attempts, error, owner, now);  // the replay's claim ends
    transaction.commit();
  }

  bool remove_dead_letter(std::uint64_t id) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    WriteTransaction transaction(db);
    statements_->letter_remove.bind(1, static_cast<std::int64_t>(id));
    const int removed = run(db, statements_->letter_remove);
    transaction.commit();
    return removed > 0;
  }

  std::optional<DeadLetter> take_back_dead_letter(std::uint64_t id) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    StoreStatements& s = *statements_;
    WriteTransaction transaction(db);  // before the read: no other writer between it and the delete
    std::optional<DeadLetter> letter;
    {
      Use read(s.letter_read);
      read->bind(1, static_cast<std::int64_t>(id));
      if (read->step()) letter = read_letter(*read);
    }
    if (!letter) return std::nullopt;  // rolls back: nothing was written
    if (!letter->event_id.empty()) {
      Use read(s.inbox_read);
      read->bind(1, letter->handler);
      read->bind(2, letter->event_id);
      if (read->step() && read->text(0) == "pending" && !read->text(1).empty()) {
        throw DeadLetterInUse(*letter, std::string(read->text(1)));  // rolls back
      }
    }
    s.letter_remove.bind(1, static_cast<std::int64_t>(id));
    run(db, s.letter_remove);
    if (!letter->event_id.empty()) {
      s.inbox_take_back.bind(1, letter->handler);
      s.inbox_take_back.bind(2, letter->event_id);
      s.inbox_take_back.bind(3, now_us());
      run(db, s.inbox_take_back);
    }
    transaction.commit();
    return letter;
  }

  std::size_t purge_dead_letters(const std::string& handler) override {
    MutexLock lock(mutex_);
    Database& db = connection_->db();
    WriteTransaction transaction(db);
    statements_->letters_purge.bind(1, handler);
    const int removed = run(db, statements_->letters_purge);
    transaction.commit();
    return static_cast<std::size_t>(removed);
  }

  nlohmann::json health() const override {
    nlohmann::json health{{"kind", "sqlite"},
                          {"path", pool_->path()},
                          {"synchronous", synchronous_full_ ? "full" : "normal"},
                          {"busy_timeout_ms", busy_timeout_ms_}};
    try {
      MutexLock lock(mutex_);
      std::int64_t pending = 0;
      std::int64_t done = 0;
      std::int64_t dead = 0;
      {
        Use counts(statements_->inbox_counts);
        while (counts->step()) {
          const std::string_view state = counts->text(0);
          (state == "pending" ? pending : state == "done" ? done : dead) = counts->int64(1);
        }
      }
      std::int64_t letters = 0;
      {
        Use count(statements_->letters_count);
        if (count->step()) letters = count->int64(0);
      }
      health["pending"] = pending;
      health["done"] = done;
      health["dead"] = dead;
      health["dead_letters"] = letters;
    } catch (const std::exception& e) {
      health["error"] = e.what();
    }
    return health;
  }

 private:
  // Marks (handler, event_id) dead, inserting the row when missing (the inbox was off), releasing
  // `owner`'s claim or a free one; a claim another owner took over meanwhile, and a done row, stay.
  void mark_dead(const std::string& handler, const std::string& event_id, std::int64_t attempts,
                 const std::string& error, const std::string& owner, std::int64_t now) NOTIFICATIONS_REQUIRES(mutex_) {
    Statement& dead = statements_->inbox_dead;
    dead.bind(1, handler);
    dead.bind(2, event_id);
    dead.bind(3, attempts);
    dead.bind(4, error);
    dead.bind(5, now);
    dead.bind(6, owner);
    run(connection_->db(), dead);
  }

  // Binds (handler, event_id, owner, now) at 1 .. 4.
  // claim() inside the caller's write transaction; `changed` says whether it wrote.
  InboxClaim claim_in_transaction(const std::string& handler, const std::string& event_id, const std::string& owner,
                                  std::chrono::milliseconds revive_after, bool replay, std::int64_t now, bool& changed)
      NOTIFICATIONS_REQUIRES(mutex_) {
    Database& db = connection_->db();
    StoreStatements& s = *statements_;
    InboxClaim result;
    std::string state;
    std::string row_owner;
    std::int64_t renewed_at = 0;
    {
      Use read(s.inbox_read);
      read->bind(1, handler);
      read->bind(2, event_id);
      if (read->step()) {
        state = std::string(read->text(0));
        row_owner = std::string(read->text(1));
        result.failed_attempts = static_cast<std::uint32_t>(read->int64(2));
        result.last_error = std::string(read->text(3));
        renewed_at = read->int64(4);
      }
    }
    if (state.empty()) {
      bind_claim(s.inbox_insert, handler, event_id, owner, now);
      run(db, s.inbox_insert);
      changed = true;
      result.outcome = InboxClaim::Outcome::claimed;
      return result;
    }
    if (state == "done") {
      result.outcome = InboxClaim::Outcome::done;
      return result;  // nothing changed
    }
    if (state == "dead" && !replay) {
      result.outcome = InboxClaim::Outcome::dead;
      return result;
    }
    if (state == "pending" && !row_owner.empty() && row_owner != owner && !durable_owner_gone(row_owner) &&
        now - renewed_at < std::chrono::duration_cast<std::chrono::microseconds>(revive_after).count()) {
      result.outcome = InboxClaim::Outcome::held;
      return result;
    }
    // Free, the caller's own, taken over (gone or not renewed), or a replayed dead letter.
    bind_claim(s.inbox_take, handler, event_id, owner, now);
    run(db, s.inbox_take);
    changed = true;
    result.outcome = InboxClaim::Outcome::claimed;
    return result;
  }

  static void bind_claim(Statement& statement, const std::string& handler, const std::string& event_id,
                         const std::string& owner, std::int64_t now) {
    statement.bind(1, handler);
    statement.bind(2, event_id);
    statement.bind(3, owner);
    statement.bind(4, now);
  }

  const std::shared_ptr<WorkPool> pool_;
  const bool synchronous_full_;
  const std::uint32_t busy_timeout_ms_;
  mutable detail::Mutex mutex_;
  std::unique_ptr<Connection> connection_ NOTIFICATIONS_PT_GUARDED_BY(mutex_);
  std::unique_ptr<StoreStatements> statements_ NOTIFICATIONS_PT_GUARDED_BY(mutex_);
};

}  // namespace

std::shared_ptr<DurableStore> make_sqlite_durable_store(const std::string& path, SqliteDurableStoreOptions options) {
  if (path.empty()) {
    throw DurableError("make_sqlite_durable_store: the path is empty: name the SQLite file that keeps the inbox and "
                       "dead letters (it is created when missing)");
  }
  if (options.busy_timeout_ms == 0 || options.busy_timeout_ms > kMaxBusyTimeoutMs) {
    throw DurableError("durable store file \"" + path + "\": SqliteDurableStoreOptions::busy_timeout_ms is " +
                       std::to_string(options.busy_timeout_ms) + ": it must be 1 .. " +
                       std::to_string(kMaxBusyTimeoutMs) + " (milliseconds)");
  }
  if (!options.create) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
      throw DurableError("durable store file \"" + path +
                         "\" does not exist or is not a file: check the path (the file given to "
                         "make_sqlite_durable_store() by the service)");
    }
  }
  return std::make_shared<SqliteDurableStore>(path, options);
}

}  // namespace notifications
