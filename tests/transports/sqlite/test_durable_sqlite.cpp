// Durable handlers over sqlite://, a transport with acknowledgements and durable consumers: a
// failure is a nak carrying the backoff, and redelivers to that handler only; a handler's consumer
// keeps its position while its process is down. Every wait is bounded; timing is checked only as
// lower bounds. The crash case runs this binary again as a child with
// --durable-child=EVENTS_DB,INBOX_DB,PROGRESS (read from /proc/self/cmdline) and SIGKILLs it
// mid-handler: every event is handled, none twice, counted by the handler's own row, which commits
// in the inbox's transaction.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "child_process.hpp"
#include "notifications/notifier.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/sqlite.hpp"
#include "scale.hpp"
#include "sqlite_test_support.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::scalar;
using test_support::TempDir;
using test_support::wait_until;
using Clock = std::chrono::steady_clock;

std::shared_ptr<n::Transport> sqlite_at(const std::string& path) {
  n::SqliteTransportOptions options;
  options.path = path;
  options.idle_interval = 20ms;
  return n::make_sqlite_transport(options);
}

n::BridgeConfig config_for(const std::string& app, bool forward, bool subscribe) {
  n::BridgeConfig config;
  config.app = app;
  config.prefix = "test";
  if (!forward) config.forward = {};
  if (!subscribe) config.subscribe = {};
  return config;
}

std::uint64_t count(const n::Bridge& bridge, const std::string& handler, const std::string& key) {
  return bridge.health()["durable"][handler]["counters"][key].get<std::uint64_t>();
}

n::DurableOptions backoff_options(std::chrono::milliseconds initial) {
  n::DurableOptions options;
  options.backoff.initial = initial;
  options.backoff.max = 10 * initial;
  options.backoff.multiplier = 2.0;
  options.backoff.jitter = 0.0;
  options.max_attempts = 3;
  return options;
}

TEST(DurableSqlite, AFailureIsANakCarryingTheBackoffAndTheNextAttemptsFollowIt) {
  TempDir dir("durable");
  n::Notifier consumer_notifier;
  n::Notifier producer_notifier;
  std::mutex mutex;
  std::vector<std::pair<Clock::time_point, std::uint32_t>> attempts;
  n::Bridge consumer(consumer_notifier, sqlite_at(dir.file("events.db")), config_for("consumer", false, false));
  n::Bridge producer(producer_notifier, sqlite_at(dir.file("events.db")), config_for("producer", true, false));
  consumer.subscribe_durable("flaky", "order.placed", [&](const n::Event&, n::DurableContext& context) {
    std::lock_guard<std::mutex> lock(mutex);
    attempts.emplace_back(Clock::now(), context.attempt());
    if (context.attempt() < 3) throw std::runtime_error("not yet");
  }, backoff_options(60ms));
  consumer.start();
  producer.start();
  producer_notifier.instrument("order.placed", {{"order", 1}});
  ASSERT_TRUE(wait_until([&] { return count(consumer, "flaky", "succeeded") == 1; }, 20s)) << consumer.health().dump();
  std::lock_guard<std::mutex> lock(mutex);
  ASSERT_EQ(attempts.size(), 3u);
  EXPECT_EQ(attempts[0].second, 1u);
  EXPECT_EQ(attempts[1].second, 2u);
  EXPECT_EQ(attempts[2].second, 3u);
  EXPECT_GE(attempts[1].first - attempts[0].first, 60ms);
  EXPECT_GE(attempts[2].first - attempts[1].first, 120ms);
  EXPECT_EQ(count(consumer, "flaky", "failed"), 2u);
  EXPECT_TRUE(consumer.health()["durable"]["flaky"]["acknowledgements"].get<bool>());
  producer.shutdown(5s);
  consumer.shutdown(5s);
}

