// The SQLite outbox (notifications/sqlite.hpp): the Outbox promises against it, what it keeps in
// its file across a restart (replay, same event ids), sync commits, spill, one outbox per file,
// and a Bridge that keeps what it could not send for its next start. Every wait is bounded;
// nothing asserts speed.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/outbox.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/mock.hpp"
#include "child_process.hpp"
#include "notifications/fork.hpp"
#include "remote/bridge_test_support.hpp"
#include "transports/sqlite/sqlite_test_support.hpp"
#include "wait.hpp"
#include "scale.hpp"

namespace n = notifications;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Push = n::Outbox::Push;
using Settled = n::Outbox::Settled;
using Names = std::vector<std::string>;

namespace {

using test_support::rows_in;

class TempDir : public test_support::TempDir {
 public:
  TempDir() : test_support::TempDir("outbox") {}
};

n::BridgeConfig outbox_config(const std::string& path, n::Durability durability, std::size_t capacity = 100) {
  n::BridgeConfig config = test_support::config_for("outbox");
  config.durability = durability;
  config.outbox.path = path;
  config.queue_capacity = capacity;
  config.batch_size = std::min<std::size_t>(capacity, 4);
  return config;
}

n::OutboxEvent item(const std::string& name, std::uint64_t id_sequence = 0) {
  n::OutboxEvent event;
  event.set_text(name, R"({"n":1})", "");
  event.id_sequence = id_sequence;
  return event;
}

Push push(n::Outbox& outbox, const std::string& name, n::OverflowPolicy policy = n::OverflowPolicy::drop_newest,
          std::uint64_t id_sequence = 0) {
  return outbox.push(item(name, id_sequence), policy, 1ms, nullptr, nullptr);
}

Names take(n::Outbox& outbox, std::size_t max) {
  std::span<n::OutboxEvent> batch;
  outbox.take(batch, max, Clock::now() + 1s);
  Names out;
  for (const auto& event : batch) out.emplace_back(event.name());
  return out;
}

// Takes and settles until `count` names were taken (bounded: at most 2 s).
Names take_all(n::Outbox& outbox, std::size_t count) {
  Names taken;
  const auto until = Clock::now() + 2s;
  while (taken.size() < count && Clock::now() < until) {
    const Names batch = take(outbox, 3);
    taken.insert(taken.end(), batch.begin(), batch.end());
    outbox.settle(batch.size(), Settled::confirmed);
  }
  return taken;
}

TEST(SqliteOutbox, OutboxPromise1_TakeHandsOutItemsInPushOrder) {
  TempDir dir;
  for (const n::Durability durability : {n::Durability::none, n::Durability::async, n::Durability::sync}) {
    const std::string path = dir.file("order-" + n::to_string(durability) + ".db");
    auto outbox = n::make_sqlite_outbox(outbox_config(path, durability));
    Names pushed;
    for (int i = 0; i < 10; ++i) {
      pushed.push_back("e" + std::to_string(i));
      ASSERT_EQ(push(*outbox, pushed.back()), Push::accepted);
    }
    EXPECT_EQ(take_all(*outbox, pushed.size()), pushed) << n::to_string(durability);
  }
}

TEST(SqliteOutbox, OutboxPromise3_ReleasedItemsComeBackFirstInTheirOrder) {
  TempDir dir;
  auto outbox = n::make_sqlite_outbox(outbox_config(dir.file(), n::Durability::async));
  for (const char* name : {"1", "2", "3", "4", "5", "6"}) ASSERT_EQ(push(*outbox, name), Push::accepted);
  EXPECT_EQ(take(*outbox, 4), (Names{"1", "2", "3", "4"}));
  outbox->settle(1, Settled::confirmed);
  outbox->release();
  ASSERT_EQ(push(*outbox, "7"), Push::accepted);
  EXPECT_EQ(take_all(*outbox, 6), (Names{"2", "3", "4", "5", "6", "7"}));
}

TEST(SqliteOutbox, SyncPushReturnsOnlyOnceTheEventIsInTheFile) {
  TempDir dir;
  const std::string path = dir.file();
  auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync));
  for (int i = 1; i <= 5; ++i) {
    ASSERT_EQ(push(*outbox, "e" + std::to_string(i)), Push::accepted);
    EXPECT_EQ(rows_in(path), i) << "a sync push returned before its row was committed";
  }
}

