// Where the library's log lines go (notifications/logging.hpp, notifications/spdlog.hpp,
// docs/logging.md): the spdlog logger named "notifications" by default, a handler or a logger or
// sinks of the application's choosing otherwise; and which levels a normal run and a fault use.
// Lines are captured by a handler whose state is shared through a shared_ptr, so a line written
// late by a library thread never reaches freed memory. Every wait is bounded.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "notifications/bridge.hpp"
#include "notifications/logging.hpp"
#include "notifications/notifier.hpp"
#include "notifications/spdlog.hpp"
#include "notifications/sqlite.hpp"
#include "transports/sqlite/sqlite_test_support.hpp"
#include "wait.hpp"

#ifdef NOTIFICATIONS_TEST_NATS
#include "transports/nats/nats_server.hpp"
#endif

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using test_support::TempDir;
using test_support::wait_until;

struct Line {
  n::LogLevel level;
  std::string text;
};

// The lines a handler received. Thread-safety: every member may be called from any thread.
class Lines {
 public:
  void add(n::LogLevel level, std::string_view text) {
    std::lock_guard<std::mutex> lock(mutex_);
    lines_.push_back({level, std::string(text)});
  }
  std::vector<Line> all() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_;
  }
  // Lines at `level` or above.
  std::vector<Line> at_least(n::LogLevel level) const {
    std::vector<Line> out;
    for (Line& line : all()) {
      if (static_cast<int>(line.level) >= static_cast<int>(level)) out.push_back(std::move(line));
    }
    return out;
  }
  bool any_containing(const std::string& text, n::LogLevel level) const {
    for (const Line& line : all()) {
      if (line.level == level && line.text.find(text) != std::string::npos) return true;
    }
    return false;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Line> lines_;
};

std::string show(const std::vector<Line>& lines) {
  std::string out;
  for (const Line& line : lines) out += "[" + std::string(n::to_string(line.level)) + "] " + line.text + "\n";
  return out;
}

// Sends every line (debug and up) to a Lines while it lives; then back to the default at info.
class Captured {
 public:
  Captured() : lines_(std::make_shared<Lines>()) {
    n::set_log_level(n::LogLevel::debug);
    n::set_log_handler([lines = lines_](n::LogLevel level, std::string_view text) { lines->add(level, text); });
  }
  ~Captured() {
    n::set_log_handler({});
    n::set_log_level(n::LogLevel::info);
  }
  Captured(const Captured&) = delete;
  Captured& operator=(const Captured&) = delete;
  const Lines& lines() const { return *lines_; }

 private:
  std::shared_ptr<Lines> lines_;
};

// A memory:// bridge started and shut down: logs "started" (debug) and "shut down" (info).
void start_and_stop_memory_bridge() {
  n::Notifier notifier;
  n::BridgeConfig config;
  config.app = "logging";
  config.url = "memory://logging-test";
  auto bridge = n::make_bridge(notifier, config);
  bridge->start();
  bridge->shutdown(2s);
}

// An ostream sink whose text can be read while (and after) lines are written.
struct StreamSink {
  std::shared_ptr<std::ostringstream> stream = std::make_shared<std::ostringstream>();
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream, true);
  // The stream is read with the sink's own lock held: lines may still be written to it.
  std::string text() const {
    sink->flush();
    return stream->str();
  }
};

TEST(Logging, TheLoggerNamedNotificationsIsUsedByDefaultAndReceivesLines) {
  start_and_stop_memory_bridge();  // the first lines: the logger exists from here on
  const std::shared_ptr<spdlog::logger> named = spdlog::get("notifications");
  ASSERT_NE(named, nullptr);
  EXPECT_EQ(named, n::logger());
  StreamSink capture;
  named->sinks().push_back(capture.sink);  // no bridge runs: nothing logs meanwhile
  named->set_level(spdlog::level::debug);
  EXPECT_EQ(n::log_level(), n::LogLevel::debug);
  start_and_stop_memory_bridge();
  named->set_level(spdlog::level::info);
  named->sinks().pop_back();
  const std::string text = capture.text();
  EXPECT_NE(text.find("[notifications]"), std::string::npos) << text;
  EXPECT_NE(text.find("notifications bridge: started"), std::string::npos) << text;
  EXPECT_NE(text.find("notifications bridge: shut down"), std::string::npos) << text;
}