TEST(DurableSqlite, AFailureRedeliversToThatHandlerOnlyNeverToOtherHandlersOrListeners) {
  TempDir dir("durable");
  n::Notifier consumer_notifier;
  n::Notifier producer_notifier;
  std::atomic<int> failing_calls{0};
  std::atomic<int> steady_calls{0};
  std::atomic<int> listener_calls{0};
  auto listener = consumer_notifier.subscribe("order.placed", [&](const n::Event&) { listener_calls.fetch_add(1); });
  n::Bridge consumer(consumer_notifier, sqlite_at(dir.file("events.db")), config_for("consumer", false, true));
  n::Bridge producer(producer_notifier, sqlite_at(dir.file("events.db")), config_for("producer", true, false));
  consumer.subscribe_durable("failing", "order.placed", [&](const n::Event&, n::DurableContext& context) {
    failing_calls.fetch_add(1);
    if (context.attempt() == 1) throw std::runtime_error("first attempt fails");
  }, backoff_options(20ms));
  consumer.subscribe_durable("steady", "order.*", [&](const n::Event&, n::DurableContext&) { steady_calls.fetch_add(1); });
  consumer.start();
  producer.start();
  producer_notifier.instrument("order.placed", {{"order", 2}});
  ASSERT_TRUE(wait_until([&] { return count(consumer, "failing", "succeeded") == 1; }, 20s)) << consumer.health().dump();
  ASSERT_TRUE(wait_until([&] { return steady_calls.load() == 1 && listener_calls.load() == 1; }, 20s));
  std::this_thread::sleep_for(200ms);  // a redelivery to the others would show now
  EXPECT_EQ(failing_calls.load(), 2);
  EXPECT_EQ(steady_calls.load(), 1);
  EXPECT_EQ(listener_calls.load(), 1);
  producer.shutdown(5s);
  consumer.shutdown(5s);
}

TEST(DurableSqlite, AfterMaxAttemptsTheMessageIsTermedAndNotDeliveredAgain) {
  TempDir dir("durable");
  n::Notifier consumer_notifier;
  n::Notifier producer_notifier;
  std::atomic<int> calls{0};
  n::Bridge consumer(consumer_notifier, sqlite_at(dir.file("events.db")), config_for("consumer", false, false));
  n::Bridge producer(producer_notifier, sqlite_at(dir.file("events.db")), config_for("producer", true, false));
  consumer.subscribe_durable("doomed", "x.y", [&](const n::Event&, n::DurableContext&) {
    calls.fetch_add(1);
    throw std::runtime_error("always");
  }, backoff_options(10ms));
  consumer.start();
  producer.start();
  producer_notifier.instrument("x.y", json::object());
  ASSERT_TRUE(wait_until([&] { return count(consumer, "doomed", "dead_lettered") == 1; }, 20s));
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(calls.load(), 3);
  const auto letters = consumer.durable_store("doomed")->dead_letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_EQ(letters[0].reason, "max_attempts");
  EXPECT_EQ(letters[0].subject, "test.x.y");
  producer.shutdown(5s);
  consumer.shutdown(5s);
}

TEST(DurableSqlite, AHandlersConsumerKeepsItsPositionWhileItsProcessIsDown) {
  TempDir dir("durable");
  n::Notifier producer_notifier;
  n::Bridge producer(producer_notifier, sqlite_at(dir.file("events.db")), config_for("producer", true, false));
  producer.start();
  std::atomic<int> first_calls{0};
  {
    n::Notifier notifier;
    n::Bridge consumer(notifier, sqlite_at(dir.file("events.db")), config_for("consumer", false, false));
    consumer.subscribe_durable("work", "job.>", [&](const n::Event&, n::DurableContext&) { first_calls.fetch_add(1); });
    consumer.start();
    for (int i = 0; i < 3; ++i) producer_notifier.instrument("job.run", {{"i", i}});
    ASSERT_TRUE(wait_until([&] { return first_calls.load() == 3; }, 20s));
    consumer.shutdown(5s);
  }
  for (int i = 3; i < 6; ++i) producer_notifier.instrument("job.run", {{"i", i}});
  ASSERT_TRUE(producer.flush(10s));
  std::mutex mutex;
  std::vector<int> seen;
  n::Notifier notifier;
  // A new memory store: only the transport's consumer position keeps the first three away.
  n::Bridge consumer(notifier, sqlite_at(dir.file("events.db")), config_for("consumer", false, false));
  consumer.subscribe_durable("work", "job.>", [&](const n::Event& event, n::DurableContext&) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.push_back(event.payload()["i"].get<int>());
  });
  consumer.start();
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(mutex);
    return seen.size() == 3;
  }, 20s));
  std::this_thread::sleep_for(200ms);
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(seen, (std::vector<int>{3, 4, 5}));
  producer.shutdown(5s);
  consumer.shutdown(5s);
}

