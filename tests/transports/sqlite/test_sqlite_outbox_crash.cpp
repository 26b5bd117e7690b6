// The SQLite outbox survives a crash (issue 13, "Crash"): a child process instruments numbered
// events through a Bridge and reports each number once instrument() returned for it; the parent
// SIGKILLs it at a random moment, then opens a Bridge on the same outbox file with a working
// transport and checks what it publishes:
// - durability sync, over a transport that never confirms (everything stays in the file): every
//   number whose instrument() returned is published (at least once);
// - durability async, over a transport that works but slowly (1 ms a publish call), so that the
//   memory queue is mostly full: what is lost stays within the documented window, the memory
//   bound plus the batch being committed (queue_capacity + batch_size). The slow transport keeps
//   events moving through every stage (memory, commit, send, delete) when the kill lands; over
//   one that never confirms, the sender would retry its first batch for ever. The child's own
//   subscriber on the mock broker
//   reports what the transport delivered before the kill (inline, inside publish(): before the
//   row can be settled and deleted), so "lost" means neither delivered before the kill nor
//   published after the restart.
// The child is this test binary run again with a gtest filter and NOTIFICATIONS_CRASH_* in its
// environment (SqliteOutboxCrashChild.Run, skipped otherwise). It reports through a file with one
// write(2) per number, so that what it reported before the SIGKILL is in the file. Every wait is
// bounded; nothing asserts speed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/outbox.hpp"
#include "notifications/transports/mock.hpp"
#include "remote/bridge_test_support.hpp"
#include "transports/sqlite/sqlite_test_support.hpp"
#include "scale.hpp"
#include "wait.hpp"

namespace n = notifications;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

extern char** environ;

