// The SQLite outbox (issue 13) against raw SQLite C loops and the memory outbox, every baseline
// measured in the same run. One JSON line per measurement (medians over the repetitions), then one
// line per goal with PASS or MISS.
//
//   {"bench":"sqlite_outbox","mode":"async","threads":1,"events_per_s":...,"none_events_per_s":...,
//    "outbox_cpu_us_per_event":...,"raw_insert_cpu_us_per_row":...,"cpu_ratio":...}
//   {"bench":"sqlite_outbox","mode":"sync","threads":N,"events_per_s":...,"commits_per_event":...,
//    "raw_single_commit_per_s":...}                                            (N = 1 and 2)
//   {"bench":"sqlite_outbox_detail",...}   the figures the ratios come from
//   {"bench":"sqlite_outbox_goal","goal":"...","value":...,"limit":...,"result":"PASS"|"MISS"}
//
// The bridge: memory:// with no remote subscriber, so a publish costs almost nothing and the
// outbox is what differs between runs (mock:// would add its per-call records). Each run is timed
// from the first instrument() to flush() returning (every event sent and settled); CPU is the
// process CPU time (CLOCK_PROCESS_CPUTIME_ID) over the same span, all threads included.
//   async: outbox_cpu_us_per_event is the DIFFERENCE of CPU per event between the bridge with
//          durability async and the same bridge with durability none (what the outbox adds:
//          inserts, deletes of settled rows, the flush per batch a durable outbox asks of a
//          non-persistent transport). The whole figures are on the detail line.
//          raw_insert_cpu_us_per_row: a raw sqlite3 loop inserting rows of the outbox's shape
//          (same table, same bound values), WAL, synchronous=NORMAL, BEGIN IMMEDIATE, batch_size
//          rows per transaction. cpu_ratio = outbox_cpu_us_per_event / raw_insert_cpu_us_per_row.
//   sync:  durability sync, synchronous=NORMAL, N instrumenting threads sharing the events;
//          commits_per_event counts every transaction the outbox committed (OutboxStats::commits:
//          inserts, and the sender's deletes of settled rows) over the events.
//          raw_single_commit_per_s: a raw loop committing one row per BEGIN IMMEDIATE transaction.
//
// Usage: bench_sqlite_outbox [--events N] [--repetitions R] [--dir D]
//   (defaults 100000, 3, /tmp; files bench_sqlite_outbox-<pid>-* are removed at the end)
#include <sqlite3.h>
#include <time.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/memory.hpp"

namespace n = notifications;
using Clock = std::chrono::steady_clock;

namespace {

std::string g_dir = "/tmp";

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string db_path(const char* what) {
  static int counter = 0;
  return g_dir + "/bench_sqlite_outbox-" + std::to_string(::getpid()) + "-" + what + "-" + std::to_string(counter++) +
         ".db";
}

void remove_db(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal", ".lock"}) std::remove((path + suffix).c_str());
}

nlohmann::json payload() {
  return {{"order_id", 12345}, {"customer", "ada"}, {"total_cents", 4200}, {"items", {"mug", "hoodie"}}};
}

constexpr std::size_t kBatch = 256;  // BridgeConfig::batch_size default, and the raw loop's

struct Run {
  double seconds = 0;
  double cpu_seconds = 0;
  std::uint64_t commits = 0;
};

Run run_bridge(n::Durability durability, int threads, std::size_t events) {
  static int broker = 0;
  n::Notifier notifier;
  n::BridgeConfig config;
  config.app = "bench";
  config.prefix = "bench";
  config.forward = {"order.>"};
  config.subscribe = {};
  config.queue_capacity = 65536;
  config.overflow = n::OverflowPolicy::block;
  config.block_timeout = std::chrono::seconds(30);
  config.batch_size = kBatch;
  config.durability = durability;
  std::string path;
  n::BridgeHooks hooks;
  if (durability != n::Durability::none) {
    path = db_path(durability == n::Durability::sync ? "sync" : "async");
    config.outbox.path = path;
    config.outbox.synchronous = n::OutboxConfig::Synchronous::normal;
    hooks.outbox = n::make_sqlite_outbox(config);
  }
  auto outbox = hooks.outbox;
  Run run;
  {
    n::Bridge bridge(notifier,
                     n::make_memory_transport({.broker = "bench-sqlite-outbox-" + std::to_string(broker++)}), config,
                     hooks);
    bridge.start();
    const nlohmann::json body = payload();
    const std::uint64_t commits_before = outbox ? outbox->stats().commits : 0;
    const double cpu0 = cpu_seconds();
    const auto t0 = Clock::now();
    auto work = [&](std::size_t count) {
      for (std::size_t i = 0; i < count; ++i) notifier.instrument("order.placed", body);
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, events / threads);
    work(events - (events / threads) * (threads - 1));
    for (auto& thread : pool) thread.join();
    if (!bridge.flush(std::chrono::seconds(120))) {
      std::fprintf(stderr, "bench_sqlite_outbox: flush timed out\n");
      std::exit(1);
    }
    run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    run.cpu_seconds = cpu_seconds() - cpu0;
    run.commits = outbox ? outbox->stats().commits - commits_before : 0;
    const auto health = bridge.health();
    const auto sent = health["counters"]["sent"].get<std::uint64_t>();
    if (sent != events) {
      std::fprintf(stderr, "bench_sqlite_outbox: %llu of %zu events sent\n", static_cast<unsigned long long>(sent),
                   events);
      std::exit(1);
    }
    bridge.shutdown(std::chrono::seconds(30));
  }
  outbox.reset();
  if (!path.empty()) remove_db(path);
  return run;
}

void check(int rc, sqlite3* db, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    std::fprintf(stderr, "bench_sqlite_outbox: raw %s: %s\n", what, sqlite3_errmsg(db));
    std::exit(1);
  }
}