TEST(Logging, AHandlerReceivesLinesWithTheirLevelsUntilTheDefaultIsRestored) {
  auto lines = std::make_shared<Lines>();
  n::set_log_level(n::LogLevel::debug);
  n::set_log_handler([lines](n::LogLevel level, std::string_view text) { lines->add(level, text); });
  EXPECT_EQ(n::log_level(), n::LogLevel::debug);
  start_and_stop_memory_bridge();
  EXPECT_TRUE(lines->any_containing("notifications bridge: started", n::LogLevel::debug)) << show(lines->all());
  EXPECT_TRUE(lines->any_containing("notifications bridge: shut down", n::LogLevel::info)) << show(lines->all());

  // Below the threshold, nothing reaches the handler.
  n::set_log_level(n::LogLevel::info);
  const std::size_t before = lines->all().size();
  start_and_stop_memory_bridge();
  const std::vector<Line> after_info = lines->all();
  ASSERT_GT(after_info.size(), before);
  for (std::size_t i = before; i < after_info.size(); ++i) EXPECT_NE(after_info[i].level, n::LogLevel::debug);

  // Back to the default: the handler gets nothing more, the named logger does.
  n::set_log_handler({});
  StreamSink capture;
  const std::shared_ptr<spdlog::logger> named = spdlog::get("notifications");
  ASSERT_NE(named, nullptr);
  named->sinks().push_back(capture.sink);
  const std::size_t handled = lines->all().size();
  start_and_stop_memory_bridge();
  named->sinks().pop_back();
  EXPECT_EQ(lines->all().size(), handled);
  EXPECT_NE(capture.text().find("notifications bridge: shut down"), std::string::npos) << capture.text();
}

TEST(Logging, AHandlerThatThrowsLosesItsLinesOnly) {
  auto calls = std::make_shared<std::atomic<int>>(0);
  n::set_log_handler([calls](n::LogLevel, std::string_view) {
    calls->fetch_add(1);
    throw std::runtime_error("handler failed");
  });
  EXPECT_NO_THROW(start_and_stop_memory_bridge());
  n::set_log_handler({});
  EXPECT_GT(calls->load(), 0);
}

TEST(Logging, ALevelOfOffWritesNothing) {
  auto lines = std::make_shared<Lines>();
  n::set_log_handler([lines](n::LogLevel level, std::string_view text) { lines->add(level, text); });
  n::set_log_level(n::LogLevel::off);
  start_and_stop_memory_bridge();
  n::set_log_level(n::LogLevel::info);
  n::set_log_handler({});
  EXPECT_TRUE(lines->all().empty()) << show(lines->all());
}

TEST(LoggingSpdlog, AGivenLoggerReceivesLinesAndNullGoesBackToTheNamedOne) {
  StreamSink capture;
  auto mine = std::make_shared<spdlog::logger>("mine", capture.sink);
  mine->set_level(spdlog::level::debug);
  n::set_logger(mine);
  EXPECT_EQ(n::logger(), mine);
  start_and_stop_memory_bridge();
  n::set_logger(nullptr);
  EXPECT_EQ(n::logger(), spdlog::get("notifications"));
  const std::string text = capture.text();
  EXPECT_NE(text.find("[mine]"), std::string::npos) << text;
  EXPECT_NE(text.find("notifications bridge: started"), std::string::npos) << text;
  const std::size_t size = text.size();
  start_and_stop_memory_bridge();
  EXPECT_EQ(capture.text().size(), size) << "a line still reached the logger handed in before";
}

