// The sqlite:// transport's own cases, beyond the conformance suite: URLs and options, bad files,
// named consumers (shared work, positions kept across restarts, a dead member's claims released),
// settlement timing (nak delay, ack wait, max deliveries), retention, idle polling and health.
// Children are this binary run again with --sqlite-child=MODE,DB,REPORT (read from
// /proc/self/cmdline, as gtest_main keeps argv).
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "notifications/bridge.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transports/sqlite.hpp"
#include "sqlite_test_support.hpp"
#include "wait.hpp"
#include "scale.hpp"

namespace {

namespace n = notifications;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::TempDir;
using test_support::wait_until;

n::SqliteTransportOptions options_for(const std::string& path) {
  n::SqliteTransportOptions options;
  options.path = path;
  options.idle_interval = 20ms;
  return options;
}

std::unique_ptr<n::Transport> started(const n::SqliteTransportOptions& options) {
  auto transport = n::make_sqlite_transport(options);
  transport->start();
  return transport;
}

void stop(n::Transport& transport) { transport.stop(std::chrono::steady_clock::now() + 5s); }

std::vector<n::Message> numbered(const std::string& subject, int from, int count) {
  std::vector<n::Message> batch;
  for (int i = from; i < from + count; ++i) {
    batch.push_back(n::Message{subject, std::to_string(i), {}, "id-" + std::to_string(i)});
  }
  return batch;
}

// Deliveries as they arrive, settled by the recorder unless told to keep them.
struct Recorder {
  std::mutex mutex;
  std::vector<std::pair<int, std::uint32_t>> got;  // body as a number, redelivery
  std::vector<n::Delivery> kept;
  bool keep = false;
  n::Settlement how = n::Settle::ack;

  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) {
      std::lock_guard lock(mutex);
      got.emplace_back(std::stoi(d.message.body), d.redelivery);
      if (keep) {
        kept.push_back(std::move(d));
      } else {
        d.settle(how);
      }
    };
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return got.size();
  }
  std::multiset<int> bodies() {
    std::lock_guard lock(mutex);
    std::multiset<int> out;
    for (const auto& [body, redelivery] : got) out.insert(body);
    return out;
  }
};

std::multiset<int> range(int from, int count) {
  std::multiset<int> out;
  for (int i = from; i < from + count; ++i) out.insert(i);
  return out;
}

std::int64_t count_rows(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  std::int64_t value = -1;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* statement = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &statement, nullptr) == SQLITE_OK && sqlite3_step(statement) == SQLITE_ROW) {
      value = sqlite3_column_int64(statement, 0);
    }
    sqlite3_finalize(statement);
  }
  sqlite3_close(db);
  return value;
}

std::string what_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const n::TransportError& e) {
    return e.what();
  }
  return "(no TransportError)";
}

// ---- URLs and options -----------------------------------------------------------------------

TEST(SqliteTransportOptions, UrlGivesThePathAndOptionsTheUrlWins) {
  auto o = n::sqlite_options_from_config({"sqlite:///var/tmp/events.db?idle_interval_ms=40&batch_size=7",
                                          {{"idle_interval_ms", 90}, {"delete_consumed", true}}});
  EXPECT_EQ(o.path, "/var/tmp/events.db");
  EXPECT_EQ(o.idle_interval, 40ms);
  EXPECT_EQ(o.batch_size, 7u);
  EXPECT_TRUE(o.delete_consumed);
  EXPECT_EQ(n::sqlite_options_from_config({"sqlite://data/events.db", {}}).path, "data/events.db");
  EXPECT_TRUE(n::sqlite_options_from_config({"SQLITE:///x.db?synchronous=FULL", {}}).synchronous_full);
}