// A raw C loop inserting `rows` rows of the outbox's shape, `per_transaction` rows per
// BEGIN IMMEDIATE ... COMMIT, in WAL mode with synchronous=NORMAL.
Run run_raw(std::size_t rows, std::size_t per_transaction) {
  const std::string path = db_path("raw");
  sqlite3* db = nullptr;
  check(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr),
        db, "open");
  check(sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr), db, "WAL");
  check(sqlite3_exec(db, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr), db, "synchronous");
  check(sqlite3_exec(db,
                     "CREATE TABLE notifications_outbox("
                     " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                     " name TEXT NOT NULL, payload TEXT NOT NULL, traceparent TEXT NOT NULL,"
                     " time_us INTEGER NOT NULL, duration_us INTEGER NOT NULL,"
                     " exception_type TEXT, exception_message TEXT,"
                     " id_salt INTEGER NOT NULL, id_sequence INTEGER NOT NULL)",
                     nullptr, nullptr, nullptr),
        db, "create");
  sqlite3_stmt* insert = nullptr;
  check(sqlite3_prepare_v3(db,
                           "INSERT INTO notifications_outbox(name, payload, traceparent, time_us, duration_us,"
                           " exception_type, exception_message, id_salt, id_sequence) VALUES(?,?,?,?,?,?,?,?,?)",
                           -1, SQLITE_PREPARE_PERSISTENT, &insert, nullptr),
        db, "prepare");
  const std::string name = "order.placed";
  const std::string body = payload().dump();  // the payload as the outbox stores it (compact JSON)
  Run run;
  const double cpu0 = cpu_seconds();
  const auto t0 = Clock::now();
  std::size_t done = 0;
  while (done < rows) {
    check(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), db, "begin");
    const std::size_t end = std::min(rows, done + per_transaction);
    for (; done < end; ++done) {
      const auto now_us =
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch());
      sqlite3_bind_text64(insert, 1, name.data(), name.size(), SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_text64(insert, 2, body.data(), body.size(), SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_text64(insert, 3, "", 0, SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_int64(insert, 4, now_us.count());
      sqlite3_bind_int64(insert, 5, 3);
      sqlite3_bind_null(insert, 6);
      sqlite3_bind_null(insert, 7);
      sqlite3_bind_int64(insert, 8, 0x1234567890abcdefLL);
      sqlite3_bind_int64(insert, 9, static_cast<sqlite3_int64>(done + 1));
      check(sqlite3_step(insert), db, "insert");
      sqlite3_reset(insert);
    }
    check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), db, "commit");
    ++run.commits;
  }
  run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  run.cpu_seconds = cpu_seconds() - cpu0;
  sqlite3_finalize(insert);
  sqlite3_close(db);
  remove_db(path);
  return run;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t m = values.size() / 2;
  return values.size() % 2 == 1 ? values[m] : (values[m - 1] + values[m]) / 2;
}

