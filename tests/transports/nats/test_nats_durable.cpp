// Durable handlers over nats://, a transport without acknowledgements (a real nats-server on
// 127.0.0.1): failures are retried on a local timer with the backoff (lower bounds only), and the
// processes running one handler share it as a queue group: each event is handled by one of them.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "nats_server.hpp"
#include "nats_test_options.hpp"
#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/nats.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using test_support::NatsServer;
using test_support::options_for;
using test_support::wait_until;

n::BridgeConfig config_for(const std::string& app, bool forward) {
  n::BridgeConfig config;
  config.app = app;
  config.prefix = "durable";
  config.subscribe = {};
  if (!forward) config.forward = {};
  return config;
}

std::uint64_t count(const n::Bridge& bridge, const std::string& handler, const std::string& key) {
  return bridge.health()["durable"][handler]["counters"][key].get<std::uint64_t>();
}

TEST(NatsDurable, FailuresAreRetriedLocallyWithTheBackoff) {
  NatsServer server;
  n::Notifier consumer_notifier;
  n::Notifier producer_notifier;
  n::Bridge consumer(consumer_notifier, n::make_nats_transport(options_for(server.url())), config_for("consumer", false));
  n::Bridge producer(producer_notifier, n::make_nats_transport(options_for(server.url())), config_for("producer", true));
  std::mutex mutex;
  std::vector<Clock::time_point> at;
  n::DurableOptions options;
  options.backoff = {.initial = 40ms, .max = 400ms, .multiplier = 2.0, .jitter = 0.0};
  options.max_attempts = 5;
  consumer.subscribe_durable("mailer", "user.>", [&](const n::Event&, n::DurableContext& context) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      at.push_back(Clock::now());
    }
    if (context.attempt() < 3) throw std::runtime_error("try again");
  }, options);
  consumer.start();
  producer.start();
  ASSERT_TRUE(wait_until([&] { return consumer.health()["transport"]["connection"] == "connected"; }, 10s));
  producer_notifier.instrument("user.signed_up", {{"user", 1}});
  ASSERT_TRUE(wait_until([&] { return count(consumer, "mailer", "succeeded") == 1; }, 20s)) << consumer.health().dump();
  EXPECT_FALSE(consumer.health()["durable"]["mailer"]["acknowledgements"].get<bool>());
  std::lock_guard<std::mutex> lock(mutex);
  ASSERT_EQ(at.size(), 3u);
  EXPECT_GE(at[1] - at[0], 40ms);
  EXPECT_GE(at[2] - at[1], 80ms);
  producer.shutdown(5s);
  consumer.shutdown(5s);
}

TEST(NatsDurable, TwoBridgesRunningOneHandlerShareItAsAQueueGroup) {
  NatsServer server;
  n::Notifier a_notifier;
  n::Notifier b_notifier;
  n::Notifier producer_notifier;
  n::Bridge a(a_notifier, n::make_nats_transport(options_for(server.url())), config_for("a", false));
  n::Bridge b(b_notifier, n::make_nats_transport(options_for(server.url())), config_for("b", false));
  n::Bridge producer(producer_notifier, n::make_nats_transport(options_for(server.url())), config_for("producer", true));
  std::atomic<int> a_calls{0};
  std::atomic<int> b_calls{0};
  a.subscribe_durable("billing", "order.placed", [&](const n::Event&, n::DurableContext&) { a_calls.fetch_add(1); });
  b.subscribe_durable("billing", "order.placed", [&](const n::Event&, n::DurableContext&) { b_calls.fetch_add(1); });
  a.start();
  b.start();
  producer.start();
  ASSERT_TRUE(producer.flush(10s));
  const int events = 40;
  for (int i = 0; i < events; ++i) producer_notifier.instrument("order.placed", {{"i", i}});
  ASSERT_TRUE(producer.flush(10s));
  ASSERT_TRUE(wait_until([&] { return a_calls.load() + b_calls.load() == events; }, 20s))
      << a_calls.load() << " + " << b_calls.load();
  std::this_thread::sleep_for(200ms);  // a second delivery would show now
  EXPECT_EQ(a_calls.load() + b_calls.load(), events);
  producer.shutdown(5s);
  a.shutdown(5s);
  b.shutdown(5s);
}

}  // namespace
