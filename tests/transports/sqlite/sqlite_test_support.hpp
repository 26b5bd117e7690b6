// Helpers shared by the SQLite outbox tests: a temporary folder and a reader of the outbox's
// table that uses a connection of its own.
// Thread-safety: TempDir is used by one test at a time; rows_in() and scalar() may be called from
// any thread.
#pragma once

#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

namespace test_support {

// A fresh folder under the system's temporary folder (readable and searchable by other users, for
// the tests that drop privileges), removed at the end of the test.
class TempDir {
 public:
  explicit TempDir(const std::string& what = "outbox") {
    namespace fs = std::filesystem;
    static std::atomic<int> next{0};
    path_ = fs::temp_directory_path() /
            ("notifications-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(next.fetch_add(1)));
    fs::remove_all(path_);
    fs::create_directories(path_);
    fs::permissions(path_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path() const { return path_.string(); }
  std::string file(const std::string& name = "outbox.db") const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Rows in the outbox file, read by a connection of its own (WAL lets it read beside the outbox
// and beside another connection's write transaction); -1 when it cannot be read.
inline int rows_in(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return -1;
  }
  sqlite3_stmt* stmt = nullptr;
  int rows = -1;
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM notifications_outbox", -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    rows = sqlite3_column_int(stmt, 0);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return rows;
}

// A single integer that `sql` reads from the file, by a connection of the caller's own (waiting up
// to 5 s for locks); -1 when it cannot be read.
inline long long scalar(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  long long value = -1;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* statement = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &statement, nullptr) == SQLITE_OK &&
        sqlite3_step(statement) == SQLITE_ROW) {
      value = sqlite3_column_int64(statement, 0);
    }
    sqlite3_finalize(statement);
  }
  sqlite3_close(db);
  return value;
}

}  // namespace test_support
