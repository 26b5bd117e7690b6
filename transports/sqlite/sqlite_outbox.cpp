// The SQLite outbox (include/notifications/sqlite.hpp; promises in notifications/outbox.hpp and
// docs/outbox.md).
//
// Order of what waits, oldest first: rows handed out and released (held_), rows loaded in memory
// (ready_), rows only in the file (ids unloaded_first_ .. unloaded_last_), events not yet
// committed (pending_). Every commit takes a prefix of pending_, one committer at a time, so row
// ids follow push order: the one total order keeps each subject's order too.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>
#include <atomic>

#include "notifications/bridge.hpp"
#include "notifications/config.hpp"
#include "notifications/outbox.hpp"
#include "notifications/sqlite.hpp"
#include "sqlite_db.hpp"
#include "transport/kit.hpp"

namespace notifications {
namespace {

using detail::MutexLock;
using detail::UniqueMutexLock;
using Clock = std::chrono::steady_clock;

// Version 1. The column attributes (the events' context and tags, NULL for none) was added to it
// without a new version: a program that predates it ignores the column (its statements name
// their columns) and writes NULL there, so a deploy can be rolled back onto the same file.
constexpr int kSchemaVersion = 1;

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS notifications_outbox("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"  // never reused: a settled id is never a new row's
    " name TEXT NOT NULL, payload TEXT NOT NULL, traceparent TEXT NOT NULL,"
    " time_us INTEGER NOT NULL, duration_us INTEGER NOT NULL,"
    " exception_type TEXT, exception_message TEXT,"
    " id_salt INTEGER NOT NULL, id_sequence INTEGER NOT NULL, attributes TEXT)";

// An event with the row that stores it (0: in memory only).
struct Row {
  std::int64_t id = 0;
  OutboxEvent event;
};

// The exclusive lock of one process on an outbox file: "<path>.lock", flock()ed for the life of
// the outbox. A second process (or a second outbox in this one) is refused, naming the file.
class ProcessLock {
 public:
  explicit ProcessLock(const std::string& path) : path_(path + ".lock") {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      throw OutboxError("outbox file \"" + path + "\": cannot create its lock file \"" + path_ +
                        "\": " + std::strerror(errno) + " (the folder must exist and be writable)");
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      ::close(fd_);
      if (error == EWOULDBLOCK) {
        throw OutboxError("outbox file \"" + path + "\" is in use by another outbox (another process, or "
                          "another bridge of this one): each route needs its own outbox.path");
      }
      throw OutboxError("outbox file \"" + path + "\": cannot lock \"" + path_ + "\": " + std::strerror(error));
    }
  }
  ~ProcessLock() {
    if (fd_ >= 0 && !abandoned_) ::close(fd_);
  }
  ProcessLock(const ProcessLock&) = delete;
  ProcessLock& operator=(const ProcessLock&) = delete;
  // A forked child shares the lock's open file description: closing it there would not release
  // the parent's lock, but keeping it keeps the child from ever taking it by mistake.
  void abandon() noexcept { abandoned_ = true; }

 private:
  std::string path_;
  int fd_ = -1;
  bool abandoned_ = false;
};

// The file and its statements; used under SqliteOutbox::store_mutex_ only.
struct Store {
  Store(const std::string& path, const OutboxConfig& config)
      : lock(path), db(path) {
    db.exec("PRAGMA busy_timeout=0", "set the busy timeout");
    sqlite3_busy_timeout(db.handle(), static_cast<int>(config.busy_timeout.count()));
    db.switch_to_wal(std::chrono::duration_cast<std::chrono::milliseconds>(config.busy_timeout));
    db.exec(config.synchronous == OutboxConfig::Synchronous::full ? "PRAGMA synchronous=FULL"
                                                                  : "PRAGMA synchronous=NORMAL",
            "set synchronous");
    if (config.max_pages > 0) {
      const std::string sql = "PRAGMA max_page_count=" + std::to_string(config.max_pages);
      db.pragma_text(sql.c_str(), "set max_page_count");
    }
    const std::string version = db.pragma_text("PRAGMA user_version", "read the schema version");
    if (!version.empty() && std::stoi(version) > kSchemaVersion) {
      db.fail(SQLITE_ERROR, "schema version " + version + " is newer than this library's (" +
                                std::to_string(kSchemaVersion) + "): a newer program wrote it");
    }
    db.exec(kSchema, "create the outbox table");
    if (!db.has_column("notifications_outbox", "attributes")) {  // written before the column existed: its rows carry none
      db.exec("ALTER TABLE notifications_outbox ADD COLUMN attributes TEXT", "add the attributes column");
    }
    db.exec(("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str(), "write the schema version");
    insert.emplace(db,
                   "INSERT INTO notifications_outbox(name, payload, traceparent, time_us, duration_us,"
                   " exception_type, exception_message, id_salt, id_sequence, attributes) VALUES(?,?,?,?,?,?,?,?,?,?)",
                   "insert an event");
    remove.emplace(db, "DELETE FROM notifications_outbox WHERE id <= ?", "delete settled events");
    load.emplace(db,
                 "SELECT id, name, payload, traceparent, time_us, duration_us, exception_type,"
                 " exception_message, id_salt, id_sequence, attributes FROM notifications_outbox"
                 " WHERE id >= ? AND id <= ?"
                 " ORDER BY id LIMIT ?",
                 "read stored events");
  }
  ~Store() {
    // Statements before the connection (optional members are destroyed in reverse order anyway).
    load.reset();
    remove.reset();
    insert.reset();
  }

  void abandon() noexcept {
    lock.abandon();
    db.abandon();
    for (auto* statement : {&insert, &remove, &load}) {
      if (*statement) (*statement)->abandon();
    }
  }

  // Appends `events` in order and deletes rows through `delete_through` (0: none), in one
  // transaction. Returns the first new row id (ids are consecutive: one writer).
  std::int64_t append(std::span<OutboxEvent> events, std::int64_t delete_through) {
    sqlite::WriteTransaction transaction(db);
    if (delete_through > 0) run_delete(delete_through);
    std::int64_t first = 0;
    for (OutboxEvent& event : events) {
      sqlite::Statement& s = *insert;
      s.bind(1, event.name());
      s.bind(2, event.payload());
      s.bind(3, event.traceparent());
      s.bind(4, std::chrono::duration_cast<std::chrono::microseconds>(event.time.time_since_epoch()).count());
      s.bind(5, static_cast<std::int64_t>(event.duration.count()));
      if (event.exception) {
        s.bind(6, event.exception->first);
        s.bind(7, event.exception->second);
      } else {
        s.bind_null(6);
        s.bind_null(7);
      }
      if (event.id_salt == 0) event.id_salt = OutboxEvent::this_process_id_salt();
      s.bind(8, static_cast<std::int64_t>(event.id_salt));
      s.bind(9, static_cast<std::int64_t>(event.id_sequence));
      if (event.attributes().empty()) {
        s.bind_null(10);
      } else {
        s.bind(10, event.attributes());
      }
      try {
        s.step();
      } catch (...) {
        s.reset();
        throw;
      }
      s.reset();
      if (first == 0) first = sqlite3_last_insert_rowid(db.handle());
    }
    transaction.commit();
    return first;
  }

  void remove_through(std::int64_t delete_through) {
    sqlite::WriteTransaction transaction(db);
    run_delete(delete_through);
    transaction.commit();
  }

  // Up to `max` rows with ids from .. to, in id order. When reading fails after some rows, those
  // are returned (the next read starts at the failure, and fails there).
  std::vector<Row> read(std::int64_t from, std::int64_t to, std::size_t max) {
    std::vector<Row> rows;
    sqlite::Statement& s = *load;
    s.bind(1, from);
    s.bind(2, to);
    s.bind(3, static_cast<std::int64_t>(max));
    try {
      while (s.step()) {
        Row row;
        row.id = s.int64(0);
        row.event.set_text(s.text(1), s.text(2), s.text(3), s.is_null(10) ? std::string_view() : s.text(10));
        row.event.time = std::chrono::system_clock::time_point(std::chrono::microseconds(s.int64(4)));
        row.event.duration = std::chrono::microseconds(s.int64(5));
        if (!s.is_null(6)) {
          row.event.exception =
              std::make_unique<std::pair<std::string, std::string>>(std::string(s.text(6)), std::string(s.text(7)));
        }
        row.event.id_salt = static_cast<std::uint64_t>(s.int64(8));
        row.event.id_sequence = static_cast<std::uint64_t>(s.int64(9));
        rows.push_back(std::move(row));
      }
    } catch (...) {
      s.reset();
      if (rows.empty()) throw;
      // The rows read before the failure are handed out; the next read starts at the failure.
    }
    s.reset();
    return rows;
  }

  // (count, min id, max id) of the rows in the file.
  std::tuple<std::size_t, std::int64_t, std::int64_t> extent() {
    sqlite::Statement s(db, "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM notifications_outbox",
                        "count stored events");
    s.step();
    return {static_cast<std::size_t>(s.int64(0)), s.int64(1), s.int64(2)};
  }

  ProcessLock lock;
  sqlite::Database db;
  std::optional<sqlite::Statement> insert;
  std::optional<sqlite::Statement> remove;
  std::optional<sqlite::Statement> load;

 private:
  void run_delete(std::int64_t through) {
    sqlite::Statement& s = *remove;
    s.bind(1, through);
    try {
      s.step();
    } catch (...) {
      s.reset();
      throw;
    }
    s.reset();
    last_changes_deleted = static_cast<std::size_t>(sqlite3_changes(db.handle()));
  }

 public:
  std::size_t last_changes_deleted = 0;  // rows the last delete removed
};

// Thread-safety: as Outbox. mutex_ guards the memory state; store_mutex_ serialises the file (one
// writer path: whoever holds it commits the oldest pending events, so row ids follow push order).
// The two are never held together: the file is used with mutex_ released (MutexUnlock).
// held_events_/held_ids_, settled_ and taken_ belong to the consumer; in_flight_ mirrors them for
// stats().
//
// Tickets: every pushed event gets the next ticket; pending_ holds the tickets front_ticket_ ..
// pushed_, in order. A push in sync mode waits until its ticket left pending_ and is not in the
// group being committed; it then was stored, or refused (failures_, kept while a pusher of the
// group waits: waiters_).
class SqliteOutbox final : public Outbox {
 public:
  explicit SqliteOutbox(const BridgeConfig& config)
      : path_(config.outbox.path),
        durability_(config.durability),
        synchronous_(config.outbox.synchronous),
        capacity_(config.queue_capacity),
        max_bytes_(config.queue_max_bytes),
        batch_items_(std::max<std::size_t>(config.batch_size, 1)),
        spill_(config.overflow == OverflowPolicy::spill) {
    if (path_.empty()) throw OutboxError("outbox.path is empty: the SQLite outbox needs a file");
    store_ = std::make_unique<Store>(path_, config.outbox);
    const auto [count, first, last] = store_->extent();
    stored_rows_.store(count);
    if (count > 0) {  // left by an earlier run: sent first, in their order
      unloaded_first_ = first;
      unloaded_last_ = last;
      unloaded_count_ = count;
      replayed_ = count;
      depth_hint_.store(count);
      detail::log(detail::LogLevel::info,
                  "notifications: outbox \"{}\" holds {} events from an earlier run; they are sent first", path_, count);
    }
    // async and spill write on a thread of their own: the one writer of pushed events, so that
    // committing overlaps sending and no instrumenting thread waits on the disk.
    if (durability_ != Durability::sync) {
      writer_ = std::make_unique<std::thread>([this] { run_writer(); });
    }
  }

  ~SqliteOutbox() override {
    if (forked_child_) {
      store_->abandon();
      (void)store_.release();   // the parent's connection: never closed here
      (void)writer_.release();  // the parent's thread: it does not exist here, never joined
      return;
    }
    if (writer_) {
      {
        MutexLock lock(mutex_);
        stop_writer_ = true;
      }
      changed_.notify_all();
      writer_cv_.notify_all();
      writer_->join();
    }
    std::int64_t through = 0;
    {
      MutexLock lock(mutex_);
      through = delete_through_;
    }
    purge(through);  // what was settled leaves the file; the rest stays for the next start
  }

  Push push(OutboxEvent&& event, OverflowPolicy policy, std::chrono::milliseconds block_timeout,
            std::optional<OutboxEvent>* evicted, bool* waited) override {
    UniqueMutexLock lock(mutex_);
    if (closed_) return Push::closed;
    if (forked_child_) {
      return push_in_memory(lock, std::move(event), policy == OverflowPolicy::spill ? OverflowPolicy::drop_newest : policy,
                            block_timeout, evicted, waited);
    }
    if (durability_ == Durability::sync) {
      const std::uint64_t ticket = append_pending(std::move(event));
      if (gathering_) gathered_.notify_one();
      commit_through(lock, ticket);  // throws OutboxError when its group could not be stored
      return Push::accepted;
    }
    // Memory full: spill hands the overflow to the writer instead of refusing; so does async
    // whatever the policy (its events are meant for the file anyway, and the sender may be stuck
    // retrying). The pusher waits only while the writer is a whole memory bound behind; in async
    // it waits at the memory bound itself, which is what a crash may lose (docs/outbox.md: at most
    // queue_capacity events waiting plus the batch being committed).
    const std::size_t behind = durability_ == Durability::async ? capacity_ : 2 * capacity_;
    if (writer_ && pending_full(event) && (policy == OverflowPolicy::spill || durability_ == Durability::async)) {
      while (pending_.size() >= behind && !store_failing_ && !closed_) {
        if (waited != nullptr) *waited = true;
        wake_writer();
        lock.wait(changed_);
      }
      if (closed_) return Push::closed;
      if (!store_failing_) {
        ++spilled_;
        append_pending(std::move(event));
        wake_writer();
        return Push::accepted;
      }
    }
    return push_in_memory(lock, std::move(event), policy == OverflowPolicy::spill ? OverflowPolicy::block : policy,
                          block_timeout, evicted, waited);
  }

  bool take(std::span<OutboxEvent>& batch, std::size_t max, Clock::time_point until) override {
    max = std::max<std::size_t>(max, 1);
    UniqueMutexLock lock(mutex_);
    if (settled_ < held_events_.size()) {  // released (or never settled): these come first, in order
      erase_settled();
    } else {
      held_events_.clear();
      held_ids_.clear();
      settled_ = 0;
      fill(lock, max, until);
    }
    taken_ = std::min(max, held_events_.size());
    in_flight_.store(held_events_.size(), std::memory_order_relaxed);
    batch = std::span<OutboxEvent>(held_events_.data(), taken_);
    return !(closed_ && taken_ == 0 && nothing_waiting());
  }

  void settle(std::size_t count, Settled, std::string_view) override {
    MutexLock lock(mutex_);
    const std::size_t end = std::min(settled_ + count, taken_);
    for (std::size_t i = settled_; i < end; ++i) {
      if (held_ids_[i] > 0) delete_through_ = std::max(delete_through_, held_ids_[i]);
    }
    settled_ = end;
    in_flight_.store(held_events_.size() - settled_, std::memory_order_relaxed);
  }

  void release() override {
    MutexLock lock(mutex_);
    taken_ = settled_;
  }

  void close() override {
    MutexLock lock(mutex_);
    closed_ = true;
    changed_.notify_all();
    writer_cv_.notify_all();  // what is pending is committed now, batch or not
  }

  // Keeps what waits for the next start: commits the events not yet in the file (pending, and
  // released ones held only in memory) and deletes what was settled. Returns what could not be
  // stored (the bridge counts it as dropped).
  std::vector<OutboxEvent> drain() override {
    UniqueMutexLock lock(mutex_);
    std::vector<OutboxEvent> lost;
    if (forked_child_) {
      for (auto& event : pending_) lost.push_back(std::move(event));
      pending_.clear();
      pending_bytes_ = 0;
      return lost;
    }
    erase_settled();
    // Released events held only in memory go to the file ahead of the pending ones.
    std::vector<OutboxEvent> memory_only;
    for (std::size_t i = 0; i < held_events_.size(); ++i) {
      if (held_ids_[i] == 0) memory_only.push_back(std::move(held_events_[i]));
    }
    if (!memory_only.empty()) {
      std::vector<OutboxEvent> kept_events;
      std::vector<std::int64_t> kept_ids;
      for (std::size_t i = 0; i < held_events_.size(); ++i) {
        if (held_ids_[i] != 0) {
          kept_events.push_back(std::move(held_events_[i]));
          kept_ids.push_back(held_ids_[i]);
        }
      }
      held_events_ = std::move(kept_events);
      held_ids_ = std::move(kept_ids);
      for (auto it = memory_only.rbegin(); it != memory_only.rend(); ++it) {
        pending_bytes_ += it->queued_bytes();
        pending_.push_front(std::move(*it));
        --front_ticket_;
      }
    }
    taken_ = 0;
    in_flight_.store(held_events_.size(), std::memory_order_relaxed);  // released rows, kept in the file
    while (!pending_.empty()) {
      const std::uint64_t last = pushed_;
      try {
        commit_through(lock, last);
      } catch (const OutboxError& e) {
        detail::log(detail::LogLevel::error, "notifications: {}; events not stored at shutdown are lost", e.what());
        for (auto& event : refused_at_drain_) lost.push_back(std::move(event));
        refused_at_drain_.clear();
      }
    }
    const std::int64_t through = delete_through_;
    {
      detail::MutexUnlock unlocked(mutex_);
      purge(through);
    }
    return lost;
  }

  OutboxStats stats() const override {
    MutexLock lock(mutex_);
    OutboxStats stats;
    stats.depth = pending_.size() + ready_.size() + unloaded_count_;
    stats.in_flight = in_flight_.load(std::memory_order_relaxed);
    stats.capacity = capacity_;
    stats.bytes = pending_bytes_ + ready_bytes_;
    stats.max_bytes = max_bytes_;
    stats.stored = stored_rows_.load(std::memory_order_relaxed);
    stats.spilled = spilled_;
    stats.commits = commits_.load(std::memory_order_relaxed);
    stats.store_failures = store_failures_;
    return stats;
  }

  std::size_t depth_unlocked() const noexcept override { return depth_hint_.load(std::memory_order_relaxed); }

  void reset_in_forked_child() override NOTIFICATIONS_NO_THREAD_SAFETY_ANALYSIS {
    // No lock: in the child no other thread uses this outbox. The file stays the parent's.
    forked_child_ = true;
    pending_.clear();
    pending_bytes_ = 0;
    ready_.clear();
    ready_bytes_ = 0;
    held_events_.clear();
    held_ids_.clear();
    settled_ = taken_ = 0;
    unloaded_count_ = 0;
    committing_ = false;
    front_ticket_ = pushed_ + 1;
    in_flight_.store(0);
    depth_hint_.store(0);
  }

  bool persistent() const noexcept override { return !forked_child_; }

  // The writer parks holding no lock (see Outbox::prepare_fork).
  bool prepare_fork(Clock::time_point deadline) override {
    if (!writer_) return true;
    UniqueMutexLock lock(mutex_);
    park_requested_ = true;
    writer_cv_.notify_all();
    while (!writer_parked_) {
      if (lock.wait_until(changed_, deadline) == std::cv_status::timeout) break;
    }
    if (writer_parked_) return true;
    park_requested_ = false;
    writer_cv_.notify_all();
    return false;
  }

  void after_fork_in_parent() override {
    if (!writer_) return;
    {
      MutexLock lock(mutex_);
      park_requested_ = false;
    }
    writer_cv_.notify_all();
  }

  std::string description() const override {
    if (forked_child_) return "memory (in a forked child: the sqlite outbox \"" + path_ + "\" is the parent's)";
    std::string text = "sqlite \"" + path_ + "\", durability " + to_string(durability_) + ", synchronous " +
                       to_string(synchronous_);
    if (spill_) text += ", overflow spill";
    if (replayed_ > 0) text += ", " + std::to_string(replayed_) + " events from an earlier run at start";
    return text;
  }

 private:
  // A refused group: its tickets and why (OutboxError's message, without its "[notifications.outbox] ").
  struct Failure {
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    std::string why;
  };

  bool pending_full(const OutboxEvent& event) const NOTIFICATIONS_REQUIRES(mutex_) {
    if (pending_.empty()) return false;  // always room for one
    return pending_.size() >= capacity_ || (max_bytes_ != 0 && pending_bytes_ + event.queued_bytes() > max_bytes_);
  }

  bool nothing_waiting() const NOTIFICATIONS_REQUIRES(mutex_) {
    return pending_.empty() && ready_.empty() && unloaded_count_ == 0 && !committing_;
  }

  void update_depth() NOTIFICATIONS_REQUIRES(mutex_) {
    depth_hint_.store(pending_.size() + ready_.size() + unloaded_count_, std::memory_order_relaxed);
  }

  std::uint64_t append_pending(OutboxEvent&& event) NOTIFICATIONS_REQUIRES(mutex_) {
    pending_bytes_ += event.queued_bytes();
    pending_.push_back(std::move(event));
    update_depth();
    return ++pushed_;
  }

  OutboxEvent pop_pending() NOTIFICATIONS_REQUIRES(mutex_) {
    OutboxEvent event = std::move(pending_.front());
    pending_.pop_front();
    pending_bytes_ -= event.queued_bytes();
    ++front_ticket_;
    return event;
  }

  void erase_settled() NOTIFICATIONS_REQUIRES(mutex_) {
    const auto n = static_cast<std::ptrdiff_t>(std::min(settled_, held_events_.size()));
    held_events_.erase(held_events_.begin(), held_events_.begin() + n);
    held_ids_.erase(held_ids_.begin(), held_ids_.begin() + n);
    settled_ = 0;
  }

  // The memory bound under block / drop_newest / drop_oldest (only events not yet committed
  // count: committed ones can always leave memory for the file).
  Push push_in_memory(UniqueMutexLock& lock, OutboxEvent&& event, OverflowPolicy policy,
                      std::chrono::milliseconds block_timeout, std::optional<OutboxEvent>* evicted, bool* waited)
      NOTIFICATIONS_REQUIRES(mutex_) {
    Push result = Push::accepted;
    if (pending_full(event)) {
      if (policy == OverflowPolicy::block) {
        if (waited != nullptr) *waited = true;
        const auto until = Clock::now() + block_timeout;
        while (pending_full(event) && !closed_) {
          if (lock.wait_until(changed_, until) == std::cv_status::timeout) break;
        }
        if (closed_) return Push::closed;
        if (pending_full(event)) return Push::dropped_newest;
      } else if (policy == OverflowPolicy::drop_oldest && pending_.size() >= capacity_) {
        OutboxEvent oldest = pop_pending();
        if (evicted != nullptr) *evicted = std::move(oldest);
        result = Push::accepted_dropped_oldest;
        if (pending_full(event)) return Push::dropped_newest;
      } else {
        return Push::dropped_newest;
      }
    }
    append_pending(std::move(event));
    // Async: the sender commits each batch it takes; the writer only when memory is full.
    if (durability_ == Durability::async && pending_.size() >= capacity_) wake_writer();
    changed_.notify_all();
    return result;
  }

  void wake_writer() NOTIFICATIONS_REQUIRES(mutex_) {
    if (writer_waiting_) writer_cv_.notify_one();
  }

  // What the writer should commit now: async, everything pending (in batches of batch_size); spill, the oldest
  // events past the memory bound (down to half of it, so that commits batch).
  std::size_t writer_work() const NOTIFICATIONS_REQUIRES(mutex_) {
    if (pending_.empty() || committing_ || gathering_) return 0;
    if (store_failing_ && Clock::now() < retry_store_at_) return 0;
    if (durability_ == Durability::async) {  // only a full memory queue: the sender commits the rest
      return pending_.size() >= capacity_ ? std::min(pending_.size(), batch_items_) : 0;
    }
    if (pending_.size() > capacity_) return pending_.size() - capacity_ / 2;
    return 0;
  }

  // The writer thread: commits pushed events in order (keep_on_failure: what the file refuses
  // stays in memory, sent from there, and the file is tried again after kStoreRetry). Parks for
  // prepare_fork(); ends when the outbox is destroyed.
  void run_writer() {
    detail::name_this_thread("ntf-outbox");
    UniqueMutexLock lock(mutex_);
    while (!stop_writer_) {
      if (park_requested_) {
        writer_parked_ = true;
        changed_.notify_all();
        while (park_requested_ && !stop_writer_) lock.wait(writer_cv_);
        writer_parked_ = false;
        continue;
      }
      if (const std::size_t count = writer_work(); count > 0) {
        commit_group(count, /*keep_on_failure=*/true);
        continue;
      }
      writer_waiting_ = true;
      if (store_failing_ && !pending_.empty() && retry_store_at_ > Clock::now()) {
        lock.wait_until(writer_cv_, retry_store_at_);
      } else {
        lock.wait(writer_cv_);
      }
      writer_waiting_ = false;
    }
  }

  const Failure* failure_of(std::uint64_t ticket) const NOTIFICATIONS_REQUIRES(mutex_) {
    for (const Failure& failure : failures_) {
      if (failure.first <= ticket && ticket <= failure.last) return &failure;
    }
    return nullptr;
  }

  bool decided(std::uint64_t ticket) const NOTIFICATIONS_REQUIRES(mutex_) {
    if (ticket >= front_ticket_) return false;  // still pending
    return !(committing_ && group_first_ <= ticket && ticket <= group_last_);
  }

  // Waits until the event with `ticket` was stored, committing the oldest pending events itself
  // when nobody else is (callers arriving meanwhile share the next commit). Throws OutboxError
  // when its group was refused.
  void commit_through(UniqueMutexLock& lock, std::uint64_t ticket) NOTIFICATIONS_REQUIRES(mutex_) {
    ++pushers_inside_;
    peak_pushers_ = std::max(peak_pushers_, pushers_inside_);
    // Registered while it waits, so that its group's failure is remembered until it read it.
    waiters_.insert(ticket);
    try {
      while (!decided(ticket)) {
        if (!committing_ && !gathering_) {
          gather(lock);
          commit_group(pending_.size(), /*keep_on_failure=*/false);
          continue;
        }
        lock.wait(changed_);
      }
    } catch (...) {
      waiters_.erase(waiters_.find(ticket));
      --pushers_inside_;
      throw;
    }
    waiters_.erase(waiters_.find(ticket));
    --pushers_inside_;
    if (const Failure* failure = failure_of(ticket)) throw OutboxError(failure->why);
  }

  // Group commit: when other pushers are about (more than one was waiting for a commit lately) and
  // their events are not pending yet, the leader lets them add them for up to kGather before it
  // commits, so that one commit serves them all (a pusher that just returned is usually back
  // within microseconds). A lone pusher never waits here.
  // Waits on gathered_ (a sync push notifies it), never spins: on a loaded machine a yield can
  // give the core away for a whole time slice.
  void gather(UniqueMutexLock& lock) NOTIFICATIONS_REQUIRES(mutex_) {
    const std::size_t want = std::max(peak_pushers_, previous_peak_pushers_);
    if (want < 2 || pending_.size() >= want || closed_) return;
    gathering_ = true;
    const Clock::time_point end = Clock::now() + kGather;
    while (pending_.size() < want && !closed_) {
      if (lock.wait_until(gathered_, end) == std::cv_status::timeout) break;
    }
    gathering_ = false;
  }

  // Commits the oldest `count` pending events in one transaction, deleting what was settled in
  // the same one. Stored, they join the order after what is committed; refused, they are refused
  // to their pushers (failures_), or with `keep_on_failure` go back to the front of pending_.
  void commit_group(std::size_t count, bool keep_on_failure) NOTIFICATIONS_REQUIRES(mutex_) {
    committing_ = true;
    if (++commits_in_window_ == kPeakWindow) {  // the pushers' peak decays after 2 windows without it
      previous_peak_pushers_ = peak_pushers_;
      peak_pushers_ = pushers_inside_;
      commits_in_window_ = 0;
    }
    group_first_ = front_ticket_;
    group_last_ = front_ticket_ + count - 1;
    std::vector<OutboxEvent> group;
    group.reserve(count);
    for (std::size_t i = 0; i < count; ++i) group.push_back(pop_pending());
    const std::int64_t through = delete_through_;
    std::int64_t first = 0;
    std::string error;
    {
      detail::MutexUnlock unlocked(mutex_);
      MutexLock store(store_mutex_);
      try {
        first = store_->append(group, through > deleted_through_ ? through : 0);
        if (through > deleted_through_) {
          stored_rows_.fetch_sub(std::min<std::size_t>(stored_rows_.load(), store_->last_changes_deleted),
                                 std::memory_order_relaxed);
          deleted_through_ = through;
        }
        stored_rows_.fetch_add(group.size(), std::memory_order_relaxed);
        commits_.fetch_add(1, std::memory_order_relaxed);
      } catch (const OutboxError& e) {
        error = e.what();
        // The message alone: commit_through() throws it again as an OutboxError of its own.
        constexpr std::string_view kPrefix = "[notifications.outbox] ";
        if (error.rfind(kPrefix, 0) == 0) error.erase(0, kPrefix.size());
      }
    }
    committing_ = false;
    last_commit_ = Clock::now();
    if (error.empty()) {
      delete_requested_ = std::max(delete_requested_, through);
      if (store_failing_) detail::log(detail::LogLevel::info, "notifications: outbox \"{}\" stores events again", path_);
      store_failing_ = false;
      add_committed(first, group);
    } else {
      if (!store_failing_) detail::log(detail::LogLevel::error, "notifications: {}", error);
      store_failing_ = true;
      retry_store_at_ = Clock::now() + kStoreRetry;
      ++store_failures_;
      if (keep_on_failure) {
        for (auto it = group.rbegin(); it != group.rend(); ++it) {
          pending_bytes_ += it->queued_bytes();
          pending_.push_front(std::move(*it));
          --front_ticket_;
        }
      } else {
        failures_.push_back(Failure{group_first_, group_last_, error});
        // Forgotten only once no pusher of theirs waits: a pusher that had not yet looked must
        // not take its refused event for a stored one (waiters_ holds every waiting ticket).
        while (!failures_.empty() && (waiters_.empty() || failures_.front().last < *waiters_.begin())) {
          failures_.pop_front();
        }
        for (auto& event : group) refused_at_drain_.push_back(std::move(event));
        if (!closed_) refused_at_drain_.clear();  // only drain() reports them; a push's caller counts its own
      }
    }
    update_depth();
    changed_.notify_all();
  }

  // Committed rows first .. first + n - 1 (holding `group`) join the order after what is already
  // committed: in memory when nothing committed waits only in the file and there is room.
  void add_committed(std::int64_t first, std::vector<OutboxEvent>& group) NOTIFICATIONS_REQUIRES(mutex_) {
    if (group.empty()) return;
    if (unloaded_count_ == 0 && ready_.size() + group.size() <= capacity_) {
      for (std::size_t i = 0; i < group.size(); ++i) {
        ready_bytes_ += group[i].queued_bytes();
        ready_.push_back(Row{first + static_cast<std::int64_t>(i), std::move(group[i])});
      }
      return;
    }
    if (unloaded_count_ == 0) unloaded_first_ = first;
    unloaded_last_ = first + static_cast<std::int64_t>(group.size()) - 1;
    unloaded_count_ += group.size();
  }

  // Consumer: moves up to `max` of the oldest waiting events into held_, waiting until there is
  // one, the outbox is closed, or `until`.
  void fill(UniqueMutexLock& lock, std::size_t max, Clock::time_point until) NOTIFICATIONS_REQUIRES(mutex_) {
    while (true) {
      if (!ready_.empty()) {
        const std::size_t n = std::min(max, ready_.size());
        for (std::size_t i = 0; i < n; ++i) {
          ready_bytes_ -= ready_.front().event.queued_bytes();
          held_ids_.push_back(ready_.front().id);
          held_events_.push_back(std::move(ready_.front().event));
          ready_.pop_front();
        }
        break;
      }
      // Rows that wait only in the file come first; after a failed read, again after kStoreRetry.
      if (unloaded_count_ > 0 && !forked_child_ && !(load_failing_ && Clock::now() < retry_load_at_)) {
        if (load(max)) break;
        if (lock.wait_until(changed_, std::min(until, Clock::now() + kStoreRetry)) == std::cv_status::timeout &&
            Clock::now() >= until) {
          break;
        }
        continue;
      }
      if (committing_ || gathering_) {  // the oldest pending events are being committed by a pushing thread
        if (lock.wait_until(changed_, until) == std::cv_status::timeout) break;
        continue;
      }
      if (!pending_.empty()) {
        const std::size_t group = std::min(pending_.size(), std::max(max, batch_items_));
        if (durability_ == Durability::sync && !forked_child_) {
          // A pusher's group not yet picked up by one of them: committed here, refused to them on failure.
          commit_group(group, /*keep_on_failure=*/false);
          continue;
        }
        if (durability_ == Durability::async && !forked_child_ &&
            (!store_failing_ || Clock::now() >= retry_store_at_)) {
          // The sender commits the batch it is about to send (keep_on_failure: what the file
          // refuses stays pending and goes from memory below; the file is tried again once the
          // retry interval passed).
          commit_group(group, /*keep_on_failure=*/true);
          if (!store_failing_) continue;
        }
        // Durability none, a forked child, or a file that refuses writes: sent from memory.
        const std::size_t n = std::min(max, pending_.size());
        for (std::size_t i = 0; i < n; ++i) {
          held_ids_.push_back(0);
          held_events_.push_back(pop_pending());
        }
        changed_.notify_all();  // room for blocked pushes
        break;
      }
      if (closed_) break;
      // Settled rows leave the file with the next commit (commit_group deletes them in the same
      // transaction); only once nothing was committed for kPurgeDelay are they deleted in a
      // transaction of their own, so that a steady stream of events pays no commit for deletes.
      if (!forked_child_ && delete_through_ > delete_requested_) {
        const Clock::time_point purge_at = last_commit_ + kPurgeDelay;
        if (Clock::now() >= purge_at) {
          const std::int64_t through = delete_through_;
          delete_requested_ = through;
          detail::MutexUnlock unlocked(mutex_);
          purge(through);
          continue;
        }
        if (lock.wait_until(changed_, std::min(until, purge_at)) == std::cv_status::timeout && Clock::now() >= until) {
          break;
        }
        continue;
      }
      if (lock.wait_until(changed_, until) == std::cv_status::timeout) break;
    }
    update_depth();
    if (!held_events_.empty()) changed_.notify_all();
  }

  // Consumer: reads the next rows that wait only in the file. False when none could be read.
  bool load(std::size_t max) NOTIFICATIONS_REQUIRES(mutex_) {
    const std::int64_t from = unloaded_first_;
    const std::int64_t to = unloaded_last_;
    const std::size_t want = std::min(max, unloaded_count_);
    std::vector<Row> rows;
    std::string error;
    bool damaged = false;
    {
      detail::MutexUnlock unlocked(mutex_);
      MutexLock store(store_mutex_);
      try {
        rows = store_->read(from, to, want);
      } catch (const std::exception& e) {
        error = e.what();
        const int code = sqlite3_errcode(store_->db.handle()) & 0xff;
        damaged = code == SQLITE_CORRUPT || code == SQLITE_NOTADB;
      }
    }
    if (!error.empty()) {
      // Tried again after kStoreRetry (said once, not at every try). A damaged page stays
      // damaged: meanwhile events not yet committed are sent from memory (as while the file
      // refuses writes) rather than committed behind rows that cannot be read.
      if (!load_failing_) {
        detail::log(detail::LogLevel::error, "notifications: {} (trying again every {} ms{})", error, kStoreRetry.count(),
                    damaged ? "; newer events are sent from memory meanwhile" : "");
      }
      load_failing_ = true;
      retry_load_at_ = Clock::now() + kStoreRetry;
      if (damaged) {
        store_failing_ = true;
        retry_store_at_ = retry_load_at_;
      }
      ++store_failures_;
      return false;
    }
    if (load_failing_) detail::log(detail::LogLevel::info, "notifications: outbox \"{}\" reads its events again", path_);
    load_failing_ = false;
    if (rows.empty()) {  // deleted by someone else: nothing left to send there
      unloaded_count_ = 0;
      return false;
    }
    unloaded_first_ = rows.back().id + 1;
    unloaded_count_ = unloaded_first_ > unloaded_last_ ? 0 : unloaded_count_ - std::min(unloaded_count_, rows.size());
    for (Row& row : rows) {
      held_ids_.push_back(row.id);
      held_events_.push_back(std::move(row.event));
    }
    return true;
  }

  // Deletes the rows settled through `through` (file lock only).
  void purge(std::int64_t through) NOTIFICATIONS_EXCLUDES(mutex_) {
    MutexLock store(store_mutex_);
    if (through <= deleted_through_) return;
    try {
      store_->remove_through(through);
      commits_.fetch_add(1, std::memory_order_relaxed);
      stored_rows_.fetch_sub(std::min<std::size_t>(stored_rows_.load(), store_->last_changes_deleted),
                             std::memory_order_relaxed);
      deleted_through_ = through;
    } catch (const OutboxError& e) {
      detail::log(detail::LogLevel::warn, "notifications: {} (events already sent stay in the file and are sent "
                  "again after a restart)", e.what());
    }
  }

  static constexpr std::chrono::milliseconds kStoreRetry{1000};
  // How long settled rows wait for a commit to carry their delete before one of their own.
  static constexpr std::chrono::milliseconds kPurgeDelay{50};
  // How long a commit's leader waits at most for the other pushers' events (gather()).
  static constexpr std::chrono::microseconds kGather{50};
  static constexpr unsigned kPeakWindow = 64;  // commits

  const std::string path_;
  const Durability durability_;
  const OutboxConfig::Synchronous synchronous_;
  const std::size_t capacity_;
  const std::size_t max_bytes_;
  const std::size_t batch_items_;
  const bool spill_;  // the configured overflow is spill (health and logs)

  detail::Mutex store_mutex_;
  std::unique_ptr<Store> store_;  // used under store_mutex_
  std::int64_t deleted_through_ NOTIFICATIONS_GUARDED_BY(store_mutex_) = 0;
  std::atomic<std::size_t> stored_rows_{0};
  std::atomic<std::uint64_t> commits_{0};  // transactions committed (OutboxStats::commits)

  mutable detail::Mutex mutex_;
  std::condition_variable changed_;
  std::condition_variable writer_cv_;  // wakes the writer: work, park, stop
  std::condition_variable gathered_;   // wakes a sync leader gathering the other pushers' events
  std::unique_ptr<std::thread> writer_;  // async and spill only
  bool writer_waiting_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  bool stop_writer_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  bool park_requested_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  bool writer_parked_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  std::deque<OutboxEvent> pending_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::size_t pending_bytes_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::deque<Row> ready_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::size_t ready_bytes_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::int64_t unloaded_first_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::int64_t unloaded_last_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::size_t unloaded_count_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  bool committing_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  bool gathering_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;  // a leader waits for more events (gather())
  std::size_t pushers_inside_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // in commit_through
  std::size_t peak_pushers_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;    // most inside, in this window of commits
  std::size_t previous_peak_pushers_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  unsigned commits_in_window_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::uint64_t group_first_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::uint64_t group_last_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  bool closed_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  bool store_failing_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  Clock::time_point retry_store_at_ NOTIFICATIONS_GUARDED_BY(mutex_){};
  bool load_failing_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;  // the last read of stored rows failed
  Clock::time_point retry_load_at_ NOTIFICATIONS_GUARDED_BY(mutex_){};
  std::uint64_t pushed_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;        // the last ticket given
  std::uint64_t front_ticket_ NOTIFICATIONS_GUARDED_BY(mutex_) = 1;  // pending_.front()'s ticket
  std::deque<Failure> failures_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::multiset<std::uint64_t> waiters_ NOTIFICATIONS_GUARDED_BY(mutex_);  // tickets in commit_through()
  std::vector<OutboxEvent> refused_at_drain_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::int64_t delete_through_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // settled rows through this id
  std::int64_t delete_requested_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // deleted, or being deleted, through this id
  Clock::time_point last_commit_ NOTIFICATIONS_GUARDED_BY(mutex_){};    // the end of the last commit_group
  std::uint64_t spilled_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::uint64_t store_failures_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::size_t replayed_ = 0;   // set by the constructor
  bool forked_child_ = false;  // set by reset_in_forked_child, when no other thread runs
  // The consumer's: taken (and released) events with their row ids (0: only in memory).
  std::vector<OutboxEvent> held_events_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::vector<std::int64_t> held_ids_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::size_t settled_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::size_t taken_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> depth_hint_{0};
};

std::shared_ptr<Outbox> make_for_bridge(const BridgeConfig& config) { return make_sqlite_outbox(config); }

}  // namespace

std::shared_ptr<Outbox> make_sqlite_outbox(const BridgeConfig& config) { return std::make_shared<SqliteOutbox>(config); }

}  // namespace notifications

// Linking notifications::sqlite registers the durable outbox before main(); the target's link
// options keep this object in a static link.
extern "C" int notifications_sqlite_registered;
int notifications_sqlite_registered = [] {
  notifications::register_durable_outbox(&notifications::make_for_bridge);
  return 1;
}();
