// Processes SIGKILLed around a real nats-server -js on 127.0.0.1 (issue 16):
// - a consumer process killed mid-batch (its pull request holds more messages than the one its
//   durable handler is running) and started again, several times: every event is handled, none
//   twice, counted by the handler's own row, which commits in the SQLite inbox's transaction;
// - a producer process with a SQLite outbox (durability sync) killed while it instruments, then
//   started again on the same outbox file: every event whose instrument() returned is in the
//   stream, and none is stored twice (what the killed process had published is sent again from
//   the file, and the server's dedupe window drops the repeats by message id).
// The children are this binary run again with --js-consumer-child=... or --js-producer-child=...
// (read from /proc/self/cmdline); they report through files, one write(2) per line, so that what
// they reported before the SIGKILL is whole. Every wait is bounded; nothing asserts speed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "jetstream_test_support.hpp"
#include "nats_server.hpp"
#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/notifier.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/jetstream.hpp"
#include "scale.hpp"
#include "transports/sqlite/sqlite_test_support.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::jetstream_options_for;
using test_support::NatsServer;
using test_support::NatsServerOptions;
using test_support::scalar;
using test_support::TempDir;
using test_support::started;
using test_support::wait_until;
using test_support::with_jetstream;
using Clock = std::chrono::steady_clock;

n::BridgeConfig config_for(const std::string& app, const std::string& prefix) {
  n::BridgeConfig config;
  config.app = app;
  config.prefix = prefix;
  config.forward = {};
  config.subscribe = {};
  config.retry.initial = 20ms;
  config.retry.max = 200ms;
  return config;
}

// Complete lines only: a partial last line was not reported.
std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t end = all.find('\n'); end != std::string::npos; end = all.find('\n', start)) {
    lines.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string tail_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > 3000 ? all.substr(all.size() - 3000) : all;
}

std::string self_path() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// ---- a consumer killed mid-batch ------------------------------------------------------------------

constexpr const char* kConsumerStream = "JSCRASHC";
constexpr const char* kConsumerPrefix = "jscrashc";