TEST(SqliteTransportOptions, BadKeysAndValuesAreNamed) {
  const auto error = [](const std::string& url, nlohmann::json options = nlohmann::json::object()) {
    return what_of([&] { n::sqlite_options_from_config({url, options}); });
  };
  EXPECT_NE(error("sqlite:///x.db?idle_interval=5").find("unknown option \"idle_interval\""), std::string::npos);
  EXPECT_NE(error("sqlite:///x.db?batch_size=0").find("\"batch_size\""), std::string::npos);
  EXPECT_NE(error("sqlite:///x.db?synchronous=extra").find("\"synchronous\""), std::string::npos);
  EXPECT_NE(error("sqlite:///x.db", {{"ack_wait_ms", "soon"}}).find("\"ack_wait_ms\""), std::string::npos);
  EXPECT_NE(error("sqlite://").find("no database file"), std::string::npos);
  EXPECT_NE(error("sqlite:///x.db?idle_interval_ms=1&min_poll_interval_us=5000").find("min_poll_interval_us"),
            std::string::npos);
  // Through make_transport: the scheme is registered by linking notifications::sqlite.
  EXPECT_NE(what_of([] { n::make_transport({"sqlite:///x.db?nope=1", {}}); }).find("nope"), std::string::npos);
}

// ---- bad files --------------------------------------------------------------------------------

TEST(SqliteTransportFiles, AMissingFolderIsNamedAtStart) {
  TempDir dir("sqlite-transport");
  auto transport = n::make_sqlite_transport(options_for(dir.file("missing/events.db")));
  const std::string message = what_of([&] { transport->start(); });
  EXPECT_NE(message.find(dir.file("missing/events.db")), std::string::npos) << message;
  EXPECT_NE(message.find("folder must exist"), std::string::npos) << message;
  EXPECT_EQ(transport->health()["state"], "created");
}