// Gates the test opens for a handler's calls, owned jointly by the test and the handler (a
// handler still waiting when a failed assertion ends the test must not touch freed memory).
struct Gates {
  std::mutex mutex;
  std::condition_variable changed;
  int open_up_to = -1;  // calls with payload "i" <= this may return
  void open(int i) {
    std::lock_guard<std::mutex> lock(mutex);
    open_up_to = std::max(open_up_to, i);
    changed.notify_all();
  }
  void wait(int i) {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait_for(lock, 20s, [&] { return open_up_to >= i; });
  }
};

TEST(DurableSqlite, ClaimsMadeAheadForQueuedDeliveriesAreGivenBackAtShutdown) {
  TempDir dir("durable");
  const std::string inbox = dir.file("inbox.db");
  n::Notifier consumer_notifier;
  n::Notifier producer_notifier;
  auto gates = std::make_shared<Gates>();
  auto calls = std::make_shared<std::atomic<int>>(0);
  struct OpenAll {  // however the test ends, no call waits on
    std::shared_ptr<Gates> gates;
    ~OpenAll() { gates->open(1000); }
  } open_all{gates};
  n::Bridge consumer(consumer_notifier, sqlite_at(dir.file("events.db")), config_for("consumer", false, false));
  n::Bridge producer(producer_notifier, sqlite_at(dir.file("events.db")), config_for("producer", true, false));
  n::DurableOptions options;
  options.store = n::make_sqlite_durable_store(inbox);
  consumer.subscribe_durable("batch", "job.run", [gates, calls](const n::Event& event, n::DurableContext&) {
    calls->fetch_add(1);
    gates->wait(event.payload()["i"].get<int>());
  }, options);
  consumer.start();
  producer.start();
  // Event 0 alone first: the dispatcher takes it as a batch of one and its call holds the
  // dispatcher. Events 1..5 then all wait in the queue, so when call 0 returns they are taken as
  // one batch and claimed together (claim_many); call 1 then waits for good. (Publishing all six
  // at once would leave the batch shapes to the poller's timing.)
  producer_notifier.instrument("job.run", {{"i", 0}});
  ASSERT_TRUE(producer.flush(10s));
  ASSERT_TRUE(wait_until([&] { return calls->load() == 1; }, 20s)) << consumer.health().dump();
  for (int i = 1; i < 6; ++i) producer_notifier.instrument("job.run", {{"i", i}});
  ASSERT_TRUE(producer.flush(10s));
  ASSERT_TRUE(wait_until([&] { return count(consumer, "batch", "received") == 6; }, 20s)) << consumer.health().dump();
  gates->open(0);
  ASSERT_TRUE(wait_until([&] { return calls->load() == 2; }, 20s));
  // Events 1..5 were claimed together and 2..5 not run: shutdown gives those back.
  ASSERT_EQ(scalar(inbox, "SELECT count(*) FROM notifications_inbox WHERE state='pending' AND owner<>''"), 5);
  const n::ShutdownReport report = consumer.shutdown(200ms);
  EXPECT_EQ(report.durable_unfinished, 1u) << report.detail;  // event 1, still running
  EXPECT_EQ(scalar(inbox, "SELECT count(*) FROM notifications_inbox WHERE state='pending' AND owner<>''"), 1);
  EXPECT_EQ(scalar(inbox, "SELECT count(*) FROM notifications_inbox WHERE state='pending' AND owner=''"), 4);
  EXPECT_EQ(scalar(inbox, "SELECT count(*) FROM notifications_inbox WHERE failed_attempts>0"), 0);
  gates->open(1);
  EXPECT_TRUE(wait_until([&] { return count(consumer, "batch", "late_completions") == 1; }, 20s));
  producer.shutdown(5s);
}

// ---- crash: a consumer process SIGKILLed mid-handler -------------------------------------------

