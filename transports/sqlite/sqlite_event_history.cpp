// make_sqlite_event_history (notifications/sqlite.hpp): an EventStream's history read from the
// events a sqlite:// file holds (table notifications_events, docs/sqlite.md).
//
// Each lookup opens the file for itself and closes it: lookups happen once per reconnecting
// client, run on several clients' threads at once, and so share no connection and take no lock.
// The event is found by its envelope id (the row's message_id) scanning from the newest row,
// where a reconnecting client's position usually is; then the rows after it, in seq order.
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
  explicit SqliteEventHistory(std::string path) : path_(std::move(path)) {}

  std::optional<std::vector<std::string>> events_after(std::string_view event_id, std::size_t limit) override {
    sqlite::Database db(path_, sqlite::Database::Role::transport, sqlite::Database::Open::existing_only);
    sqlite3_busy_timeout(db.handle(), 1000);
    std::optional<std::vector<std::string>> events;
    {
      sqlite::Statement find(db,
                             "SELECT seq FROM notifications_events WHERE message_id = ? ORDER BY seq DESC LIMIT 1",
                             "find a stream client's last event");
      find.bind(1, event_id);
      if (!find.step()) return std::nullopt;
      const std::int64_t seq = find.int64(0);
      find.reset();
      sqlite::Statement after(db, "SELECT body FROM notifications_events WHERE seq > ? ORDER BY seq LIMIT ?",
                              "read the events after a stream client's last event");
      after.bind(1, seq);
      after.bind(2, static_cast<std::int64_t>(limit));
      events.emplace();
      while (after.step()) events->emplace_back(after.blob(0));
      after.reset();
    }
    return events;
  }

 private:
  const std::string path_;
};

}  // namespace

std::shared_ptr<EventHistory> make_sqlite_event_history(std::string path) {
  return std::make_shared<SqliteEventHistory>(std::move(path));
}

}  // namespace notifications