TEST(SqliteOutbox, ConcurrentSyncPushesAreAllStoredInOneOrderPerThread) {
  TempDir dir;
  const std::string path = dir.file();
  auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync, 10000));
  constexpr int kThreads = 4;
  constexpr int kEach = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) push(*outbox, "t" + std::to_string(t) + "." + std::to_string(1000 + i));
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(rows_in(path), kThreads * kEach);
  const Names taken = take_all(*outbox, kThreads * kEach);
  ASSERT_EQ(taken.size(), static_cast<std::size_t>(kThreads * kEach));
  std::vector<std::string> last(kThreads);
  for (const std::string& name : taken) {
    const int t = name[1] - '0';
    EXPECT_LT(last[t], name) << "events of one thread came out of order";
    last[t] = name;
  }
}

TEST(SqliteOutbox, WhatWasNotSettledIsHandedOutAgainAfterAReopenWithTheSameEventIds) {
  TempDir dir;
  const std::string path = dir.file();
  {
    auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync));
    for (int i = 0; i < 5; ++i) ASSERT_EQ(push(*outbox, "e" + std::to_string(i), n::OverflowPolicy::block, 100 + i), Push::accepted);
    EXPECT_EQ(take(*outbox, 2), (Names{"e0", "e1"}));
    outbox->settle(2, Settled::confirmed);
    EXPECT_EQ(take(*outbox, 1), (Names{"e2"}));  // taken, never settled: the process "dies"
  }
  auto reopened = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync));
  EXPECT_EQ(reopened->stats().depth, 3u);
  std::span<n::OutboxEvent> batch;
  reopened->take(batch, 10, Clock::now() + 1s);
  ASSERT_EQ(batch.size(), 3u);
  EXPECT_EQ(batch[0].name(), "e2");
  EXPECT_EQ(batch[0].id_sequence, 102u);
  EXPECT_EQ(batch[0].id_salt, n::OutboxEvent::this_process_id_salt()) << "the salt the id was made with is kept";
  EXPECT_EQ(batch[2].name(), "e4");
  EXPECT_EQ(batch[2].payload(), R"({"n":1})");
}

TEST(SqliteOutbox, SpillWritesPastTheMemoryBoundInsteadOfDropping) {
  TempDir dir;
  n::BridgeConfig config = outbox_config(dir.file(), n::Durability::none, 4);
  config.overflow = n::OverflowPolicy::spill;
  auto outbox = n::make_sqlite_outbox(config);
  Names pushed;
  for (int i = 0; i < 20; ++i) {
    pushed.push_back("e" + std::to_string(10 + i));
    ASSERT_EQ(push(*outbox, pushed.back(), n::OverflowPolicy::spill), Push::accepted);
  }
  EXPECT_GE(outbox->stats().spilled, 1u);
  EXPECT_EQ(take_all(*outbox, pushed.size()), pushed) << "spilled events keep their place in the order";
}

TEST(SqliteOutbox, WithoutSpillAFullMemoryRefusesInDurabilityNone) {
  TempDir dir;
  auto outbox = n::make_sqlite_outbox(outbox_config(dir.file(), n::Durability::none, 2));
  EXPECT_EQ(push(*outbox, "a"), Push::accepted);
  EXPECT_EQ(push(*outbox, "b"), Push::accepted);
  EXPECT_EQ(push(*outbox, "c"), Push::dropped_newest);
}

TEST(SqliteOutbox, AsyncWritesAFullMemoryQueueToTheFileWhateverThePolicy) {
  TempDir dir;
  auto outbox = n::make_sqlite_outbox(outbox_config(dir.file(), n::Durability::async, 2));
  Names pushed;
  for (int i = 0; i < 12; ++i) {
    pushed.push_back("e" + std::to_string(10 + i));
    ASSERT_EQ(push(*outbox, pushed.back(), n::OverflowPolicy::drop_newest), Push::accepted) << pushed.back();
  }
  EXPECT_EQ(take_all(*outbox, pushed.size()), pushed);
}

