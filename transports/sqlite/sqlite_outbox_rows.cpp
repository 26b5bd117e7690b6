// Outbox rows for operators (list_outbox, outbox_row, purge_outbox in
// include/notifications/sqlite.hpp): reads an outbox file (sqlite_outbox.cpp's table
// notifications_outbox) with a connection of its own, and purges it only under the outbox's own
// process lock ("<path>.lock", flock()ed by every outbox for its life).
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "notifications/outbox.hpp"
#include "notifications/sqlite.hpp"
#include "process/ids.hpp"
#include "sqlite_db.hpp"

namespace notifications {
namespace {

using sqlite::Database;
using sqlite::Statement;

// A file written before the attributes column existed (and not opened by an outbox since) has none.
std::string select_rows(bool has_attributes) {
  return std::string("SELECT id, name, payload, traceparent, time_us, duration_us, exception_type, exception_message,"
                     " id_salt, id_sequence, ") +
         (has_attributes ? "attributes" : "NULL") + " FROM notifications_outbox";
}

// Opens an existing outbox file (never creating one) and checks it holds the outbox table.
// Throws OutboxError naming the file.
class OutboxFile {
 public:
  explicit OutboxFile(const std::string& path) : db_(existing(path)) {
    // Reads in WAL mode do not wait for the outbox's writes; this covers opening while another
    // connection recovers the WAL, and purge's write lock.
    sqlite3_busy_timeout(db_.handle(), 5000);
    Statement check(db_, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='notifications_outbox'",
                    "look for the outbox table");
    check.step();
    const bool found = check.int64(0) > 0;
    check.reset();
    if (!found) {
      throw OutboxError("outbox file \"" + path +
                        "\" holds no outbox table (notifications_outbox): check the path (outbox.path of the "
                        "service's configuration); no outbox has written to this file yet");
    }
    select_ = select_rows(db_.has_column("notifications_outbox", "attributes"));
  }

  Database& db() { return db_; }
  // SELECT of every column of the rows, for this file's schema.
  const std::string& select() const { return select_; }

 private:
  static const std::string& existing(const std::string& path) {
    std::error_code error;
    if (path.empty()) throw OutboxError("outbox file path is empty: name the file (outbox.path of the configuration)");
    if (!std::filesystem::is_regular_file(path, error)) {
      throw OutboxError("outbox file \"" + path +
                        "\" does not exist or is not a file: check the path (outbox.path of the service's "
                        "configuration)");
    }
    return path;
  }

  Database db_;
  std::string select_;
};

OutboxRow read_row(const Statement& s) {
  OutboxRow row;
  row.id = static_cast<std::uint64_t>(s.int64(0));
  row.name = std::string(s.text(1));
  row.payload = std::string(s.text(2));
  row.traceparent = std::string(s.text(3));
  row.time = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::microseconds(s.int64(4))));
  row.duration = std::chrono::microseconds(s.int64(5));
  if (!s.is_null(6)) row.exception.emplace(std::string(s.text(6)), std::string(s.text(7)));
  if (!s.is_null(10)) row.attributes = std::string(s.text(10));
  detail::assign_event_id(row.event_id, static_cast<std::uint64_t>(s.int64(9)), static_cast<std::uint64_t>(s.int64(8)));
  return row;
}

std::int64_t to_int64(std::uint64_t n) {
  return static_cast<std::int64_t>(std::min<std::uint64_t>(n, std::numeric_limits<std::int64_t>::max()));
}

// The outbox's process lock, taken without waiting for as long as this object lives.
class OutboxLock {
 public:
  explicit OutboxLock(const std::string& path) {
    const std::string lock_path = path + ".lock";
    fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      throw OutboxError("outbox file \"" + path + "\": cannot open its lock file \"" + lock_path +
                        "\": " + std::strerror(errno) + " (the folder must be writable by this process)");
    }
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      ::close(fd_);
      if (error == EWOULDBLOCK) {
        throw OutboxError("outbox file \"" + path +
                          "\" is in use by a running outbox (a Bridge with durability async or sync, or overflow "
                          "spill): stop the service first, then purge (a running outbox would still send the rows "
                          "it already loaded)");
      }
      throw OutboxError("outbox file \"" + path + "\": cannot lock \"" + lock_path + "\": " + std::strerror(error));
    }
  }
  ~OutboxLock() { ::close(fd_); }
  OutboxLock(const OutboxLock&) = delete;
  OutboxLock& operator=(const OutboxLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

std::vector<OutboxRow> list_outbox(const std::string& path, std::size_t limit, std::uint64_t after_id) {
  OutboxFile file(path);
  Statement s(file.db(), (file.select() + " WHERE id > ? ORDER BY id LIMIT ?").c_str(), "list stored events");
  s.bind(1, to_int64(after_id));
  s.bind(2, to_int64(limit));
  std::vector<OutboxRow> rows;
  try {
    while (s.step()) rows.push_back(read_row(s));
  } catch (...) {
    s.reset();
    throw;
  }
  s.reset();
  return rows;
}

std::optional<OutboxRow> outbox_row(const std::string& path, std::uint64_t id) {
  OutboxFile file(path);
  Statement s(file.db(), (file.select() + " WHERE id = ?").c_str(), "read a stored event");
  s.bind(1, to_int64(id));
  std::optional<OutboxRow> row;
  if (s.step()) row = read_row(s);
  s.reset();
  return row;
}

std::size_t purge_outbox(const std::string& path, const std::vector<std::uint64_t>& ids) {
  OutboxFile file(path);
  OutboxLock lock(path);
  sqlite::WriteTransaction transaction(file.db());
  std::size_t deleted = 0;
  if (ids.empty()) {
    file.db().exec("DELETE FROM notifications_outbox", "purge every stored event");
    deleted = static_cast<std::size_t>(sqlite3_changes(file.db().handle()));
  } else {
    Statement s(file.db(), "DELETE FROM notifications_outbox WHERE id = ?", "purge a stored event");
    for (const std::uint64_t id : ids) {
      s.bind(1, to_int64(id));
      s.step();
      s.reset();
      deleted += static_cast<std::size_t>(sqlite3_changes(file.db().handle()));
    }
  }
  transaction.commit();
  return deleted;
}

}  // namespace notifications
