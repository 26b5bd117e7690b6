// Private to notifications::sqlite: small RAII types over the SQLite C API, shared by the outbox,
// the sqlite:// transport and the durable store. Every failure throws, for the outbox, OutboxError
// (notifications/outbox.hpp), for the transport, TransportError and, for the durable store,
// DurableError (notifications/durable.hpp); the message names the database file, what was being
// done, SQLite's own reason and what to do about it.
//
// Thread-safety: a Database and its Statements are used by one thread at a time (the owner
// serialises them with its own mutex); distinct Databases are independent. The connection is
// opened with SQLITE_OPEN_NOMUTEX for that reason.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace notifications::sqlite {

// An open connection. Closing it (the destructor) finalises nothing: Statements must be
// destroyed first, which member order in the owner guarantees.
class Database {
 public:
  // Who uses the file: picks the exception type and the words of its messages.
  enum class Role { outbox, transport, durable_store };

  // Whether opening may create a missing file.
  enum class Open { or_create, existing_only };

  // Opens `path`, creating it when missing unless `open` is existing_only (then a missing file
  // fails the open itself, so no check before it can race with the file's removal). Throws naming
  // the file: the folder is missing or not writable, the file is missing, not a database.
  explicit Database(std::string path, Role role = Role::outbox, Open open = Open::or_create);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs `sql` (one or more statements without results). Throws on failure, saying `what`.
  void exec(const char* sql, std::string_view what);
  // A PRAGMA's single text result ("" when none).
  std::string pragma_text(const char* sql, std::string_view what);
  // True when `table` has a column named `column` (false when there is no such table).
  bool has_column(std::string_view table, std::string_view column);
  // PRAGMA journal_mode=WAL, retried while the file is busy for up to `timeout`: connections
  // opening a new file at once each need it to themselves for the switch, and SQLite answers
  // SQLITE_BUSY at once, without the busy handler, when two would wait for each other. Throws
  // when it stays busy past `timeout`, or the mode stays another one.
  void switch_to_wal(std::chrono::milliseconds timeout);
  // Throws for a failed `rc`, naming the file, `what` and SQLite's message; remembers `rc`.
  [[noreturn]] void fail(int rc, std::string_view what) const;
  // The result code of the last failure thrown (0 before any).
  int last_failure() const noexcept { return last_failure_; }
  // Whether a failure with result code `rc` may pass by itself (busy, locked, full, I/O).
  static bool transient(int rc) noexcept;

  // In a forked child: the connection belongs to the parent (its locks, its WAL index); it is
  // never used or closed again here, so that closing it cannot disturb the parent's files.
  void abandon() noexcept { abandoned_ = true; }

  sqlite3* handle() const noexcept { return db_; }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  Role role_;
  sqlite3* db_ = nullptr;
  bool abandoned_ = false;
  mutable int last_failure_ = 0;
};

// A prepared statement, reset after each use by its user (reset()).
class Statement {
 public:
  Statement(Database& db, const char* sql, std::string_view what);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void bind(int index, std::int64_t value);
  void bind(int index, std::string_view text);  // SQLITE_TRANSIENT is not needed: bound until reset
  void bind_null(int index);
  void bind_blob(int index, std::string_view bytes);  // bound until reset, as bind(text)
  // True when a row is ready, false when done; throws on failure.
  bool step();
  void reset() noexcept;

  std::int64_t int64(int column) const noexcept { return sqlite3_column_int64(stmt_, column); }
  std::string_view text(int column) const noexcept;
  std::string_view blob(int column) const noexcept;
  bool is_null(int column) const noexcept { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

  void abandon() noexcept { abandoned_ = true; }

 private:
  Database& db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::string what_;
  bool abandoned_ = false;
};

// BEGIN IMMEDIATE (the write lock up front: no upgrade deadlock between connections) ... COMMIT;
// rolled back by the destructor unless commit() succeeded.
class WriteTransaction {
 public:
  explicit WriteTransaction(Database& db);
  ~WriteTransaction();
  WriteTransaction(const WriteTransaction&) = delete;
  WriteTransaction& operator=(const WriteTransaction&) = delete;
  void commit();

 private:
  Database& db_;
  bool open_ = false;
};

}  // namespace notifications::sqlite