// The child: handler "work" on "job.>" with the SQLite inbox; each call appends "S <id>" to the
// progress file, inserts its effect row through the inbox's transaction, sleeps a little (where
// the parent's SIGKILL lands), appends "E <id>" and returns. Runs until killed (at most 60 s).
TEST(DurableSqliteChild, Run) {
  const auto args = test_support::child_arguments("durable-child");
  if (args.size() != 3) GTEST_SKIP() << "run by the parent only";
  const std::string& events_db = args[0];
  const std::string& inbox_db = args[1];
  const std::string& progress = args[2];
  n::Notifier notifier;
  n::Bridge bridge(notifier, sqlite_at(events_db), config_for("worker", false, false));
  n::DurableOptions options;
  options.store = n::make_sqlite_durable_store(inbox_db);
  options.handler_deadline = 10s;
  options.revive_after = 20s;
  std::minstd_rand random{static_cast<unsigned>(::getpid())};
  bridge.subscribe_durable("work", "job.>", [&](const n::Event& event, n::DurableContext& context) {
    std::ofstream(progress, std::ios::app) << "S " << event.id() << "\n" << std::flush;
    context.execute("INSERT INTO effects(event_id) VALUES (?1)", json::array({event.id()}));
    std::this_thread::sleep_for(std::chrono::milliseconds(10 + random() % 20));
    std::ofstream(progress, std::ios::app) << "E " << event.id() << "\n" << std::flush;
  }, options);
  bridge.start();
  for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(100ms);
}

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

TEST(DurableSqliteCrash, AConsumerKilledMidHandlerHandlesEveryEventOnceByTheInboxsCount) {
  using test_support::kScale;
  const int events = kScale == 1 ? 120 : 30;
  const int trials = kScale == 1 ? 20 : 4;
  TempDir dir("durable-crash");
  const std::string events_db = dir.file("events.db");
  const std::string inbox_db = dir.file("inbox.db");
  const std::string progress = dir.file("progress.txt");
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(inbox_db.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE effects(event_id TEXT NOT NULL)", nullptr,
                           nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  {
    n::Notifier notifier;
    n::Bridge producer(notifier, sqlite_at(events_db), config_for("producer", true, false));
    producer.start();
    // The consumer must exist before the events for a new durable consumer to see them: the
    // first child creates it; the events go after its first report.
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    const auto spawn = [&] {
      return test_support::spawn_child({self, "--gtest_filter=DurableSqliteChild.Run",
                                        "--durable-child=" + events_db + "," + inbox_db + "," + progress},
                                       dir.file("child.log"));
    };
    std::minstd_rand random{12345};
    int killed_mid_handler = 0;
    bool published = false;
    for (int trial = 0; trial <= trials; ++trial) {
      const bool last = trial == trials;
      const std::size_t seen_before = lines_of(progress).size();
      auto child = spawn();
      if (!published) {
        // Wait until the child subscribed (its consumer exists in the file), then publish.
        ASSERT_TRUE(wait_until([&] {
          return scalar(events_db, "SELECT count(*) FROM notifications_consumers WHERE name = 'work'") == 1;
        }, 30s)) << "the child never subscribed; see " << dir.file("child.log");
        for (int i = 0; i < events; ++i) notifier.instrument("job.run", {{"i", i}});
        ASSERT_TRUE(producer.flush(30s));
        published = true;
      }
      if (last) {
        ASSERT_TRUE(wait_until([&] { return scalar(inbox_db, "SELECT count(*) FROM effects") >= events; }, 60s))
            << "effects: " << scalar(inbox_db, "SELECT count(*) FROM effects");
        std::this_thread::sleep_for(300ms);  // a second run of any event would show now
      } else {
        // Kill it right after its k-th handler call since this trial began: mid-handler.
        const std::size_t k = 1 + random() % 4;
        ASSERT_TRUE(wait_until([&] {
          std::size_t started = 0;
          const auto lines = lines_of(progress);
          for (std::size_t i = seen_before; i < lines.size(); ++i) started += lines[i][0] == 'S';
          return started >= k || scalar(inbox_db, "SELECT count(*) FROM effects") >= events;
        }, 30s));
        std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
      }
      ::kill(child.pid, SIGKILL);
      const auto ended = test_support::wait_for_child(child.pid, 10s);
      ASSERT_FALSE(ended.timed_out);
      const auto lines = lines_of(progress);
      if (!last && lines.size() > seen_before && lines.back()[0] == 'S') ++killed_mid_handler;
    }
    producer.shutdown(5s);
    EXPECT_GE(killed_mid_handler, 1) << "no trial killed the child inside a handler";
    std::printf("durable crash: %d of %d trials killed the child inside a handler\n", killed_mid_handler, trials);
  }
  EXPECT_EQ(scalar(inbox_db, "SELECT count(*) FROM effects"), events);
  EXPECT_EQ(scalar(inbox_db, "SELECT count(DISTINCT event_id) FROM effects"), events);
}

}  // namespace