namespace {

using test_support::rows_in;

class TempDir : public test_support::TempDir {
 public:
  TempDir() : test_support::TempDir("crash") {}
};

constexpr std::size_t kCapacity = 256;  // the memory bound of the async child
constexpr std::size_t kBatch = 64;      // its batch size
constexpr int kThreadSpan = 10'000'000; // sync child: thread t reports t * kThreadSpan + i

n::BridgeConfig crash_config(const std::string& path, n::Durability durability) {
  n::BridgeConfig config = test_support::config_for("crash");
  config.subscribe = {};
  config.durability = durability;
  config.outbox.path = path;
  config.queue_capacity = kCapacity;
  config.batch_size = kBatch;
  // async: a push waits for room rather than being refused (the child stops at any refusal).
  if (durability == n::Durability::async) config.block_timeout = 5s;
  return config;
}

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

// ---- the child ------------------------------------------------------------------------------------

// Runs only as the crash tests' child (NOTIFICATIONS_CRASH_DB set): instruments numbered events
// until it is killed (or 20 s passed, then exits without shutting down). Reports "ready", then
// each number after its instrument() returned, and "dropped <counters>" (then exits 3) if the
// bridge ever refused an event: an event refused and counted is not one the outbox must keep.
TEST(SqliteOutboxCrashChild, Run) {
  const std::string db = env("NOTIFICATIONS_CRASH_DB");
  if (db.empty()) GTEST_SKIP() << "runs only as the child of the SqliteOutboxCrash tests";
  const n::Durability durability = env("NOTIFICATIONS_CRASH_MODE") == "sync" ? n::Durability::sync : n::Durability::async;
  const int report = ::open(env("NOTIFICATIONS_CRASH_REPORT").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (report < 0) ::_exit(4);
  n::Notifier bus;
  n::MockOptions options;
  options.broker = "crash";
  auto mock = std::make_shared<n::MockTransport>(options);
  auto tap = std::make_shared<n::MockTransport>(options);
  if (durability == n::Durability::sync) {
    mock->fail_next_publishes(std::size_t{1} << 40);  // never confirms: everything stays in the file
  } else {
    mock->set_latency(1ms);  // slower than instrument(): the memory queue fills
    tap->start();
    tap->subscribe("test.>", {}, [report](n::Delivery&& delivery) {
      const auto body = nlohmann::json::parse(delivery.message.body);
      test_support::write_report_line(report, "d" + std::to_string(body["payload"]["n"].get<int>()));
    });
  }
  auto bridge = std::make_unique<n::Bridge>(bus, mock, crash_config(db, durability));
  bridge->start();
  test_support::write_report_line(report, "ready");
  const auto give_up = Clock::now() + 20s;
  std::atomic<bool> stop{false};
  auto instrument = [&](int base) {
    for (int i = 1; i < kThreadSpan && !stop.load(); ++i) {
      bus.instrument("crash.event", {{"n", base + i}});
      test_support::write_report_line(report, std::to_string(base + i));
      if (i % 64 == 0) {
        const nlohmann::json dropped = bridge->health()["counters"]["dropped"];
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
  // sync: two instrumenting threads, whose commits the outbox may share; async: one.
  std::vector<std::thread> threads;
  const int thread_count = durability == n::Durability::sync ? 2 : 1;
  for (int t = 0; t < thread_count; ++t) threads.emplace_back(instrument, (t + 1) * kThreadSpan);
  for (auto& thread : threads) thread.join();
  ::_exit(0);  // never shut down: as a crash, but later
}

// ---- the parent -----------------------------------------------------------------------------------

// What the child reported: the numbers (complete lines only), whether it was ready, and any
// other line (a "dropped" report).
struct Report {
  bool ready = false;
  std::set<int> acknowledged;
  std::set<int> delivered;  // by the child's transport before the kill ("d<n>")
  std::vector<std::string> other;
};

Report read_report(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  Report report;
  std::string all = text.str();
  std::size_t start = 0;
  while (true) {
    const std::size_t end = all.find('\n', start);
    if (end == std::string::npos) break;  // a partial last line: not reported
    const std::string line = all.substr(start, end - start);
    start = end + 1;
    const auto digits = [](const std::string& text) {
      return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (line == "ready") {
      report.ready = true;
    } else if (line.size() > 1 && line[0] == 'd' && digits(line.substr(1))) {
      report.delivered.insert(std::stoi(line.substr(1)));
    } else if (digits(line)) {
      report.acknowledged.insert(std::stoi(line));
    } else {
      report.other.push_back(line);
    }
  }
  return report;
}

bool report_has_a_number(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] >= '1' && line[0] <= '9' && in.good()) return true;
  }
  return false;
}

// Starts this binary as the child, output to `log`.
pid_t start_child(const std::string& mode, const std::string& db, const std::string& report, const std::string& log) {
  std::vector<std::string> environment;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("NOTIFICATIONS_CRASH_", 0) != 0) environment.emplace_back(*e);
  }
  environment.push_back("NOTIFICATIONS_CRASH_MODE=" + mode);
  environment.push_back("NOTIFICATIONS_CRASH_DB=" + db);
  environment.push_back("NOTIFICATIONS_CRASH_REPORT=" + report);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args{self, "--gtest_filter=SqliteOutboxCrashChild.Run"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : environment) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  return pid;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  std::string all = text.str();
  return all.size() > 4000 ? all.substr(all.size() - 4000) : all;
}

struct Trial {
  std::size_t acknowledged = 0;
  int rows = 0;             // rows in the file after the kill
  std::size_t delivered = 0;  // by the child before the kill (async)
  std::size_t published = 0;
  std::size_t lost = 0;       // acknowledged, neither delivered before the kill nor published after the restart
};

// One trial: start the child, SIGKILL it at a random moment, restart on its file, compare.
Trial run_trial(const std::string& mode, const std::string& folder, int index, std::mt19937& rng) {
  Trial trial;
  const std::string db = folder + "/outbox-" + std::to_string(index) + ".db";
  const std::string report = folder + "/report-" + std::to_string(index) + ".txt";
  const std::string log = folder + "/child-" + std::to_string(index) + ".log";
  const pid_t pid = start_child(mode, db, report, log);
  EXPECT_GT(pid, 0) << "posix_spawn failed";
  if (pid <= 0) return trial;
  // Most kills land while events flow; every fourth one in the child's first 60 ms after it opened
  // its report: before, while or just after it creates the outbox file and its table.
  if (index % 4 == 3) {
    const bool started = test_support::wait_until([&] { return fs::exists(report); }, 20s);
    EXPECT_TRUE(started) << "the child did not start; its output:\n" << read_text(log);
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 60'000)(rng)));
  } else {
    const bool flowing = test_support::wait_until([&] { return report_has_a_number(report); }, 20s);
    EXPECT_TRUE(flowing) << "the child reported nothing; its output:\n" << read_text(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(1, 150)(rng)));
  }
  ::kill(pid, SIGKILL);
  const test_support::ChildResult ended = test_support::wait_for_child(pid, 10s);
  EXPECT_FALSE(ended.timed_out);
  EXPECT_FALSE(ended.exited) << "the child ended before it was killed (exit " << ended.exit_code
                             << "); its output:\n" << read_text(log);
  const Report reported = read_report(report);
  for (const std::string& line : reported.other) ADD_FAILURE() << "the child reported: " << line;
  trial.acknowledged = reported.acknowledged.size();
  trial.rows = rows_in(db);

