#include "sqlite_db.hpp"

#include <algorithm>
#include <thread>
#include <utility>

#include "notifications/durable.hpp"
#include "notifications/outbox.hpp"
#include "notifications/transport.hpp"

namespace notifications::sqlite {

namespace {

// What the file holds, for the advice to move a damaged one away.
const char* contents(Database::Role role) {
  switch (role) {
    case Database::Role::outbox:
      return "outbox";
    case Database::Role::durable_store:
      return "inbox and dead-letter store";
    default:
      return "event log";
  }
}

// What to do about a failure, for the common codes: the same for every role, but for what the
// file holds and which option bounds waiting for its lock.
std::string advice(int rc, Database::Role role, Database::Open open) {
  switch (rc & 0xff) {
    case SQLITE_CANTOPEN:
      return open == Database::Open::existing_only
                 ? " (the file must exist, since it is not created here, and its folder be writable by this process)"
                 : " (its folder must exist and be writable by this process)";
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return std::string(" (the file is not a SQLite database, or is damaged: move it away to start with an empty ") +
             contents(role) + "; what it held cannot be read)";
    case SQLITE_FULL:
      return role == Database::Role::outbox ? " (the disk is full, or the file reached outbox.max_pages)"
                                            : " (the disk is full)";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      switch (role) {
        case Database::Role::outbox:
          return " (another connection holds the database's lock longer than outbox.busy_timeout_ms)";
        case Database::Role::durable_store:
          return " (another connection held the database's lock longer than SqliteDurableStoreOptions::busy_timeout_ms: "
                 "raise it, or keep handlers' SQL (DurableContext::execute) short and late in the handler, since a "
                 "handler holds the lock from its first statement until it returns)";
        default:
          return " (another connection holds the database's lock longer than busy_timeout_ms)";
      }
    case SQLITE_READONLY:
      return " (the file or its folder is read-only for this process)";
    case SQLITE_IOERR:
      return " (an I/O error: disk full, file size limit, or a failing disk)";
    default:
      return "";
  }
}

[[noreturn]] void throw_for(Database::Role role, const std::string& message) {
  if (role == Database::Role::outbox) throw OutboxError(message);
  if (role == Database::Role::durable_store) throw DurableError(message);
  throw TransportError(message);
}

const char* file_word(Database::Role role) {
  switch (role) {
    case Database::Role::outbox:
      return "outbox file";
    case Database::Role::durable_store:
      return "durable store file";
    case Database::Role::transport:
      break;
  }
  return "sqlite:// file";
}

}  // namespace

bool Database::transient(int rc) noexcept {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
      return true;
    default:
      return false;
  }
}

Database::Database(std::string path, Role role, Open open) : path_(std::move(path)), role_(role) {
  const int flags =
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (open == Open::or_create ? SQLITE_OPEN_CREATE : 0);
  const int rc = sqlite3_open_v2(path_.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string message = std::string(file_word(role_)) + " \"" + path_ + "\": cannot open: " +
                          (db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)) + advice(rc, role_, open);
    sqlite3_close(db_);
    db_ = nullptr;
    throw_for(role_, message);
  }
  sqlite3_extended_result_codes(db_, 1);
}

Database::~Database() {
  if (!abandoned_) sqlite3_close(db_);
}

void Database::fail(int rc, std::string_view what) const {
  last_failure_ = rc;
  throw_for(role_, std::string(file_word(role_)) + " \"" + path_ + "\": " + std::string(what) + ": " +
                       (db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)) + advice(rc, role_, Open::or_create));
}

void Database::exec(const char* sql, std::string_view what) {
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) fail(rc, what);
}

bool Database::has_column(std::string_view table, std::string_view column) {
  Statement s(*this, "SELECT count(*) FROM pragma_table_info(?) WHERE name = ?", "look for a column");
  s.bind(1, table);
  s.bind(2, column);
  s.step();
  const bool found = s.int64(0) > 0;
  s.reset();
  return found;
}

std::string Database::pragma_text(const char* sql, std::string_view what) {
  Statement statement(*this, sql, what);
  std::string result;
  if (statement.step()) result = std::string(statement.text(0));
  while (statement.step()) {
  }
  return result;
}

void Database::switch_to_wal(std::chrono::milliseconds timeout) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  for (int attempt = 0;; ++attempt) {
    sqlite3_stmt* statement = nullptr;
    int rc = sqlite3_prepare_v2(db_, "PRAGMA journal_mode=WAL", -1, &statement, nullptr);
    std::string mode;
    if (rc == SQLITE_OK) {
      rc = sqlite3_step(statement);
      if (rc == SQLITE_ROW) {
        const unsigned char* text = sqlite3_column_text(statement, 0);
        mode = text != nullptr ? reinterpret_cast<const char*>(text) : "";
        rc = SQLITE_OK;
      }
    }
    sqlite3_finalize(statement);
    if (rc == SQLITE_OK) {
      if (mode != "wal") fail(SQLITE_ERROR, "switch to WAL mode (the journal mode stayed \"" + mode + "\")");
      return;
    }
    const bool busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
    if (!busy || std::chrono::steady_clock::now() >= give_up) fail(rc, "switch to WAL mode");
    std::this_thread::sleep_for(std::chrono::microseconds(50) * (1 << std::min(attempt, 5)));  // up to 1.6 ms
  }
}

Statement::Statement(Database& db, const char* sql, std::string_view what) : db_(db), what_(what) {
  const int rc = sqlite3_prepare_v3(db.handle(), sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
  if (rc != SQLITE_OK) db.fail(rc, what);
}

Statement::~Statement() {
  if (!abandoned_) sqlite3_finalize(stmt_);
}

void Statement::bind(int index, std::int64_t value) {
  const int rc = sqlite3_bind_int64(stmt_, index, value);
  if (rc != SQLITE_OK) db_.fail(rc, what_);
}

void Statement::bind(int index, std::string_view text) {
  const int rc = sqlite3_bind_text64(stmt_, index, text.data(), text.size(), SQLITE_STATIC, SQLITE_UTF8);
  if (rc != SQLITE_OK) db_.fail(rc, what_);
}

void Statement::bind_blob(int index, std::string_view bytes) {
  const int rc = sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), SQLITE_STATIC);
  if (rc != SQLITE_OK) db_.fail(rc, what_);
}

std::string_view Statement::blob(int column) const noexcept {
  const auto* data = static_cast<const char*>(sqlite3_column_blob(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  return data == nullptr ? std::string_view() : std::string_view(data, static_cast<std::size_t>(size));
}

void Statement::bind_null(int index) {
  const int rc = sqlite3_bind_null(stmt_, index);
  if (rc != SQLITE_OK) db_.fail(rc, what_);
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  sqlite3_reset(stmt_);
  db_.fail(rc, what_);
}

void Statement::reset() noexcept {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

std::string_view Statement::text(int column) const noexcept {
  const auto* data = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  const int size = sqlite3_column_bytes(stmt_, column);
  return data == nullptr ? std::string_view() : std::string_view(data, static_cast<std::size_t>(size));
}

WriteTransaction::WriteTransaction(Database& db) : db_(db) {
  db_.exec("BEGIN IMMEDIATE", "begin a write transaction");
  open_ = true;
}

WriteTransaction::~WriteTransaction() {
  if (open_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void WriteTransaction::commit() {
  db_.exec("COMMIT", "commit");
  open_ = false;
}

}  // namespace notifications::sqlite
