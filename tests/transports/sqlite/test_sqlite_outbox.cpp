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
#include "remote/bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Push = n::Outbox::Push;
using Settled = n::Outbox::Settled;
using Names = std::vector<std::string>;

namespace {

// A fresh folder under the system's temporary folder, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> next{0};
    path_ = fs::temp_directory_path() /
            ("notifications-outbox-" + std::to_string(::getpid()) + "-" + std::to_string(next.fetch_add(1)));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::permissions(path_, fs::perms::owner_all, ignored);
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name = "outbox.db") const { return (path_ / name).string(); }

 private:
  fs::path path_;
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

// Rows in the file, read by a connection of its own (WAL lets it read beside the outbox).
int rows_in(const std::string& path) {
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

TEST(SqliteOutboxBridge, DurabilityWithoutTheFileIsAConfigErrorNamingTheKey) {
  n::Notifier bus;
  n::BridgeConfig config = test_support::config_for("nofile");
  config.durability = n::Durability::async;
  EXPECT_THROW(n::make_bridge(bus, config), n::ConfigError);
}

}  // namespace
