// make_sqlite_event_history (notifications/sqlite.hpp): an EventStream's history read from the
// events a sqlite:// file holds (table notifications_events, docs/sqlite.md).
//
// Each lookup opens the file for itself and closes it: lookups happen once per reconnecting
// client, run on several clients' threads at once, and so share no connection and take no lock.
// The event is found by its envelope id (the row's message_id, which has no index) among the last
// limit + 1 rows only: one further back has more than `limit` rows after it, which the stream
// refuses anyway, so the scan is bounded whatever id a client sends. The first copy of a message
// sent twice (at least once) counts; copies of that event after it are not replayed.
#include <sqlite3.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "notifications/event_stream.hpp"
#include "notifications/sqlite.hpp"
#include "sqlite_db.hpp"

namespace notifications {

namespace {

class SqliteEventHistory final : public EventHistory {
 public:
  SqliteEventHistory(std::string path, std::string prefix)
      : path_(std::move(path)), subject_start_(prefix.empty() ? std::string() : prefix + ".") {}

  std::optional<std::vector<std::string>> events_after(std::string_view event_id, std::size_t limit) override {
    sqlite::Database db(path_, sqlite::Database::Role::transport, sqlite::Database::Open::existing_only);
    sqlite3_busy_timeout(db.handle(), 1000);
    std::optional<std::vector<std::string>> events;
    {
      const auto rows = static_cast<std::int64_t>(limit) + 1;
      sqlite::Statement find(db,
                             "SELECT seq FROM notifications_events WHERE message_id = ?1 AND seq > "
                             "(SELECT coalesce(max(seq), 0) FROM notifications_events) - ?2 ORDER BY seq LIMIT 1",
                             "find a stream client's last event");
      find.bind(1, event_id);
      find.bind(2, rows);
      if (!find.step()) return std::nullopt;
      const std::int64_t seq = find.int64(0);
      find.reset();
      sqlite::Statement after(db,
                              "SELECT body FROM notifications_events WHERE seq > ?1 AND message_id <> ?2 "
                              "AND substr(subject, 1, length(?3)) = ?3 ORDER BY seq LIMIT ?4",
                              "read the events after a stream client's last event");
      after.bind(1, seq);
      after.bind(2, event_id);
      after.bind(3, subject_start_);
      after.bind(4, static_cast<std::int64_t>(limit));
      events.emplace();
      while (after.step()) events->emplace_back(after.blob(0));
      after.reset();
    }
    return events;
  }

 private:
  const std::string path_;
  const std::string subject_start_;  // "<prefix>.", or empty: every subject
};

}  // namespace

std::shared_ptr<EventHistory> make_sqlite_event_history(std::string path, std::string prefix) {
  return std::make_shared<SqliteEventHistory>(std::move(path), std::move(prefix));
}

}  // namespace notifications