TEST(LoggingSpdlog, GivenSinksMakeTheNamedLogger) {
  const std::shared_ptr<spdlog::logger> previous = spdlog::get("notifications");
  StreamSink capture;
  // Leaves the registry as it found it, also when an assertion below returns early: the library
  // must not keep a sink that writes to `capture` once it is gone.
  struct Restore {
    std::shared_ptr<spdlog::logger> previous;
    ~Restore() {
      n::set_log_level(n::LogLevel::info);
      spdlog::drop("notifications");
      if (previous) spdlog::register_logger(previous);
      n::set_logger(nullptr);
    }
  } restore{previous};
  n::set_log_level(n::LogLevel::debug);  // applies to the logger set_log_sinks() makes
  n::set_log_sinks({capture.sink});
  const std::shared_ptr<spdlog::logger> named = spdlog::get("notifications");
  ASSERT_NE(named, nullptr);
  EXPECT_NE(named, previous);
  EXPECT_EQ(named, n::logger());
  EXPECT_EQ(named->level(), spdlog::level::debug);
  start_and_stop_memory_bridge();
  const std::string text = capture.text();
  EXPECT_NE(text.find("notifications bridge: started"), std::string::npos) << text;
}

// ---- which levels a normal run uses, and a fault

// A producer (with a SQLite outbox, durability async) and a consumer with a durable handler on
// `url`, `events` events handled, then both flushed and shut down. Returns "" or what failed.
std::string normal_run(const std::string& url, const std::string& outbox_path,
                       std::shared_ptr<n::DurableStore> store, const nlohmann::json& transport = {}) {
  n::Notifier producer_notifier;
  n::Notifier consumer_notifier;
  n::BridgeConfig producer_config;
  producer_config.app = "producer";
  producer_config.prefix = "logtest";
  producer_config.url = url;
  producer_config.subscribe = {};
  producer_config.durability = n::Durability::async;
  producer_config.outbox.path = outbox_path;
  if (!transport.is_null()) producer_config.transport = transport;
  n::BridgeConfig consumer_config = producer_config;
  consumer_config.app = "consumer";
  consumer_config.forward = {};
  consumer_config.durability = n::Durability::none;
  consumer_config.outbox = {};
  auto producer = n::make_bridge(producer_notifier, producer_config);
  auto consumer = n::make_bridge(consumer_notifier, consumer_config);
  auto handled = std::make_shared<std::atomic<int>>(0);
  n::DurableOptions options;
  options.store = std::move(store);
  consumer->subscribe_durable("audit", "order.>", [handled](const n::Event&, n::DurableContext&) { handled->fetch_add(1); },
                              options);
  consumer->start();
  producer->start();
  if (!wait_until([&] { return consumer->health()["transport"].value("connection", "connected") == "connected"; }, 10s)) {
    return "the consumer did not connect: " + consumer->health().dump();
  }
  constexpr int kEvents = 5;
  for (int i = 0; i < kEvents; ++i) producer_notifier.instrument("order.placed", {{"order", i}});
  if (!producer->flush(10s)) return "flush failed: " + producer->health().dump();
  if (!wait_until([&] { return handled->load() >= kEvents; }, 20s)) {
    return "the durable handler got " + std::to_string(handled->load()) + ": " + consumer->health().dump();
  }
  const n::ShutdownReport producer_report = producer->shutdown(5s);
  const n::ShutdownReport consumer_report = consumer->shutdown(5s);
  if (!producer_report.clean) return "producer shutdown: " + producer_report.detail;
  if (!consumer_report.clean) return "consumer shutdown: " + consumer_report.detail;
  return "";
}

void expect_quiet_normal_run(const Captured& captured) {
  EXPECT_TRUE(captured.lines().at_least(n::LogLevel::warn).empty()) << show(captured.lines().all());
  // The capture worked: the shutdowns were logged.
  EXPECT_TRUE(captured.lines().any_containing("notifications bridge: shut down", n::LogLevel::info))
      << show(captured.lines().all());
}

