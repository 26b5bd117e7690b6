// The InboxWork of the SQLite durable store (sqlite_durable_db.hpp): the handler's SQL
// (DurableContext::execute) and the inbox's done mark in one transaction on a connection of the
// work's own.
#include <sqlite3.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "sqlite_durable_db.hpp"

namespace notifications::sqlite {
namespace {

// BLOB columns come back as base64 text (RFC 4648, standard alphabet, padded): JSON has no bytes.
std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto n = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                   static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i + 1 == bytes.size()) {
    const auto n = static_cast<unsigned char>(bytes[i]) << 16;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const auto n = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

// Binds `value` as parameter `index` (1-based) of the handler's statement.
void bind_parameter(Database& db, sqlite3_stmt* statement, int index, const nlohmann::json& value) {
  int rc = SQLITE_OK;
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      rc = sqlite3_bind_null(statement, index);
      break;
    case nlohmann::json::value_t::boolean:
      rc = sqlite3_bind_int64(statement, index, value.get<bool>() ? 1 : 0);
      break;
    case nlohmann::json::value_t::number_integer:
      rc = sqlite3_bind_int64(statement, index, value.get<std::int64_t>());
      break;
    case nlohmann::json::value_t::number_unsigned: {
      const auto n = value.get<std::uint64_t>();
      if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        throw DurableError("durable store file \"" + db.path() + "\": execute(): parameter " + std::to_string(index) +
                           " (?" + std::to_string(index) +
                           ") is an integer above 2^63-1, which SQLite cannot store: pass it as a string");
      }
      rc = sqlite3_bind_int64(statement, index, static_cast<std::int64_t>(n));
      break;
    }
    case nlohmann::json::value_t::number_float:
      rc = sqlite3_bind_double(statement, index, value.get<double>());
      break;
    case nlohmann::json::value_t::string: {
      const auto& text = value.get_ref<const std::string&>();
      rc = sqlite3_bind_text64(statement, index, text.data(), text.size(), SQLITE_STATIC, SQLITE_UTF8);
      break;
    }
    default:
      throw DurableError("durable store file \"" + db.path() + "\": execute(): parameter " + std::to_string(index) +
                         " (?" + std::to_string(index) + ") is " + std::string(value.type_name()) +
                         ": only null, bool, number and string can be bound (pass JSON as its text, value.dump())");
  }
  if (rc != SQLITE_OK) db.fail(rc, "execute(): bind parameter " + std::to_string(index));
}

nlohmann::json column_value(sqlite3_stmt* statement, int column) {
  switch (sqlite3_column_type(statement, column)) {
    case SQLITE_INTEGER:
      return sqlite3_column_int64(statement, column);
    case SQLITE_FLOAT:
      return sqlite3_column_double(statement, column);
    case SQLITE_TEXT: {
      const auto* data = reinterpret_cast<const char*>(sqlite3_column_text(statement, column));
      return std::string(data == nullptr ? "" : data, static_cast<std::size_t>(sqlite3_column_bytes(statement, column)));
    }
    case SQLITE_BLOB: {
      const auto* data = static_cast<const char*>(sqlite3_column_blob(statement, column));
      return base64(data == nullptr ? std::string_view()
                                    : std::string_view(data, static_cast<std::size_t>(sqlite3_column_bytes(statement, column))));
    }
    default:
      return nullptr;
  }
}

// The handler's statement: finalized when the scope ends.
struct Finalize {
  void operator()(sqlite3_stmt* statement) const noexcept { sqlite3_finalize(statement); }
};
using UserStatement = std::unique_ptr<sqlite3_stmt, Finalize>;

// A handler call's unit of work: a connection of its own, its transaction begun at the first
// execute() (or at complete()), and the inbox's done mark committed with it.
// Thread-safety: used by one thread at a time (InboxWork).
class SqliteInboxWork final : public InboxWork {
 public:
  SqliteInboxWork(std::shared_ptr<WorkPool> pool, std::string handler, std::string event_id, std::string owner)
      : pool_(std::move(pool)),
        connection_(pool_->borrow()),
        handler_(std::move(handler)),
        event_id_(std::move(event_id)),
        owner_(std::move(owner)) {}

  ~SqliteInboxWork() override {
    if (open_ && sqlite3_exec(db().handle(), "ROLLBACK", nullptr, nullptr, nullptr) != SQLITE_OK &&
        sqlite3_get_autocommit(db().handle()) == 0) {
      return;  // the connection is left in a transaction: closed, never reused
    }
    pool_->give_back(std::move(connection_));
  }
  SqliteInboxWork(const SqliteInboxWork&) = delete;
  SqliteInboxWork& operator=(const SqliteInboxWork&) = delete;