// The consumer child: durable handler "work" on "job.>" with the SQLite inbox, each pull request
// asking for up to 8 messages; each call appends "S <id>" to the progress file, inserts its effect
// row through the inbox's transaction, sleeps a little (where the parent's SIGKILL lands), appends
// "E <id>" and returns. Reports "ready" once subscribed; runs until killed (at most 60 s).
TEST(JetStreamCrashChild, Consumer) {
  const auto args = test_support::child_arguments("js-consumer-child");
  if (args.size() != 3) GTEST_SKIP() << "run by the parent only";
  const std::string& url = args[0];
  const std::string& inbox_db = args[1];
  const int progress = ::open(args[2].c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(progress, 0);
  auto options = jetstream_options_for(url, kConsumerStream, {std::string(kConsumerPrefix) + ".>"});
  options.fetch_batch = 8;
  // What the killed process's pull request held comes again after this; the handler takes at most
  // 30 ms a call, so a batch of 8 is settled well within it.
  options.ack_wait = 2s;
  n::Notifier notifier;
  n::Bridge bridge(notifier, n::make_jetstream_transport(options), config_for("worker", kConsumerPrefix));
  n::DurableOptions durable;
  durable.store = n::make_sqlite_durable_store(inbox_db);
  durable.handler_deadline = 10s;
  durable.revive_after = 20s;
  durable.start = n::StartPosition::all_retained();
  std::minstd_rand random{static_cast<unsigned>(::getpid())};
  bridge.subscribe_durable("work", "job.>", [&](const n::Event& event, n::DurableContext& context) {
    test_support::write_report_line(progress, "S " + event.id());
    context.execute("INSERT INTO effects(event_id) VALUES (?1)", json::array({event.id()}));
    std::this_thread::sleep_for(std::chrono::milliseconds(10 + random() % 20));
    test_support::write_report_line(progress, "E " + event.id());
  }, durable);
  bridge.start();
  test_support::write_report_line(progress, "ready");
  for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(100ms);
}

TEST(JetStreamCrash, AConsumerKilledMidBatchHandlesEveryEventOnceByTheInboxsCount) {
  using test_support::kScale;
  const int events = kScale == 1 ? 200 : 40;
  const int trials = kScale == 1 ? 10 : 3;
  NatsServer server(with_jetstream());
  TempDir dir("js-consumer-crash");
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
  const auto effects = [&] { return scalar(inbox_db, "SELECT count(*) FROM effects"); };
  auto options = jetstream_options_for(server.url(), kConsumerStream, {std::string(kConsumerPrefix) + ".>"});
  n::Notifier notifier;
  n::BridgeConfig producer_config = config_for("producer", kConsumerPrefix);
  producer_config.forward = {"job.>"};
  n::Bridge producer(notifier, n::make_jetstream_transport(options), producer_config);
  producer.start();
  for (int i = 0; i < events; ++i) notifier.instrument("job.run", {{"i", i}});
  ASSERT_TRUE(producer.flush(30s)) << producer.health().dump();

  const auto spawn = [&](int trial) {
    return test_support::spawn_child({self_path(), "--gtest_filter=JetStreamCrashChild.Consumer",
                                      "--js-consumer-child=" + server.url() + "," + inbox_db + "," + progress},
                                     dir.file("child-" + std::to_string(trial) + ".log"));
  };
  std::minstd_rand random{std::random_device{}()};
  int killed_mid_batch = 0;
  for (int trial = 0; trial <= trials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const bool last = trial == trials;
    const std::size_t seen_before = lines_of(progress).size();
    auto child = spawn(trial);
    const std::string log = dir.file("child-" + std::to_string(trial) + ".log");
    if (last) {
      ASSERT_TRUE(wait_until([&] { return effects() >= events; }, 60s))
          << "effects: " << effects() << " of " << events << "; child: " << tail_of(log);
      std::this_thread::sleep_for(500ms);  // a second run of any event would show now
    } else {
      // Killed right after its k-th handler call since this start: inside a handler, with more of
      // its pull request's messages waiting behind it.
      const std::size_t k = 1 + random() % 6;
      ASSERT_TRUE(wait_until([&] {
        std::size_t started = 0;
        const auto lines = lines_of(progress);
        for (std::size_t i = seen_before; i < lines.size(); ++i) started += lines[i][0] == 'S';
        return started >= k || effects() >= events;
      }, 60s)) << "the child handled nothing; its output: " << tail_of(log) << "; server: " << server.log_tail();
      std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
    }
    ::kill(child.pid, SIGKILL);
    const auto ended = test_support::wait_for_child(child.pid, 10s);
    ASSERT_FALSE(ended.timed_out);
    const auto lines = lines_of(progress);
    if (!last && lines.size() > seen_before && lines.back()[0] == 'S' && effects() < events) ++killed_mid_batch;
  }
  producer.shutdown(5s);
  std::printf("jetstream consumer crash: %d of %d kills landed inside a handler, with the rest of its batch held\n",
              killed_mid_batch, trials);
  EXPECT_GE(killed_mid_batch, 1) << "no kill landed inside a handler";
  EXPECT_EQ(effects(), events) << "handler runs committed";
  EXPECT_EQ(scalar(inbox_db, "SELECT count(DISTINCT event_id) FROM effects"), events) << "distinct events handled";
}

// ---- a producer with the SQLite outbox killed mid-run ----------------------------------------------

constexpr const char* kProducerStream = "JSCRASHP";
constexpr const char* kProducerPrefix = "jscrashp";
constexpr int kThreadSpan = 10'000'000;  // trial r's thread t reports (2r + t) * kThreadSpan + i

n::BridgeConfig outbox_config(const std::string& outbox) {
  n::BridgeConfig config = config_for("producer", kProducerPrefix);
  config.forward = {"crash.>"};
  config.durability = n::Durability::sync;
  config.outbox.path = outbox;
  return config;
}

// The producer child: two threads instrument numbered "crash.event" events through a Bridge with
// a sync outbox over jetstream://, each number reported after its instrument() returned; the
// numbers of each trial are its own (distinct events, distinct ids). Reports
// "dropped <counters>" and exits 3 if the Bridge ever refused an event. Runs until killed (at most
// 20 s, then exits without shutting down).
TEST(JetStreamCrashChild, Producer) {
  const auto args = test_support::child_arguments("js-producer-child");
  if (args.size() != 4) GTEST_SKIP() << "run by the parent only";
  const int trial = std::stoi(args[3]);
  const int report = ::open(args[2].c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(report, 0);
  n::Notifier bus;
  auto bridge = std::make_unique<n::Bridge>(
      bus, n::make_jetstream_transport(jetstream_options_for(args[0], kProducerStream, {std::string(kProducerPrefix) + ".>"})),
      outbox_config(args[1]));
  bridge->start();
  test_support::write_report_line(report, "ready");
  const auto give_up = Clock::now() + 20s;
  std::atomic<bool> stop{false};
  auto instrument = [&](int base) {
    for (int i = 1; i < kThreadSpan && !stop.load(); ++i) {
      bus.instrument("crash.event", {{"n", base + i}});
      test_support::write_report_line(report, std::to_string(base + i));
      if (i % 64 == 0) {
        const json dropped = bridge->health()["counters"]["dropped"];
        for (const auto& [reason, count] : dropped.items()) {
          if (count.get<std::uint64_t>() != 0) {
            test_support::write_report_line(report, "dropped " + dropped.dump());
            ::_exit(3);
          }
        }
        if (Clock::now() > give_up) stop.store(true);
      }
    }
  };
  std::thread first(instrument, (2 * trial + 1) * kThreadSpan);
  std::thread second(instrument, (2 * trial + 2) * kThreadSpan);
  first.join();
  second.join();
  ::_exit(0);  // never shut down: as a crash, but later
}

TEST(JetStreamCrash, AProducerWithTheSqliteOutboxKilledMidRunLosesNothingAndStoresNothingTwice) {
  using test_support::kScale;
  const int trials = kScale == 1 ? 8 : 2;
  NatsServer server(with_jetstream());
  TempDir dir("js-producer-crash");
  const std::string outbox = dir.file("outbox.db");
  const auto options = jetstream_options_for(server.url(), kProducerStream, {std::string(kProducerPrefix) + ".>"});
  std::minstd_rand random{std::random_device{}()};
  std::set<int> acknowledged;
  for (int trial = 0; trial < trials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const std::string report = dir.file("report-" + std::to_string(trial) + ".txt");
    const std::string log = dir.file("child-" + std::to_string(trial) + ".log");
    auto child = test_support::spawn_child(
        {self_path(), "--gtest_filter=JetStreamCrashChild.Producer",
         "--js-producer-child=" + server.url() + "," + outbox + "," + report + "," + std::to_string(trial)},
        log);
    const auto numbers_reported = [&] {
      std::size_t count = 0;
      for (const std::string& line : lines_of(report)) count += !line.empty() && line[0] >= '1' && line[0] <= '9';
      return count;
    };
    ASSERT_TRUE(wait_until([&] { return numbers_reported() > 0; }, 30s)) << "the child reported nothing: " << tail_of(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + random() % 300));
    ::kill(child.pid, SIGKILL);
    const auto ended = test_support::wait_for_child(child.pid, 10s);
    ASSERT_FALSE(ended.timed_out);
    EXPECT_FALSE(ended.exited) << "the child ended before it was killed (exit " << ended.exit_code << "): " << tail_of(log);
    std::size_t numbers = 0;
    for (const std::string& line : lines_of(report)) {
      if (line.empty() || line == "ready") continue;
      if (line[0] < '1' || line[0] > '9') {
        ADD_FAILURE() << "the child reported: " << line;
        continue;
      }
      acknowledged.insert(std::stoi(line));
      ++numbers;
    }
    const int left = test_support::rows_in(outbox);
    // The next start, on the same file: it sends what the killed one left and empties the file.
    n::Notifier bus;
    n::Bridge restarted(bus, n::make_jetstream_transport(options), outbox_config(outbox));
    restarted.start();
    EXPECT_TRUE(wait_until([&] { return test_support::rows_in(outbox) == 0; }, 60s))
        << "rows left: " << test_support::rows_in(outbox) << "; " << restarted.health().dump();
    const n::ShutdownReport shut = restarted.shutdown(10s);
    EXPECT_EQ(shut.kept, 0u) << shut.detail;
    std::printf("[ producer trial %d ] instrument() returned for %zu events before the kill; %d rows left in the "
                "outbox, sent by the restart\n",
                trial, numbers, left);
  }

  // Everything the stream holds, from its start.
  auto reader = n::make_jetstream_transport(options);
  reader->start();
  std::mutex mutex;
  std::map<int, int> stored;  // number -> times stored
  std::size_t messages = 0;
  n::DeliveryOptions from_start;
  from_start.start = n::StartPosition::all_retained();
  reader->subscribe(std::string(kProducerPrefix) + ".>", from_start, [&](n::Delivery&& delivery) {
    const json body = json::parse(delivery.message.body);
    {
      std::lock_guard lock(mutex);
      ++stored[body["payload"]["n"].get<int>()];
      ++messages;
    }
    if (delivery.settle) delivery.settle(n::Settle::ack);
  });
  const std::size_t in_stream = reader->health()["stream_messages"].get<std::size_t>();
  const bool read_all = wait_until([&] {
    std::lock_guard lock(mutex);
    return messages >= in_stream;
  }, 60s);
  std::lock_guard lock(mutex);
  EXPECT_TRUE(read_all) << messages << " of " << in_stream << " stored messages read";
  std::size_t lost = 0;
  for (const int number : acknowledged) lost += stored.count(number) == 0 ? 1 : 0;
  std::size_t stored_twice = 0;
  for (const auto& [number, times] : stored) stored_twice += times > 1 ? 1 : 0;
  std::printf("jetstream producer crash: %zu events acknowledged by instrument() over %d kills; stream holds %zu "
              "messages (%zu distinct); lost %zu, stored twice %zu\n",
              acknowledged.size(), trials, in_stream, stored.size(), lost, stored_twice);
  EXPECT_GT(acknowledged.size(), 0u);
  EXPECT_EQ(lost, 0u) << "events whose instrument() returned are missing from the stream";
  EXPECT_EQ(stored_twice, 0u) << "events stored more than once (the dedupe window should drop the repeats)";
  reader->stop(Clock::now() + 5s);
}

}  // namespace