TEST(LoggingLevels, ANormalRunOnMemoryLogsNothingAtWarnOrAbove) {
  TempDir dir("logging");
  Captured captured;
  const std::string failed = normal_run("memory://logging-levels", dir.file("outbox.db"), nullptr);
  EXPECT_EQ(failed, "");
  expect_quiet_normal_run(captured);
}

TEST(LoggingLevels, ANormalRunOnMockWithAcknowledgementsLogsNothingAtWarnOrAbove) {
  TempDir dir("logging");
  Captured captured;
  const std::string failed =
      normal_run("mock://logging-levels?acknowledgements=true", dir.file("outbox.db"), nullptr);
  EXPECT_EQ(failed, "");
  expect_quiet_normal_run(captured);
}

TEST(LoggingLevels, ANormalRunOnSqliteWithASqliteStoreLogsNothingAtWarnOrAbove) {
  TempDir dir("logging");
  Captured captured;
  const std::string failed = normal_run("sqlite://" + dir.file("events.db"), dir.file("outbox.db"),
                                        n::make_sqlite_durable_store(dir.file("inbox.db")), {{"idle_interval_ms", 20}});
  EXPECT_EQ(failed, "");
  expect_quiet_normal_run(captured);
}

#ifdef NOTIFICATIONS_TEST_NATS

TEST(LoggingLevels, ANormalRunOnNatsLogsNothingAtWarnOrAbove) {
  test_support::NatsServer server;
  TempDir dir("logging");
  Captured captured;
  const std::string failed =
      normal_run(server.url(), dir.file("outbox.db"), n::make_sqlite_durable_store(dir.file("inbox.db")));
  EXPECT_EQ(failed, "");
  expect_quiet_normal_run(captured);
}

TEST(LoggingLevels, ALostServerIsAWarning) {
  test_support::NatsServer server;
  Captured captured;
  n::Notifier notifier;
  n::BridgeConfig config;
  config.app = "logging";
  config.url = server.url();
  config.transport = {{"reconnect_wait_ms", 50}};
  auto bridge = n::make_bridge(notifier, config);
  bridge->start();
  ASSERT_TRUE(wait_until([&] { return bridge->health()["transport"]["connection"] == "connected"; }, 10s));
  EXPECT_TRUE(captured.lines().at_least(n::LogLevel::warn).empty()) << show(captured.lines().all());
  server.stop();
  EXPECT_TRUE(wait_until([&] { return !captured.lines().at_least(n::LogLevel::warn).empty(); }, 10s))
      << show(captured.lines().all());
  bridge->shutdown(1s);
}

TEST(LoggingLevels, CredentialsInTheUrlNeverReachALine) {
  int closed_port = 0;
  {
    test_support::NatsServer server;
    closed_port = server.port();
  }  // stopped: nothing listens on that port now
  Captured captured;
  n::Notifier notifier;
  n::BridgeConfig config;
  config.app = "logging";
  config.url = "nats://alice:pw-s3cret-77@127.0.0.1:" + std::to_string(closed_port);
  config.transport = {{"retry_on_failed_connect", true}, {"reconnect_wait_ms", 50}};
  auto bridge = n::make_bridge(notifier, config);
  bridge->start();
  notifier.instrument("order.placed", {{"order", 1}});
  EXPECT_FALSE(bridge->flush(300ms));
  // The failed connection was logged (as a warning), naming the server.
  EXPECT_TRUE(wait_until([&] { return !captured.lines().at_least(n::LogLevel::warn).empty(); }, 10s))
      << show(captured.lines().all());
  bridge->shutdown(1s);
  const std::vector<Line> lines = captured.lines().all();
  bool names_server = false;
  for (const Line& line : lines) {
    EXPECT_EQ(line.text.find("pw-s3cret-77"), std::string::npos) << line.text;
    if (line.text.find("127.0.0.1:" + std::to_string(closed_port)) != std::string::npos) names_server = true;
  }
  EXPECT_TRUE(names_server) << show(lines);
}

#endif

}  // namespace
