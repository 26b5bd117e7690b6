// Private to notifications::sqlite: the durable store's file (make_sqlite_durable_store in
// include/notifications/sqlite.hpp; the contract in include/notifications/durable.hpp;
// docs/durable_sqlite.md describes it for users).
//
// Tables (schema version 1, kept in notifications_meta as "durable_schema", beside the sqlite://
// transport's "transport_schema" when the file is shared):
//   notifications_inbox        (handler, event_id) -> state pending|done|dead, owner ("" when
//                              free), failed_attempts, last_error, first_failed_at_us (null
//                              before a failure), claimed_at_us, renewed_at_us, done_at_us
//   notifications_dead_letters id (AUTOINCREMENT: never reused) -> handler, event_id, subject,
//                              body, reason, last_error, attempts, first_failed_at_us, dead_at_us
// Times are wall-clock microseconds since the epoch, shared by every process on the machine.
//
// Connections: a store object's own (under its mutex) for every call but the handler's SQL; each
// InboxWork borrows one of its own from the store's WorkPool and gives it back when destroyed.
// Every state change is one BEGIN IMMEDIATE transaction, so store objects in several processes
// serialise on the file's write lock. Every failure throws DurableError naming the file.
//
// Thread-safety: stated per class below.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "notifications/durable.hpp"
#include "notifications/sqlite.hpp"
#include "process/thread_safety.hpp"
#include "sqlite_db.hpp"

namespace notifications::sqlite {

std::int64_t to_us(std::chrono::system_clock::time_point time);
std::chrono::system_clock::time_point from_us(std::int64_t us);
std::int64_t now_us();  // the system clock

// Resets a statement when the scope ends, however it ends: a statement left stepping keeps its
// connection's read snapshot open.
class Use {
 public:
  explicit Use(Statement& statement) : statement_(statement) {}
  ~Use() { statement_.reset(); }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;
  Statement* operator->() { return &statement_; }
  Statement& operator*() { return statement_; }

 private:
  Statement& statement_;
};

// Runs a statement without results; returns the rows it changed.
int run(Database& db, Statement& statement);

// One configured connection to the store's file: busy handler, WAL, synchronous and, for the
// store object's own connection, the schema (created, or checked not to be newer than this
// library's).
// Thread-safety: none; used by one thread at a time (under the store's mutex, or by the one
// InboxWork that borrowed it). Never moved: the busy handler points at busy_.
class Connection {
 public:
  Connection(const std::string& path, const SqliteDurableStoreOptions& options, bool create_schema);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Database& db() noexcept { return db_; }

  // While true, statements prepared on this connection may not begin, commit or roll back a
  // transaction (the handler's SQL must stay inside its work's transaction).
  void refuse_transaction_control(bool refuse) noexcept;

  // The work's "mark done" statement, prepared once per connection (a pooled connection serves
  // many works): ?1 handler, ?2 event id, ?3 owner, ?4 done_at_us.
  Statement& mark_done();

 private:
  // The busy handler's state: when the current wait for a lock began, and how long it may last.
  struct BusyWait {
    std::chrono::steady_clock::time_point since{};
    std::chrono::milliseconds timeout{0};
  };
  static int on_busy(void* context, int count);
  // Throws DurableError when the file lacks the store's tables (SqliteDurableStoreOptions::create
  // false).
  void require_store();
  void ensure_schema();

  BusyWait busy_;  // before db_: the handler that points at it is set on db_
  Database db_;
  std::unique_ptr<Statement> mark_done_;  // after db_: finalized before it closes
};

// The connections InboxWorks use, shared by a store object and the works it made (a work may
// outlive its store object).
// Thread-safety: any member from any thread.
class WorkPool {
 public:
  WorkPool(std::string path, SqliteDurableStoreOptions options) : path_(std::move(path)), options_(options) {}

  // An idle connection, or a new one (throws DurableError when it cannot be opened).
  std::unique_ptr<Connection> borrow();
  // Takes back a connection outside any transaction; keeps a few for the next works (a
  // connection still in a transaction is closed).
  void give_back(std::unique_ptr<Connection> connection);

  const std::string& path() const noexcept { return path_; }

 private:
  const std::string path_;
  const SqliteDurableStoreOptions options_;
  detail::Mutex mutex_;
  std::vector<std::unique_ptr<Connection>> idle_ NOTIFICATIONS_GUARDED_BY(mutex_);
};

// The InboxWork of a claimed event (sqlite_durable_work.cpp): a connection of `pool`'s, the
// handler's SQL and the done mark in one transaction.
std::unique_ptr<InboxWork> make_inbox_work(std::shared_ptr<WorkPool> pool, std::string handler, std::string event_id,
                                           std::string owner);

}  // namespace notifications::sqlite