  nlohmann::json execute(std::string_view sql, const nlohmann::json& parameters) override {
    if (finished_) throw misuse("execute() after complete(): the work's transaction has ended");
    if (!parameters.is_array() && !parameters.is_null()) {
      throw misuse("execute(): the parameters must be a JSON array (?1, ?2 ...), not " +
                   std::string(parameters.type_name()));
    }
    begin_or_check();
    const std::string text(sql);
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    connection_->refuse_transaction_control(true);
    const int rc = sqlite3_prepare_v2(db().handle(), text.c_str(), static_cast<int>(text.size()) + 1, &raw, &tail);
    connection_->refuse_transaction_control(false);
    UserStatement statement(raw);
    if (rc == SQLITE_AUTH) {
      db().fail(rc, "execute(): the handler's SQL may not BEGIN, COMMIT or ROLLBACK (the work's transaction "
                    "commits with the done mark at complete())");
    }
    if (rc != SQLITE_OK) db().fail(rc, "execute(): prepare the handler's statement");
    if (!statement) throw misuse("execute(): the SQL holds no statement");
    if (tail != nullptr && has_statement(tail)) {
      throw misuse("execute(): the SQL holds more than one statement: call execute() once per statement");
    }
    const std::size_t given = parameters.is_array() ? parameters.size() : 0;
    const int wanted = sqlite3_bind_parameter_count(statement.get());
    if (given != static_cast<std::size_t>(wanted)) {
      throw misuse("execute(): " + std::to_string(given) + " parameters given, the statement takes " +
                   std::to_string(wanted) + " (its highest ?N)");
    }
    for (std::size_t i = 0; i < given; ++i) bind_parameter(db(), statement.get(), static_cast<int>(i) + 1, parameters[i]);
    nlohmann::json rows = nlohmann::json::array();
    const int columns = sqlite3_column_count(statement.get());
    while (true) {
      const int step = sqlite3_step(statement.get());
      if (step == SQLITE_DONE) break;
      if (step != SQLITE_ROW) {
        const int code = sqlite3_reset(statement.get());
        db().fail(code != SQLITE_OK ? code : step, "execute(): run the handler's statement");
      }
      nlohmann::json row = nlohmann::json::array();
      for (int c = 0; c < columns; ++c) row.push_back(column_value(statement.get(), c));
      rows.push_back(std::move(row));
    }
    return rows;
  }

  bool complete() override {
    if (finished_) throw misuse("complete() called twice: the work's transaction has ended");
    finished_ = true;
    begin_or_check();
    const int changed = [&] {
      Statement& mark = connection_->mark_done();
      mark.bind(1, handler_);
      mark.bind(2, event_id_);
      mark.bind(3, owner_);
      mark.bind(4, now_us());
      return run(db(), mark);
    }();
    if (changed == 0) {  // taken over (or released): nothing of this work may commit
      db().exec("ROLLBACK", "complete(): roll back a work whose claim was taken over");
      open_ = false;
      return false;
    }
    db().exec("COMMIT", "complete(): commit the handler's SQL and the done mark");
    open_ = false;
    return true;
  }

 private:
  Database& db() { return connection_->db(); }

  DurableError misuse(const std::string& what) const {
    return DurableError("durable store file \"" + pool_->path() + "\", handler \"" + handler_ + "\": " + what);
  }

  // Opens the work's transaction, or checks it is still open: SQLite rolls a transaction back
  // by itself after some failures (disk full, I/O error), and committing the done mark without
  // the handler's earlier SQL would break the work's promise.
  void begin_or_check() {
    if (!open_) {
      db().exec("BEGIN IMMEDIATE", "begin the handler's work (waiting for the file's write lock)");
      open_ = true;
    } else if (sqlite3_get_autocommit(db().handle()) != 0) {
      open_ = false;
      finished_ = true;
      throw misuse("SQLite rolled the work's transaction back after a failed statement: the work cannot complete");
    }
  }

  // True when `sql` holds another statement (not only spaces, semicolons and comments).
  bool has_statement(const char* sql) {
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    connection_->refuse_transaction_control(true);
    const int rc = sqlite3_prepare_v2(db().handle(), sql, -1, &raw, &tail);
    connection_->refuse_transaction_control(false);
    UserStatement statement(raw);
    return rc != SQLITE_OK || statement != nullptr;
  }

  std::shared_ptr<WorkPool> pool_;
  std::unique_ptr<Connection> connection_;
  const std::string handler_;
  const std::string event_id_;
  const std::string owner_;
  bool open_ = false;      // the transaction is begun
  bool finished_ = false;  // complete() was called (or the transaction was lost)
};

}  // namespace

std::unique_ptr<InboxWork> make_inbox_work(std::shared_ptr<WorkPool> pool, std::string handler, std::string event_id,
                                           std::string owner) {
  return std::make_unique<SqliteInboxWork>(std::move(pool), std::move(handler), std::move(event_id), std::move(owner));
}

}  // namespace notifications::sqlite