void goal(const char* what, double value, double limit, bool pass) {
  std::printf("{\"bench\":\"sqlite_outbox_goal\",\"goal\":\"%s\",\"value\":%.3f,\"limit\":%.3f,\"result\":\"%s\"}\n",
              what, value, limit, pass ? "PASS" : "MISS");
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t events = 100000;
  int repetitions = 3;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--events") == 0 && has_value) {
      events = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--repetitions") == 0 && has_value) {
      repetitions = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--dir") == 0 && has_value) {
      g_dir = argv[++i];
    } else {
      std::fprintf(stderr, "usage: bench_sqlite_outbox [--events N] [--repetitions R] [--dir D]\n");
      return 2;
    }
  }
  if (events < 2 || repetitions < 1) {
    std::fprintf(stderr, "bench_sqlite_outbox: --events >= 2 and --repetitions >= 1\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);  // keep stdout to the JSON lines

  std::vector<double> none_eps, none_cpu, async_eps, async_cpu, raw_cpu, raw_batch_rps;
  std::vector<double> sync_eps[3], sync_cpe[3], raw_single_rps;
  for (int r = 0; r < repetitions; ++r) {
    // Interleaved, so that a change in the machine's load falls on every variant alike.
    const Run none = run_bridge(n::Durability::none, 1, events);
    const Run async = run_bridge(n::Durability::async, 1, events);
    const Run raw = run_raw(events, kBatch);
    const Run sync1 = run_bridge(n::Durability::sync, 1, events);
    const Run sync2 = run_bridge(n::Durability::sync, 2, events);
    const Run single = run_raw(events, 1);
    const auto e = static_cast<double>(events);
    none_eps.push_back(e / none.seconds);
    none_cpu.push_back(1e6 * none.cpu_seconds / e);
    async_eps.push_back(e / async.seconds);
    async_cpu.push_back(1e6 * async.cpu_seconds / e);
    raw_cpu.push_back(1e6 * raw.cpu_seconds / e);
    raw_batch_rps.push_back(e / raw.seconds);
    sync_eps[1].push_back(e / sync1.seconds);
    sync_cpe[1].push_back(static_cast<double>(sync1.commits) / e);
    sync_eps[2].push_back(e / sync2.seconds);
    sync_cpe[2].push_back(static_cast<double>(sync2.commits) / e);
    raw_single_rps.push_back(e / single.seconds);
    std::fprintf(stderr,
                 "run %d: none %.0f/s %.2fus, async %.0f/s %.2fus, raw256 %.0f/s %.2fus, sync1 %.0f/s %.3f c/e, "
                 "sync2 %.0f/s %.3f c/e, raw1 %.0f/s\n",
                 r + 1, none_eps.back(), none_cpu.back(), async_eps.back(), async_cpu.back(), raw_batch_rps.back(),
                 raw_cpu.back(), sync_eps[1].back(), sync_cpe[1].back(), sync_eps[2].back(), sync_cpe[2].back(),
                 raw_single_rps.back());
  }

  const double none_e = median(none_eps), async_e = median(async_eps);
  const double none_c = median(none_cpu), async_c = median(async_cpu);
  const double outbox_c = async_c - none_c;
  const double raw_c = median(raw_cpu);
  const double ratio = outbox_c / raw_c;
  const double raw1 = median(raw_single_rps);
  std::printf(
      "{\"bench\":\"sqlite_outbox\",\"mode\":\"async\",\"threads\":1,\"events_per_s\":%.0f,\"none_events_per_s\":%.0f,"
      "\"outbox_cpu_us_per_event\":%.3f,\"raw_insert_cpu_us_per_row\":%.3f,\"cpu_ratio\":%.2f}\n",
      async_e, none_e, outbox_c, raw_c, ratio);
  for (int t = 1; t <= 2; ++t) {
    std::printf(
        "{\"bench\":\"sqlite_outbox\",\"mode\":\"sync\",\"threads\":%d,\"events_per_s\":%.0f,\"commits_per_event\":%.3f,"
        "\"raw_single_commit_per_s\":%.0f}\n",
        t, median(sync_eps[t]), median(sync_cpe[t]), raw1);
  }
  std::printf(
      "{\"bench\":\"sqlite_outbox_detail\",\"events\":%zu,\"repetitions\":%d,\"batch_size\":%zu,"
      "\"async_cpu_us_per_event\":%.3f,\"none_cpu_us_per_event\":%.3f,\"raw_insert_rows_per_s\":%.0f,"
      "\"outbox_cpu_is\":\"async minus none\"}\n",
      events, repetitions, kBatch, async_c, none_c, median(raw_batch_rps));
  const double s1 = median(sync_eps[1]), s2 = median(sync_eps[2]);
  goal("async cpu_ratio <= 2", ratio, 2, ratio <= 2);
  goal("async events_per_s >= 0.5 x none_events_per_s", async_e / none_e, 0.5, async_e >= 0.5 * none_e);
  goal("sync 1 thread events_per_s >= 0.8 x raw_single_commit_per_s", s1 / raw1, 0.8, s1 >= 0.8 * raw1);
  goal("sync 2 threads commits_per_event <= 0.6", median(sync_cpe[2]), 0.6, median(sync_cpe[2]) <= 0.6);
  goal("sync 2 threads events_per_s >= 1.5 x sync 1 thread", s2 / s1, 1.5, s2 >= 1.5 * s1);
  return 0;
}