TEST(SqliteOutbox, DrainKeepsWhatWaitsForTheNextStart) {
  TempDir dir;
  const std::string path = dir.file();
  {
    auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::none));
    for (const char* name : {"a", "b", "c", "d"}) ASSERT_EQ(push(*outbox, name), Push::accepted);
    EXPECT_EQ(take(*outbox, 1), (Names{"a"}));
    outbox->settle(1, Settled::confirmed);
    EXPECT_EQ(take(*outbox, 1), (Names{"b"}));
    outbox->release();  // b was in flight: it goes back, and to the file
    outbox->close();
    EXPECT_TRUE(outbox->drain().empty());
    EXPECT_TRUE(outbox->persistent());
  }
  EXPECT_EQ(rows_in(path), 3);
  auto reopened = n::make_sqlite_outbox(outbox_config(path, n::Durability::none));
  EXPECT_EQ(take_all(*reopened, 3), (Names{"b", "c", "d"}));
}

TEST(SqliteOutbox, ASecondOutboxOnTheSameFileIsRefusedNamingIt) {
  TempDir dir;
  const std::string path = dir.file();
  auto first = n::make_sqlite_outbox(outbox_config(path, n::Durability::async));
  try {
    n::make_sqlite_outbox(outbox_config(path, n::Durability::async));
    FAIL() << "a second outbox on one file was accepted";
  } catch (const n::OutboxError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(SqliteOutbox, AFileThatIsNotADatabaseIsRefusedNamingIt) {
  TempDir dir;
  const std::string path = dir.file();
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string junk(8192, 'x');
    std::fwrite(junk.data(), 1, junk.size(), f);
    std::fclose(f);
  }
  try {
    n::make_sqlite_outbox(outbox_config(path, n::Durability::async));
    FAIL() << "a corrupted file was accepted";
  } catch (const n::OutboxError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// ---- through a Bridge -----------------------------------------------------------------------------

TEST(SqliteOutboxBridge, EveryEventIsDeliveredAndTheFileEmptiesOnceConfirmed) {
  TempDir dir;
  const std::string path = dir.file();
  const std::string broker = test_support::unique_broker("outbox");
  n::Notifier sender_bus;
  n::Notifier receiver_bus;
  n::BridgeConfig config = outbox_config(path, n::Durability::async, 1000);
  config.url = "memory://" + broker;
  config.subscribe = {};
  auto sender = n::make_bridge(sender_bus, config);
  n::BridgeConfig receive = test_support::config_for("receiver");
  receive.url = "memory://" + broker;
  receive.forward = {};
  auto receiver = n::make_bridge(receiver_bus, receive);
  std::atomic<int> received{0};
  auto subscription = receiver_bus.subscribe("order.placed", [&](const n::Event&) { received.fetch_add(1); });
  receiver->start();
  sender->start();
  for (int i = 0; i < 300; ++i) sender_bus.instrument("order.placed", {{"i", i}});
  ASSERT_TRUE(sender->flush(10s));
  ASSERT_TRUE(receiver->wait_delivered(10s));
  EXPECT_EQ(received.load(), 300);
  EXPECT_TRUE(test_support::wait_until([&] { return sender->health()["queue"]["stored"].get<std::size_t>() == 0; }, 5s))
      << sender->health().dump();
  EXPECT_NE(sender->health()["queue"]["outbox"].get<std::string>().find("sqlite"), std::string::npos);
  const n::ShutdownReport report = sender->shutdown(5s);
  EXPECT_EQ(report.kept, 0u);
  EXPECT_TRUE(report.clean) << report.detail;
  receiver->shutdown(5s);
}

TEST(SqliteOutboxBridge, WhatAFailingTransportDidNotTakeIsKeptAndSentByTheNextStart) {
  TempDir dir;
  const std::string path = dir.file();
  n::Notifier bus;
  {
    auto mock = std::make_shared<n::MockTransport>();
    auto bridge = std::make_unique<n::Bridge>(bus, mock, outbox_config(path, n::Durability::async, 1000));
    bridge->start();
    mock->fail_next_publishes(1000000);
    for (int i = 0; i < 50; ++i) bus.instrument("order.placed", {{"i", i}});
    const n::ShutdownReport report = bridge->shutdown(300ms);
    EXPECT_EQ(report.kept, 50u) << report.detail;
    EXPECT_EQ(report.undelivered, 0u) << report.detail;
    EXPECT_EQ(test_support::dropped(bridge->health(), "shutdown_deadline"), 0u);
  }
  EXPECT_EQ(rows_in(path), 50);
  n::Notifier next_bus;
  auto mock = std::make_shared<n::MockTransport>();
  auto bridge = std::make_unique<n::Bridge>(next_bus, mock, outbox_config(path, n::Durability::async, 1000));
  bridge->start();
  ASSERT_TRUE(mock->wait_for_published(50, 10s)) << bridge->health().dump();
  const auto published = mock->published();
  ASSERT_EQ(published.size(), 50u);
  for (int i = 0; i < 50; ++i) {
    const auto body = nlohmann::json::parse(published[static_cast<std::size_t>(i)].body);
    EXPECT_EQ(body["payload"]["i"], i) << "replayed out of order";
  }
  EXPECT_EQ(bridge->shutdown(5s).kept, 0u);
}

// prepare_fork() parks the outbox's writer thread with the Bridge's own; the child keeps its own
// events in memory (the file is the parent's, never touched there), the parent goes on with its
// file. A hang (the writer holding a lock across the fork) shows as a child that never exits.
TEST(SqliteOutboxBridge, AcrossAForkTheParentKeepsItsFileAndTheChildItsMemory) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  GTEST_SKIP() << "ASan's allocator is not fork-safe (see tests/process/test_fork_without_prepare.cpp)";
#endif
  TempDir dir;
  const std::string path = dir.file();
  const std::string url = "memory://" + test_support::unique_broker("outbox-fork") + "?mode=queued";
  n::Notifier orders;
  n::Notifier analytics;
  n::BridgeConfig config = outbox_config(path, n::Durability::async, 1000);
  config.url = url;
  config.subscribe = {};
  auto sender = n::make_bridge(orders, config);
  n::BridgeConfig receive = test_support::config_for("analytics");
  receive.url = url;
  receive.forward = {};
  auto receiver = n::make_bridge(analytics, receive);
  sender->start();
  receiver->start();
  std::atomic<int> seen{0};
  auto subscription = analytics.subscribe("order.>", [&](const n::Event& e) {
    if (e.remote()) seen.fetch_add(1);
  });
  for (int i = 0; i < 20; ++i) orders.instrument("order.placed", {{"i", i}});

  n::prepare_fork();
  const pid_t pid = ::fork();
  n::after_fork();
  const int events = pid == 0 ? 7 : 11;
  for (int i = 0; i < events; ++i) orders.instrument("order.placed", {{"i", i}});
  const bool flushed = sender->flush(10s);
  const bool delivered = receiver->wait_delivered(10s);
  if (pid == 0) {
    if (!flushed) _exit(20);
    if (!delivered) _exit(21);
    if (sender->health()["queue"]["outbox"].get<std::string>().find("forked child") == std::string::npos) _exit(23);
    sender->shutdown(10s);
    receiver->shutdown(10s);
    _exit(0);
  }
  ASSERT_GT(pid, 0) << "fork failed";
  EXPECT_TRUE(flushed);
  EXPECT_TRUE(delivered);
  EXPECT_TRUE(test_support::wait_until([&] { return seen.load() == 20 + events; }, 10s)) << seen.load();
  const auto r = test_support::wait_for_child(pid, 30s);
  ASSERT_FALSE(r.timed_out) << "the child hung";
  ASSERT_TRUE(r.exited) << "the child was killed by signal " << r.signal;
  EXPECT_EQ(r.exit_code, 0) << "20: flush, 21: wait_delivered, 23: the child claims the parent's file";
  EXPECT_EQ(sender->health()["queue"]["outbox"].get<std::string>().rfind("sqlite", 0), 0u);
  EXPECT_TRUE(sender->shutdown(10s).clean);
  EXPECT_EQ(rows_in(path), 0) << "the parent's file holds what it did not confirm: nothing";
}

TEST(SqliteOutboxBridge, DurabilityWithoutTheFileIsAConfigErrorNamingTheKey) {
  n::Notifier bus;
  n::BridgeConfig config = test_support::config_for("nofile");
  config.durability = n::Durability::async;
  EXPECT_THROW(n::make_bridge(bus, config), n::ConfigError);
}

}  // namespace

namespace {

constexpr const char* kAttributes = R"({"context":{"request_id":"r-1"},"tags":{"checkout":true}})";

TEST(SqliteOutboxContext, ContextAndTagsAreKeptInTheFileAndComeBackAtTheNextStart) {
  TempDir dir;
  const std::string path = dir.file();
  {
    auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync));
    n::OutboxEvent with;
    with.set_text("order.placed", R"({"id":1})", "", kAttributes);
    ASSERT_EQ(outbox->push(std::move(with), n::OverflowPolicy::drop_newest, 1ms), Push::accepted);
    ASSERT_EQ(push(*outbox, "plain"), Push::accepted);
    outbox->close();
  }
  const auto rows = n::list_outbox(path);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].attributes, kAttributes);
  EXPECT_EQ(rows[1].attributes, "");
  auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync));
  std::span<n::OutboxEvent> batch;
  ASSERT_TRUE(outbox->take(batch, 10, Clock::now() + 2s));
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].payload(), R"({"id":1})");
  EXPECT_EQ(batch[0].attributes(), kAttributes);
  EXPECT_EQ(batch[1].attributes(), "");
}

