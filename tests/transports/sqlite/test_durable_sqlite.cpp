// Durable handlers over sqlite://, a transport with acknowledgements and durable consumers: a
// failure is a nak carrying the backoff, and redelivers to that handler only; a handler's consumer
// keeps its position while its process is down. Every wait is bounded; timing is checked only as
// lower bounds.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transports/sqlite.hpp"
#include "sqlite_test_support.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
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

}  // namespace