TEST(SqliteTransportFiles, AFileThatIsNotADatabaseIsNamedAndLeftAlone) {
  TempDir dir("sqlite-transport");
  const std::string path = dir.file("events.db");
  { std::ofstream(path) << std::string(8192, 'x'); }
  auto transport = n::make_sqlite_transport(options_for(path));
  const std::string message = what_of([&] { transport->start(); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not a SQLite database"), std::string::npos) << message;
  EXPECT_EQ(fs::file_size(path), 8192u);
}

TEST(SqliteTransportFiles, ANewerSchemaIsRefusedAndNothingIsLost) {
  TempDir dir("sqlite-transport");
  const std::string path = dir.file("events.db");
  {
    auto transport = started(options_for(path));
    ASSERT_EQ(transport->publish(numbered("t.a", 0, 3)).published, 3u);
    stop(*transport);
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "UPDATE notifications_meta SET value='99' WHERE key='transport_schema'", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  auto transport = n::make_sqlite_transport(options_for(path));
  const std::string message = what_of([&] { transport->start(); });
  EXPECT_NE(message.find("newer than this library's"), std::string::npos) << message;
  EXPECT_EQ(count_rows(path, "SELECT count(*) FROM notifications_events"), 3);
}

// Another connection holds the write lock past busy_timeout: publish() accepts nothing, says why
// (transient, naming the file), and goes on once the lock is released; nothing committed is lost.
TEST(SqliteTransportFiles, AWriteLockHeldElsewhereMakesPublishTransientAndLosesNothing) {
  TempDir dir("sqlite-transport");
  auto options = options_for(dir.file("events.db"));
  options.busy_timeout = 50ms;
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto transport = started(options);
  transport->subscribe("t.>", "g", r.handler());
  ASSERT_EQ(transport->publish(numbered("t.x", 0, 5)).published, 5u);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(options.path.c_str(), &other), SQLITE_OK);
  sqlite3_busy_timeout(other, 10'000);  // the poller's own write transactions come and go
  const int begun = sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr);
  if (begun != SQLITE_OK) sqlite3_close(other);
  ASSERT_EQ(begun, SQLITE_OK);
  const auto refused = transport->publish(numbered("t.x", 5, 5));
  EXPECT_EQ(refused.published, 0u);
  EXPECT_TRUE(refused.transient);
  EXPECT_NE(refused.error.find(options.path), std::string::npos) << refused.error;
  EXPECT_NE(refused.error.find("busy_timeout_ms"), std::string::npos) << refused.error;
  ASSERT_EQ(sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  ASSERT_EQ(transport->publish(numbered("t.x", 5, 5)).published, 5u);
  ASSERT_TRUE(wait_until([&] { return r.size() >= 10; })) << transport->health().dump();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(r.bodies(), range(0, 10));
  stop(*transport);
}

// ---- named consumers --------------------------------------------------------------------------

TEST(SqliteTransportConsumers, MembersOfAGroupShareTheWorkEachMessageOnce) {
  TempDir dir("sqlite-transport");
  const auto options = options_for(dir.file("events.db"));
  Recorder a, b;  // outlive the transports
  auto first = started(options);
  auto second = started(options);
  auto producer = started(options);
  first->subscribe("work.>", "workers", a.handler());
  second->subscribe("work.>", "workers", b.handler());
  for (int i = 0; i < 10; ++i) ASSERT_EQ(producer->publish(numbered("work.item", i * 50, 50)).published, 50u);
  ASSERT_TRUE(wait_until([&] { return a.size() + b.size() >= 500; }, 30s)) << a.size() << " + " << b.size();
  std::this_thread::sleep_for(50ms);  // room for a duplicate to show
  auto all = a.bodies();
  const auto more = b.bodies();
  all.insert(more.begin(), more.end());
  EXPECT_EQ(all, range(0, 500));
  for (auto* t : {first.get(), second.get(), producer.get()}) stop(*t);
}

TEST(SqliteTransportConsumers, AGroupResumesAtItsPositionAfterARestart) {
  TempDir dir("sqlite-transport");
  const auto options = options_for(dir.file("events.db"));
  auto producer = started(options);
  {
    Recorder r;  // outlives the transport: its poller may still deliver until stopped
    auto consumer = started(options);
    consumer->subscribe("t.>", "g", r.handler());
    ASSERT_EQ(producer->publish(numbered("t.x", 0, 50)).published, 50u);
    ASSERT_TRUE(wait_until([&] { return r.size() == 50; }));
    stop(*consumer);  // acks written by stop
  }
  ASSERT_EQ(producer->publish(numbered("t.x", 50, 30)).published, 30u);  // while no member runs
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto consumer = started(options);
  n::DeliveryOptions group("g");
  group.start = n::StartPosition::all_retained();  // an existing consumer ignores its start
  consumer->subscribe("t.>", group, r.handler());
  ASSERT_TRUE(wait_until([&] { return r.size() >= 30; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(r.bodies(), range(50, 30));
  const auto health = consumer->health();
  ASSERT_EQ(health["subscriptions"].size(), 1u);
  EXPECT_EQ(health["subscriptions"][0]["consumer"], "g");
  EXPECT_TRUE(wait_until([&] {
    const auto h = consumer->health();
    return h["subscriptions"][0]["lag"] == 0 && h["subscriptions"][0]["position"] == 80;
  })) << consumer->health().dump();
  stop(*consumer);
  stop(*producer);
}

TEST(SqliteTransportConsumers, HealthShowsLagUntilAcked) {
  TempDir dir("sqlite-transport");
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto transport = started(options_for(dir.file("events.db")));
  r.keep = true;
  transport->subscribe("t.>", "g", r.handler());
  ASSERT_EQ(transport->publish(numbered("t.x", 0, 10)).published, 10u);
  ASSERT_TRUE(wait_until([&] { return r.size() == 10; }));
  auto subscription = [&] { return transport->health()["subscriptions"][0]; };
  EXPECT_EQ(subscription()["in_flight"], 10);
  EXPECT_EQ(subscription()["lag"], 10);
  {
    std::lock_guard lock(r.mutex);
    for (auto& d : r.kept) d.settle(n::Settle::ack);
  }
  EXPECT_TRUE(wait_until([&] { return subscription()["lag"] == 0 && subscription()["in_flight"] == 0; }))
      << transport->health().dump();
  stop(*transport);
}

// ---- settlement timing --------------------------------------------------------------------------

class SqliteTransportSettling : public ::testing::TestWithParam<bool> {  // true: a named consumer
 protected:
  n::DeliveryOptions delivery_options() const { return GetParam() ? n::DeliveryOptions("g") : n::DeliveryOptions(); }
};

TEST_P(SqliteTransportSettling, ANakComesBackNoSoonerThanItsDelay) {
  TempDir dir("sqlite-transport");
  std::mutex mutex;  // these outlive the transport
  std::vector<std::chrono::steady_clock::time_point> at;
  std::vector<std::uint32_t> redeliveries;
  auto transport = started(options_for(dir.file("events.db")));
  transport->subscribe("t.>", delivery_options(), [&](n::Delivery&& d) {
    std::lock_guard lock(mutex);
    at.push_back(std::chrono::steady_clock::now());
    redeliveries.push_back(d.redelivery);
    d.settle(at.size() == 1 ? n::Settlement::nak_after(300ms) : n::Settlement(n::Settle::ack));
  });
  ASSERT_EQ(transport->publish(numbered("t.x", 7, 1)).published, 1u);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mutex);
    return at.size() == 2;
  }));
  std::lock_guard lock(mutex);
  EXPECT_GE(at[1] - at[0], 300ms);
  EXPECT_EQ(redeliveries, (std::vector<std::uint32_t>{0, 1}));
  EXPECT_EQ(transport->health()["naked"], 1);
}

TEST_P(SqliteTransportSettling, AnUnsettledDeliveryComesBackAfterAckWaitUntilMaxDeliveries) {
  TempDir dir("sqlite-transport");
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto transport = started(options_for(dir.file("events.db")));
  r.keep = true;
  auto options = delivery_options();
  options.ack_wait = 100ms;
  options.max_deliveries = 3;
  transport->subscribe("t.>", options, r.handler());
  ASSERT_EQ(transport->publish(numbered("t.x", 1, 1)).published, 1u);
  ASSERT_TRUE(wait_until([&] { return transport->health()["exhausted"] == 1; }, 20s)) << transport->health().dump();
  std::this_thread::sleep_for(300ms);  // nothing after the last delivery
  std::lock_guard lock(r.mutex);
  EXPECT_EQ(r.got, (std::vector<std::pair<int, std::uint32_t>>{{1, 0}, {1, 1}, {1, 2}}));
  EXPECT_EQ(transport->health()["expired"], 3);  // every ack wait that ended, the last one too
}

TEST_P(SqliteTransportSettling, InProgressKeepsADeliveryFromComingBack) {
  TempDir dir("sqlite-transport");
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto transport = started(options_for(dir.file("events.db")));
  r.keep = true;
  auto options = delivery_options();
  options.ack_wait = 200ms;
  transport->subscribe("t.>", options, r.handler());
  ASSERT_EQ(transport->publish(numbered("t.x", 1, 1)).published, 1u);
  ASSERT_TRUE(wait_until([&] { return r.size() == 1; }));
  for (int i = 0; i < 8; ++i) {  // 800 ms of work, telling the transport every 100 ms
    std::this_thread::sleep_for(100ms);
    std::lock_guard lock(r.mutex);
    r.kept.front().in_progress();
  }
  EXPECT_EQ(r.size(), 1u);
  {
    std::lock_guard lock(r.mutex);
    r.kept.front().settle(n::Settle::ack);
  }
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(r.size(), 1u);
  stop(*transport);
}

INSTANTIATE_TEST_SUITE_P(PlainAndNamed, SqliteTransportSettling, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Named" : "Plain"; });

// ---- retention and polling -------------------------------------------------------------------------

TEST(SqliteTransportRetention, OldRowsAndConsumedRowsAreDeleted) {
  TempDir dir("sqlite-transport");
  auto aged = options_for(dir.file("aged.db"));
  aged.max_age = 200ms;
  aged.cleanup_interval = 20ms;
  Recorder r;  // outlives the transport
  auto transport = started(aged);
  transport->subscribe("t.>", "", [](n::Delivery&& d) { d.settle(n::Settle::ack); });  // keeps the poller busy
  ASSERT_EQ(transport->publish(numbered("t.x", 0, 20)).published, 20u);
  // All but the newest row, which anchors the sequence (a new row never reuses a number).
  ASSERT_TRUE(wait_until([&] { return count_rows(aged.path, "SELECT count(*) FROM notifications_events") == 1; }));
  EXPECT_EQ(count_rows(aged.path, "SELECT max(seq) FROM notifications_events"), 20);
  EXPECT_EQ(transport->health()["retention_deleted"], 19);
  ASSERT_EQ(transport->publish(numbered("t.x", 20, 1)).published, 1u);
  EXPECT_EQ(count_rows(aged.path, "SELECT max(seq) FROM notifications_events"), 21);
  stop(*transport);

  auto consumed = options_for(dir.file("consumed.db"));
  consumed.delete_consumed = true;
  consumed.cleanup_interval = 20ms;
  transport = started(consumed);
  transport->subscribe("t.>", "g", r.handler());
  ASSERT_EQ(transport->publish(numbered("t.x", 0, 20)).published, 20u);
  ASSERT_TRUE(wait_until([&] { return r.size() == 20; }));
  EXPECT_TRUE(wait_until([&] { return count_rows(consumed.path, "SELECT count(*) FROM notifications_events") == 1; }));
  stop(*transport);
}

TEST(SqliteTransportPolling, AnIdleTransportWakesAtMostOncePerIdleInterval) {
  TempDir dir("sqlite-transport");
  auto options = options_for(dir.file("events.db"));
  options.idle_interval = 50ms;
  auto transport = started(options);
  transport->subscribe("t.>", "", [](n::Delivery&& d) { d.settle(n::Settle::ack); });
  std::this_thread::sleep_for(300ms);  // the backoff reaches idle_interval
  const auto before = transport->health()["idle_wakeups"].get<std::uint64_t>();
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(1s);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const auto wakeups = transport->health()["idle_wakeups"].get<std::uint64_t>() - before;
  const auto most = static_cast<std::uint64_t>(elapsed / options.idle_interval) + 2;
  EXPECT_LE(wakeups, most);
  EXPECT_GE(wakeups, 1u);  // it does poll: another process's writes are seen
  stop(*transport);
}

// ---- several processes ------------------------------------------------------------------------------

// The child: "claim" joins group g and holds every delivery unsettled, reporting how many it
// holds, until it is killed; "publish" sends COUNT events through a Bridge and exits.
TEST(SqliteTransportChild, Run) {
  const auto args = test_support::child_arguments("sqlite-child");
  if (args.size() != 3) GTEST_SKIP() << "run by the parent only";
  const std::string& mode = args[0];
  const std::string& db = args[1];
  const std::string& report = args[2];
  if (mode == "claim") {
    Recorder r;  // outlives the transport: its poller may still deliver until stopped
    auto transport = started(options_for(db));
    r.keep = true;
    transport->subscribe("t.>", "g", r.handler());
    for (int i = 0; i < 6000; ++i) {  // at most 60 s; the parent kills it long before
      std::ofstream(report, std::ios::trunc) << r.size() << "\n";
      std::this_thread::sleep_for(10ms);
    }
  } else if (mode == "publish") {
    n::Notifier notifier;
    n::BridgeConfig config;
    config.url = "sqlite://" + db;
    config.app = "child";
    config.subscribe = {};
    auto bridge = n::make_bridge(notifier, config);
    bridge->start();
    for (int i = 0; i < 500; ++i) notifier.instrument("child.event", {{"i", i}});
    const auto report_of_shutdown = bridge->shutdown(10s);
    std::ofstream(report) << (report_of_shutdown.clean ? "clean" : report_of_shutdown.detail) << "\n";
  }
}

test_support::SpawnedChild start_child(const std::string& mode, const std::string& db, const std::string& report,
                                       const std::string& log) {
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  return test_support::spawn_child(
      {self, "--gtest_filter=SqliteTransportChild.Run", "--sqlite-child=" + mode + "," + db + "," + report}, log);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(SqliteTransportProcesses, ClaimsOfAMemberThatDiedAreDeliveredToTheNext) {
  TempDir dir("sqlite-transport");
  const std::string db = dir.file("events.db");
  auto options = options_for(db);
  options.ack_wait = 10min;  // only the release of the dead member's claims can explain a redelivery
  auto producer = started(options);
  // The group exists before the child joins, so that it starts at the first message.
  producer->unsubscribe(producer->subscribe("t.>", "g", [](n::Delivery&& d) { d.settle(n::Settle::nak); }));
  const std::string report = dir.file("report.txt");
  const std::string log = dir.file("child.log");
  auto child = start_child("claim", db, report, log);
  ASSERT_EQ(producer->publish(numbered("t.x", 0, 40)).published, 40u);
  ASSERT_TRUE(wait_until([&] { return read_text(report) == "40\n"; }, 30s))
      << "the child holds " << read_text(report) << "; its output:\n" << read_text(log);
  ::kill(child.pid, SIGKILL);
  const auto ended = test_support::wait_for_child(child.pid, 10s);
  ASSERT_FALSE(ended.exited);
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto next = started(options);
  next->subscribe("t.>", "g", r.handler());
  ASSERT_TRUE(wait_until([&] { return r.size() == 40; }, 30s)) << r.size() << "\n" << next->health().dump();
  EXPECT_EQ(r.bodies(), range(0, 40));
  std::lock_guard lock(r.mutex);
  for (const auto& [body, redelivery] : r.got) EXPECT_EQ(redelivery, 1u) << body;
  stop(*next);
  stop(*producer);
}

TEST(SqliteTransportProcesses, EventsOfAnotherProcessArriveThroughTheFile) {
  TempDir dir("sqlite-transport");
  const std::string db = dir.file("events.db");
  n::Notifier notifier;
  std::atomic<int> received{0};
  auto listener = notifier.subscribe("child.event", [&](const n::Event& e) {
    if (e.remote()) received.fetch_add(1);
  });
  n::BridgeConfig config;
  config.url = "sqlite://" + db;
  config.app = "parent";
  config.forward = {};
  config.group = "listeners";
  auto bridge = n::make_bridge(notifier, config);
  bridge->start();
  const std::string report = dir.file("report.txt");
  const std::string log = dir.file("child.log");
  auto child = start_child("publish", db, report, log);
  const auto ended = test_support::wait_for_child(child.pid, 60s);
  ASSERT_TRUE(ended.exited && ended.exit_code == 0) << ended.describe() << read_text(log);
  EXPECT_EQ(read_text(report), "clean\n");
  ASSERT_TRUE(wait_until([&] { return received.load() == 500; })) << received.load();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(received.load(), 500);
  EXPECT_TRUE(bridge->shutdown(10s).clean);
}

// Fork: prepare_fork() closes the connections and parks the poller; after_fork() reopens both in
// the parent and the child, which then exchange messages through the file like any two processes.
TEST(SqliteTransportFork, ParentAndChildBothGoOnThroughTheFile) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  GTEST_SKIP() << "ASan's allocator is not fork-safe (as in test_fork_transports.cpp)";
#endif
  TempDir dir("sqlite-transport");
  Recorder r;  // outlives the transport: its poller may still deliver until stopped
  auto transport = started(options_for(dir.file("events.db")));
  transport->subscribe("fork.>", "", r.handler());
  ASSERT_EQ(transport->publish(numbered("fork.x", 1, 1)).published, 1u);
  ASSERT_TRUE(wait_until([&] { return r.size() == 1; }));
  n::prepare_fork();
  const pid_t pid = ::fork();
  n::after_fork();
  if (pid == 0) {
    if (transport->publish(numbered("fork.x", 2, 1)).published != 1) _exit(11);
    if (!wait_until([&] { return r.bodies().count(2) == 1; }, 20s)) _exit(12);
    stop(*transport);
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(wait_until([&] { return r.bodies().count(2) == 1; }, 20s)) << "the child's message";
  ASSERT_EQ(transport->publish(numbered("fork.x", 3, 1)).published, 1u);
  EXPECT_TRUE(wait_until([&] { return r.bodies().count(3) == 1; }));
  const auto child = test_support::wait_for_child(pid, 30s);
  EXPECT_TRUE(child.exited && child.exit_code == 0) << child.describe() << " (11: publish refused, 12: not received)";
  stop(*transport);
}

}  // namespace