TEST(SqliteOutboxContext, AFileFromBeforeTheAttributesColumnIsReadAndGainsItKeepingItsRowsAndVersion) {
  TempDir dir;
  const std::string path = dir.file();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const char* v1 =
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE notifications_outbox(id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " name TEXT NOT NULL, payload TEXT NOT NULL, traceparent TEXT NOT NULL,"
        " time_us INTEGER NOT NULL, duration_us INTEGER NOT NULL, exception_type TEXT, exception_message TEXT,"
        " id_salt INTEGER NOT NULL, id_sequence INTEGER NOT NULL);"
        "INSERT INTO notifications_outbox(name, payload, traceparent, time_us, duration_us, id_salt, id_sequence)"
        " VALUES('old.event', '{\"n\":1}', '', 0, 0, 5, 9);"
        "PRAGMA user_version=1;";
    ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  const auto before = n::list_outbox(path);  // listing does not change the file
  ASSERT_EQ(before.size(), 1u);
  EXPECT_EQ(before[0].name, "old.event");
  EXPECT_EQ(before[0].attributes, "");
  {
    auto outbox = n::make_sqlite_outbox(outbox_config(path, n::Durability::sync));
    n::OutboxEvent with;
    with.set_text("new.event", "{}", "", kAttributes);
    ASSERT_EQ(outbox->push(std::move(with), n::OverflowPolicy::drop_newest, 1ms), Push::accepted);
    std::span<n::OutboxEvent> batch;
    ASSERT_TRUE(outbox->take(batch, 10, Clock::now() + 2s));
    ASSERT_EQ(batch.size(), 2u);
    EXPECT_EQ(batch[0].name(), "old.event");
    EXPECT_EQ(batch[0].attributes(), "");
    EXPECT_EQ(batch[1].attributes(), kAttributes);
    outbox->release();
    outbox->close();
  }
  // Still version 1: a program from before the column can open the file again (a rolled-back deploy).
  EXPECT_EQ(test_support::scalar(path, "PRAGMA user_version"), 1);
  EXPECT_EQ(test_support::scalar(path, "SELECT count(*) FROM pragma_table_info('notifications_outbox') WHERE name = 'attributes'"), 1);
  const auto after = n::list_outbox(path);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[1].attributes, kAttributes);
}

}  // namespace
