#include "sqlite_durable_db.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <utility>

namespace notifications::sqlite {

namespace {

using detail::MutexLock;

constexpr int kSchemaVersion = 1;
// Idle work connections a store object keeps for the next InboxWork; more are closed.
constexpr std::size_t kMaxIdleWorkConnections = 4;

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS notifications_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS notifications_inbox("
    " handler TEXT NOT NULL, event_id TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK(state IN ('pending','done','dead')),"
    " owner TEXT NOT NULL, failed_attempts INTEGER NOT NULL, last_error TEXT NOT NULL, first_failed_at_us INTEGER,"
    " claimed_at_us INTEGER NOT NULL, renewed_at_us INTEGER NOT NULL, done_at_us INTEGER,"
    " PRIMARY KEY(handler, event_id)) WITHOUT ROWID;"
    // prune_done: a handler's done rows, newest first
    "CREATE INDEX IF NOT EXISTS notifications_inbox_done ON notifications_inbox(handler, state, done_at_us);"
    // renew: an owner's pending rows
    "CREATE INDEX IF NOT EXISTS notifications_inbox_pending ON notifications_inbox(owner) WHERE state='pending';"
    "CREATE TABLE IF NOT EXISTS notifications_dead_letters("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, handler TEXT NOT NULL, event_id TEXT NOT NULL,"
    " subject TEXT NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL, last_error TEXT NOT NULL,"
    " attempts INTEGER NOT NULL, first_failed_at_us INTEGER NOT NULL, dead_at_us INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS notifications_dead_letters_handler ON notifications_dead_letters(handler, id);";

int authorize(void*, int action, const char*, const char*, const char*, const char*) {
  return action == SQLITE_TRANSACTION ? SQLITE_DENY : SQLITE_OK;
}

}  // namespace

std::int64_t to_us(std::chrono::system_clock::time_point time) {
  return std::chrono::duration_cast<std::chrono::microseconds>(time.time_since_epoch()).count();
}

std::chrono::system_clock::time_point from_us(std::int64_t us) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::microseconds(us)));
}

std::int64_t now_us() { return to_us(std::chrono::system_clock::now()); }

int run(Database& db, Statement& statement) {
  Use use(statement);
  statement.step();
  return sqlite3_changes(db.handle());
}

Connection::Connection(const std::string& path, const SqliteDurableStoreOptions& options, bool create_schema)
    : db_(path, Database::Role::durable_store,
          options.create ? Database::Open::or_create : Database::Open::existing_only) {
  busy_.timeout = std::chrono::milliseconds(options.busy_timeout_ms);
  sqlite3_busy_handler(db_.handle(), &Connection::on_busy, &busy_);
  if (create_schema && !options.create) require_store();  // before anything is written to it
  db_.switch_to_wal(busy_.timeout);
  db_.exec(options.synchronous == SqliteDurableStoreOptions::Synchronous::full ? "PRAGMA synchronous=FULL"
                                                                               : "PRAGMA synchronous=NORMAL",
           "set synchronous");
  if (create_schema) ensure_schema();
}

void Connection::require_store() {
  Statement check(db_,
                  "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('notifications_inbox',"
                  " 'notifications_dead_letters')",
                  "look for the durable store's tables");
  check.step();
  const bool found = check.int64(0) == 2;
  check.reset();
  if (!found) {
    throw DurableError("durable store file \"" + db_.path() +
                       "\" holds no durable store (tables notifications_inbox and notifications_dead_letters): "
                       "check the path (the file given to make_sqlite_durable_store() by the service)");
  }
}

Statement& Connection::mark_done() {
  if (!mark_done_) {
    mark_done_ = std::make_unique<Statement>(
        db_,
        "UPDATE notifications_inbox SET state='done', done_at_us=?4 WHERE handler=?1 AND event_id=?2"
        " AND state='pending' AND owner=?3",
        "complete(): mark the event done");
  }
  return *mark_done_;
}

void Connection::refuse_transaction_control(bool refuse) noexcept {
  sqlite3_set_authorizer(db_.handle(), refuse ? &authorize : nullptr, nullptr);
}

// Waits a little for another connection's lock: 20 us at first, doubling up to 1 ms (SQLite's
// own busy timeout sleeps 1 ms at once, long beside a claim's commit), until the timeout.
int Connection::on_busy(void* context, int count) {
  auto& wait = *static_cast<BusyWait*>(context);
  const auto now = std::chrono::steady_clock::now();
  if (count == 0) wait.since = now;
  if (now - wait.since >= wait.timeout) return 0;
  const std::chrono::microseconds pause(20 << std::min(count, 6));
  std::this_thread::sleep_for(std::min<std::chrono::microseconds>(pause, std::chrono::milliseconds(1)));
  return 1;
}

void Connection::ensure_schema() {
  WriteTransaction transaction(db_);
  db_.exec(kSchema, "create the durable store's tables");
  std::string version;
  {
    Statement read(db_, "SELECT value FROM notifications_meta WHERE key='durable_schema'", "read the schema version");
    if (read.step()) version = std::string(read.text(0));
    read.reset();
  }
  if (!version.empty() && std::atoi(version.c_str()) > kSchemaVersion) {
    db_.fail(SQLITE_ERROR, "durable store schema version " + version + " is newer than this library's (" +
                               std::to_string(kSchemaVersion) +
                               "): a newer program wrote it; run that version, or use another file");
  }
  db_.exec("INSERT OR REPLACE INTO notifications_meta VALUES('durable_schema','1')", "write the schema version");
  transaction.commit();
}

std::unique_ptr<Connection> WorkPool::borrow() {
  {
    MutexLock lock(mutex_);
    if (!idle_.empty()) {
      auto connection = std::move(idle_.back());
      idle_.pop_back();
      return connection;
    }
  }
  return std::make_unique<Connection>(path_, options_, /*create_schema=*/false);
}

void WorkPool::give_back(std::unique_ptr<Connection> connection) {
  if (!connection || sqlite3_get_autocommit(connection->db().handle()) == 0) return;
  MutexLock lock(mutex_);
  if (idle_.size() < kMaxIdleWorkConnections) idle_.push_back(std::move(connection));
}

}  // namespace notifications::sqlite