  // The next start, on the same file, with a transport that works.
  n::Notifier bus;
  auto mock = std::make_shared<n::MockTransport>();
  std::unique_ptr<n::Bridge> bridge;
  try {
    bridge = std::make_unique<n::Bridge>(bus, mock,
                                         crash_config(db, mode == "sync" ? n::Durability::sync : n::Durability::async));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "the outbox left by a killed process could not be opened: " << e.what();
    return trial;
  }
  bridge->start();
  // Everything the file held is sent, and settled: the file empties.
  const bool emptied = test_support::wait_until([&] { return rows_in(db) == 0; }, 30s);
  EXPECT_TRUE(emptied) << "rows left: " << rows_in(db) << "; " << bridge->health().dump();
  if (trial.rows > 0) {
    EXPECT_GE(mock->published_count(), static_cast<std::size_t>(trial.rows)) << "a stored row was not sent";
  }
  std::set<int> published;
  for (const n::Message& message : mock->published()) {
    const auto body = nlohmann::json::parse(message.body);
    published.insert(body["payload"]["n"].get<int>());
  }
  trial.published = published.size();
  trial.delivered = reported.delivered.size();
  for (const int number : reported.acknowledged) {
    if (published.count(number) == 0 && reported.delivered.count(number) == 0) ++trial.lost;
  }
  const n::ShutdownReport shut = bridge->shutdown(5s);
  EXPECT_EQ(shut.kept, 0u) << shut.detail;
  return trial;
}

void run_trials(const std::string& mode) {
  TempDir dir;
  const std::uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int trials = std::max(2, 20 / test_support::kScale);
  std::size_t acknowledged = 0;
  std::size_t published = 0;
  std::size_t stored_trials = 0;
  std::size_t max_lost = 0;
  std::size_t total_lost = 0;
  for (int i = 0; i < trials; ++i) {
    SCOPED_TRACE(mode + " trial " + std::to_string(i));
    const Trial trial = run_trial(mode, dir.path(), i, rng);
    std::printf("[ %s trial %2d ] acknowledged %zu, delivered before the kill %zu, rows after the kill %d, "
                "published after restart %zu, lost %zu\n",
                mode.c_str(), i, trial.acknowledged, trial.delivered, trial.rows, trial.published, trial.lost);
    acknowledged += trial.acknowledged;
    published += trial.published;
    if (trial.rows > 0) ++stored_trials;
    max_lost = std::max(max_lost, trial.lost);
    total_lost += trial.lost;
    if (mode == "sync") {
      EXPECT_EQ(trial.lost, 0u) << "sync: an event whose instrument() returned was lost by the crash";
    } else {
      EXPECT_LE(trial.lost, kCapacity + kBatch) << "async: the crash lost more than the memory bound plus one batch";
    }
    if (::testing::Test::HasFailure()) break;  // one failing trial tells it all
  }
  std::printf("[ %s ] %d trials: acknowledged %zu, published %zu, trials with stored rows %zu, lost %zu (at most %zu in one)\n",
              mode.c_str(), trials, acknowledged, published, stored_trials, total_lost, max_lost);
  // The trials measured something: events flowed and the file held them when the child died.
  EXPECT_GT(acknowledged, 0u);
  EXPECT_GT(stored_trials, 0u) << "no kill left a row in the file";
}

TEST(SqliteOutboxCrash, SyncEveryEventWhoseInstrumentReturnedIsDeliveredAfterASigkill) { run_trials("sync"); }

TEST(SqliteOutboxCrash, AsyncLosesAtMostTheMemoryBoundPlusOneBatchOnASigkill) { run_trials("async"); }

}  // namespace
