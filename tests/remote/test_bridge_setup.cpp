// Setting a bridge up as a new user does: one call from a notifier and a config, two services in
// one process with a test that sees what the other sent, and configure() saying which transport
// it chose and why, and which variables it did not understand.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/spdlog.hpp"
#include "notifications/testing.hpp"

namespace n = notifications;
using namespace std::chrono_literals;

namespace {

n::BridgeConfig service(const std::string& app, const std::string& url) {
  n::BridgeConfig config;
  config.app = app;
  config.url = url;
  return config;
}

// docs/testing.md's "two services in one test": flush() on the sender, wait_delivered() on the
// receiver, and the receiver's listeners have seen everything, with no polling.
TEST(BridgeSetup, TwoServicesInOneTestSeeEachOthersEventsAfterFlushAndWaitDelivered) {
  for (const char* mode : {"inline", "queued"}) {
    const std::string url = std::string("memory://setup-") + mode + "?mode=" + mode;
    n::Notifier orders;
    n::Notifier analytics;
    auto sender = n::make_bridge(orders, service("orders", url));
    auto receiver = n::make_bridge(analytics, service("analytics", url));
    sender->start();
    receiver->start();
    std::atomic<int> seen{0};
    auto sub = analytics.subscribe("order.>", [&](const n::Event& e) {
      if (e.remote()) seen.fetch_add(1);
    });
    for (int i = 0; i < 100; ++i) orders.instrument("order.placed", {{"i", i}});
    ASSERT_TRUE(sender->flush(10s)) << mode;
    ASSERT_TRUE(receiver->wait_delivered(10s)) << mode;
    EXPECT_EQ(seen.load(), 100) << mode;
  }
}

// The example of docs/testing.md ("Two services in one test"), as written there.
TEST(BridgeSetup, ReadmeTwoServicesExample) {
  notifications::Notifier orders, analytics;
  notifications::BridgeConfig config;
  config.url = "memory://shop?mode=inline";      // one in-process broker named "shop"
  config.app = "orders";
  auto sender = notifications::make_bridge(orders, config);      // transport from config.url
  config.app = "analytics";
  auto receiver = notifications::make_bridge(analytics, config);
  sender->start();
  receiver->start();
  auto events = notifications::testing::capture(analytics, "order.>", [&] {
    orders.instrument("order.placed", {{"id", 7}});
    sender->flush(std::chrono::seconds(5));            // handed to the transport and flushed
    receiver->wait_delivered(std::chrono::seconds(5)); // and delivered to analytics' listeners
  });
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events[0].remote());
}

TEST(BridgeSetup, MakeBridgeTakesTheTransportFromTheConfig) {
  n::Notifier notifier;
  auto bridge = n::make_bridge(notifier, service("app", "mock://setup-mock"));
  EXPECT_EQ(bridge->health()["transport"]["kind"], "mock");
  EXPECT_THROW(n::make_bridge(notifier, service("app", "bogus://x")), n::TransportError);
}

struct CapturedLog {
  std::shared_ptr<std::ostringstream> stream = std::make_shared<std::ostringstream>();
  std::shared_ptr<spdlog::logger> previous = notifications::logger();
  CapturedLog() {
    notifications::set_logger(std::make_shared<spdlog::logger>(
        "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream)));
  }
  ~CapturedLog() { notifications::set_logger(previous); }
  std::string text() const { return stream->str(); }
};

TEST(BridgeSetup, ConfigureSaysWhichTransportItChoseAndWhy) {
  ::unsetenv("NOTIFICATIONS_URL");
  ::unsetenv("NOTIFICATIONS_CONFIG");
  ::setenv("NOTIFICATION_URL", "nats://127.0.0.1:4222", 1);  // the typo a new user made
  {
    CapturedLog log;
    n::configure();
    n::shutdown();
    const std::string text = log.text();
    EXPECT_NE(text.find("started on memory:// (the default: neither NOTIFICATIONS_URL nor NOTIFICATIONS_CONFIG is set)"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("environment variable NOTIFICATION_URL is not one this library reads"), std::string::npos)
        << text;
  }
  ::unsetenv("NOTIFICATION_URL");
  ::setenv("NOTIFICATIONS_URL", "memory://setup-env", 1);
  {
    CapturedLog log;
    n::configure();
    n::shutdown();
    EXPECT_NE(log.text().find("started on memory://setup-env (from NOTIFICATIONS_URL)"), std::string::npos) << log.text();
    EXPECT_EQ(log.text().find("is not one this library reads"), std::string::npos) << log.text();
  }
  ::unsetenv("NOTIFICATIONS_URL");
}

TEST(BridgeSetup, UnknownEnvironmentVariablesAreTheOnesThatLookLikeOurs) {
  ::setenv("NOTIFICATIONS_URLL", "x", 1);
  ::setenv("Notification_Url", "x", 1);
  ::setenv("NOTIFICATIONS_URL", "memory://", 1);
  const auto unknown = n::unknown_environment_variables();
  auto has = [&](const std::string& name) { return std::find(unknown.begin(), unknown.end(), name) != unknown.end(); };
  EXPECT_TRUE(has("NOTIFICATIONS_URLL"));
  EXPECT_TRUE(has("Notification_Url"));
  EXPECT_FALSE(has("NOTIFICATIONS_URL"));
  ::unsetenv("NOTIFICATIONS_URLL");
  ::unsetenv("Notification_Url");
  ::unsetenv("NOTIFICATIONS_URL");
}

}  // namespace
