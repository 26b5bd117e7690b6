// Routes and the durability keys: parsing and validation (config_from_json, routes_from_json,
// routes_from_text, routes_from_environment) and configure_routes() end to end over memory://.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/bridge.hpp"
#include "notifications/config.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

using test_support::config_for;
using test_support::counter;
using test_support::unique_broker;
using test_support::wait_until;

// what() of the ConfigError `action` throws; fails the test when it throws nothing.
std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const n::ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return "no error";
}

std::string json_error(const json& value) {
  return error_of([&] { n::config_from_json(value); });
}
std::string routes_error(const json& value) {
  return error_of([&] { n::routes_from_json(value); });
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- the new keys ----

TEST(DurabilityKeys, DefaultsNeedNoOutbox) {
  const n::BridgeConfig config = n::config_from_json(json::object());
  EXPECT_EQ(config.name, "default");
  EXPECT_EQ(config.durability, n::Durability::none);
  EXPECT_EQ(config.outbox.path, "");
  EXPECT_EQ(config.outbox.synchronous, n::OutboxConfig::Synchronous::normal);
  EXPECT_EQ(config.outbox.busy_timeout, 5000ms);
  EXPECT_EQ(config.outbox.max_pages, 0u);
}

TEST(DurabilityKeys, EveryKeyIsRead) {
  const n::BridgeConfig config = n::config_from_json(json::parse(R"({
    "name": "orders", "durability": "sync", "overflow": "spill",
    "outbox": {"path": "/tmp/o.db", "synchronous": "full", "busy_timeout_ms": 250,
               "max_pages": 1000}})"));
  EXPECT_EQ(config.name, "orders");
  EXPECT_EQ(config.durability, n::Durability::sync);
  EXPECT_EQ(config.overflow, n::OverflowPolicy::spill);
  EXPECT_EQ(config.outbox.path, "/tmp/o.db");
  EXPECT_EQ(config.outbox.synchronous, n::OutboxConfig::Synchronous::full);
  EXPECT_EQ(config.outbox.busy_timeout, 250ms);
  EXPECT_EQ(config.outbox.max_pages, 1000u);
}

TEST(DurabilityKeys, NamesRoundTrip) {
  for (const auto d : {n::Durability::none, n::Durability::async, n::Durability::sync}) {
    json value = {{"durability", n::to_string(d)}};
    if (d != n::Durability::none) value["outbox"] = {{"path", "x.db"}};
    EXPECT_EQ(n::config_from_json(value).durability, d);
  }
  EXPECT_EQ(n::to_string(n::Durability::async), "async");
  EXPECT_EQ(n::to_string(n::OverflowPolicy::spill), "spill");
  EXPECT_EQ(n::to_string(n::OutboxConfig::Synchronous::normal), "normal");
  EXPECT_EQ(n::to_string(n::OutboxConfig::Synchronous::full), "full");
  EXPECT_EQ(n::to_string(static_cast<n::Durability>(9)), "Durability(9)");
}

TEST(DurabilityKeys, BoundariesAreAccepted) {
  for (const int ms : {0, 600000}) {
    const json value = {{"durability", "async"}, {"outbox", {{"path", "x.db"}, {"busy_timeout_ms", ms}}}};
    EXPECT_EQ(n::config_from_json(value).outbox.busy_timeout.count(), ms);
  }
  for (const std::int64_t pages : {std::int64_t{0}, std::int64_t{1}, std::int64_t{2147483647}}) {
    const json value = {{"durability", "async"}, {"outbox", {{"path", "x.db"}, {"max_pages", pages}}}};
    EXPECT_EQ(static_cast<std::int64_t>(n::config_from_json(value).outbox.max_pages), pages);
  }
}

struct BadKey {
  const char* json_text;
  const char* key;       // the key path the message must name, quoted
  const char* expected;  // part of what the message must say
};
void PrintTo(const BadKey& bad, std::ostream* os) { *os << bad.json_text; }

class DurabilityBadValue : public testing::TestWithParam<BadKey> {};

TEST_P(DurabilityBadValue, NamesTheKeyAndTheExpectation) {
  const BadKey& bad = GetParam();
  const std::string message = json_error(json::parse(bad.json_text));
  EXPECT_TRUE(has(message, std::string("\"") + bad.key + "\"")) << message;
  EXPECT_TRUE(has(message, bad.expected)) << message;
}

INSTANTIATE_TEST_SUITE_P(
    Keys, DurabilityBadValue,
    testing::Values(
        BadKey{R"({"name": "a.b"})", "name", "a route name"},
        BadKey{R"({"name": ""})", "name", "a route name"},
        BadKey{R"({"name": 5})", "name", "got 5"},
        BadKey{R"({"durability": "fast"})", "durability", R"(one of "none", "async", "sync", got "fast")"},
        BadKey{R"({"durability": true})", "durability", "got true"},
        BadKey{R"({"overflow": "spil"})", "overflow", R"("drop_oldest", "spill", got "spil")"},
        BadKey{R"({"outbox": "x.db"})", "outbox", "an object with keys path, synchronous"},
        BadKey{R"({"outbox": {"pathh": "x"}})", "outbox.pathh", "known keys of \"outbox\": path"},
        BadKey{R"({"durability": "sync", "outbox": {"path": ""}})", "outbox.path", "a non-empty file path"},
        BadKey{R"({"durability": "sync", "outbox": {"path": 3}})", "outbox.path", "got 3"},
        BadKey{R"({"durability": "sync", "outbox": {"path": "x", "synchronous": "extra"}})",
               "outbox.synchronous", R"(one of "normal", "full", got "extra")"},
        BadKey{R"({"durability": "sync", "outbox": {"path": "x", "busy_timeout_ms": 600001}})",
               "outbox.busy_timeout_ms", "from 0 to 600000, got 600001"},
        BadKey{R"({"durability": "sync", "outbox": {"path": "x", "busy_timeout_ms": -1}})",
               "outbox.busy_timeout_ms", "got -1"},
        BadKey{R"({"durability": "sync", "outbox": {"path": "x", "max_pages": 2147483648}})",
               "outbox.max_pages", "from 1 to 2147483647, got 2147483648"},
        BadKey{R"({"durability": "sync", "outbox": {"path": "x", "max_pages": 1.5}})",
               "outbox.max_pages", "got 1.5"}));

TEST(DurabilityKeys, DurableModesNeedAnOutboxPath) {
  for (const char* text : {R"({"durability": "async"})", R"({"durability": "sync", "outbox": {}})"}) {
    const std::string message = json_error(json::parse(text));
    EXPECT_TRUE(has(message, "key \"outbox.path\": missing: durability")) << message;
    EXPECT_TRUE(has(message, "keeps events in an outbox file")) << message;
  }
  const std::string spill = json_error({{"overflow", "spill"}});
  EXPECT_TRUE(has(spill, "key \"outbox.path\": missing: overflow \"spill\"")) << spill;
}

TEST(DurabilityKeys, AnUnusedOutboxPathIsRefused) {
  const std::string message = json_error({{"outbox", {{"path", "x.db"}}}});
  EXPECT_TRUE(has(message, "key \"outbox.path\"")) << message;
  EXPECT_TRUE(has(message, "used only with durability \"async\" or \"sync\" or overflow \"spill\"")) << message;
  // spill alone uses it.
  EXPECT_EQ(n::config_from_json({{"overflow", "spill"}, {"outbox", {{"path", "x.db"}}}}).outbox.path, "x.db");
}

TEST(DurabilityKeys, ValidateChecksTheStruct) {
  n::BridgeConfig config;
  config.durability = n::Durability::async;
  EXPECT_TRUE(has(error_of([&] { config.validate(); }), "key \"outbox.path\": missing")) ;
  config.outbox.path = std::string("a\0b", 3);
  EXPECT_TRUE(has(error_of([&] { config.validate(); }), "NUL byte"));
  config.outbox.path = "x.db";
  config.validate();
  config.outbox.max_pages = std::size_t{1} << 31;
  EXPECT_TRUE(has(error_of([&] { config.validate(); }), "key \"outbox.max_pages\""));
  config.outbox.max_pages = 0;
  config.durability = static_cast<n::Durability>(7);
  EXPECT_TRUE(has(error_of([&] { config.validate(); }), "key \"durability\""));
  config.durability = n::Durability::none;
  config.outbox.path.clear();
  config.name = "has space";
  EXPECT_TRUE(has(error_of([&] { config.validate(); }), "key \"name\""));
}

// ---- routes ----

TEST(Routes, ConfigFromJsonPointsAtRoutesFromJson) {
  const std::string message = json_error({{"routes", json::array({json::object()})}});
  EXPECT_TRUE(has(message, "key \"routes\"")) << message;
  EXPECT_TRUE(has(message, "routes_from_json()")) << message;
}

TEST(Routes, WithoutRoutesTheObjectIsOneRoute) {
  auto routes = n::routes_from_json({{"app", "solo"}});
  ASSERT_EQ(routes.size(), 1u);
  EXPECT_EQ(routes[0].name, "default");
  EXPECT_EQ(routes[0].app, "solo");
  routes = n::routes_from_json({{"name", "mine"}});
  EXPECT_EQ(routes.at(0).name, "mine");
}

TEST(Routes, RouteKeysReplaceTheDefaultsWholeValues) {
  const auto routes = n::routes_from_json(json::parse(R"({
    "app": "shop", "url": "memory://main", "forward": ["a.>", "b.>"],
    "retry": {"initial_ms": 7, "max_ms": 70},
    "routes": [
      {"name": "orders", "forward": ["order.>"], "durability": "async",
       "outbox": {"path": "orders.db"}},
      {"url": "mock://side", "retry": {"max_ms": 90}},
      {}
    ]})"));
  ASSERT_EQ(routes.size(), 3u);
  EXPECT_EQ(routes[0].name, "orders");
  EXPECT_EQ(routes[0].app, "shop");
  EXPECT_EQ(routes[0].url, "memory://main");
  EXPECT_EQ(routes[0].forward, std::vector<std::string>{"order.>"});
  EXPECT_EQ(routes[0].durability, n::Durability::async);
  EXPECT_EQ(routes[0].retry.initial, 7ms);
  EXPECT_EQ(routes[1].name, "route2");
  EXPECT_EQ(routes[1].url, "mock://side");
  EXPECT_EQ(routes[1].forward, (std::vector<std::string>{"a.>", "b.>"}));
  EXPECT_EQ(routes[1].retry.max, 90ms);
  EXPECT_EQ(routes[1].retry.initial, n::RetryPolicy{}.initial);  // the object was replaced whole
  EXPECT_EQ(routes[1].durability, n::Durability::none);
  EXPECT_EQ(routes[2].name, "route3");
  EXPECT_EQ(routes[2].retry.initial, 7ms);
}

TEST(Routes, DefaultsMayBeCompletedByEachRoute) {
  // durability in the defaults, each route its own file.
  const auto routes = n::routes_from_json(json::parse(R"({"durability": "sync",
    "routes": [{"outbox": {"path": "a.db"}}, {"outbox": {"path": "b.db"}}]})"));
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[1].durability, n::Durability::sync);
  EXPECT_EQ(routes[1].outbox.path, "b.db");
  const std::string message = routes_error(json::parse(R"({"durability": "sync",
    "routes": [{"outbox": {"path": "a.db"}}, {}]})"));
  EXPECT_TRUE(has(message, "key \"routes[1].outbox.path\": missing: durability \"sync\"")) << message;
}

TEST(Routes, ErrorsNameTheRoute) {
  EXPECT_EQ(routes_error(json::parse(R"({"routes": [{}, {"forward": ["order..x"]}]})"))
                .find("[notifications.config] key \"routes[1].forward[0]\": expected a pattern"),
            0u);
  EXPECT_TRUE(has(routes_error(json::parse(R"({"routes": [{"retry": {"initial_ms": "x"}}]})")),
                  "key \"routes[0].retry.initial_ms\""));
  EXPECT_TRUE(has(routes_error(json::parse(R"({"routes": [{}, {"urll": "x"}]})")),
                  "unknown key \"routes[1].urll\""));
  EXPECT_TRUE(has(routes_error(json::parse(R"({"routes": [{}, {"outbox": {"x": 1}}]})")),
                  "unknown key \"routes[1].outbox.x\" (known keys of \"routes[1].outbox\""));
  EXPECT_TRUE(has(routes_error(json::parse(R"({"routes": [{}, 5]})")), "key \"routes[1]\": expected a route object"));
  EXPECT_TRUE(has(routes_error(json::parse(R"({"routes": [{"routes": []}]})")), "key \"routes[0].routes\""));
  EXPECT_TRUE(has(routes_error(json::parse(R"({"routes": [{"url": "nowhere"}]})")), "key \"routes[0].url\""));
}

TEST(Routes, ErrorsInTheDefaultsNameTheTopLevelKey) {
  const std::string message = routes_error(json::parse(R"({"batch_size": 0, "routes": [{}]})"));
  EXPECT_TRUE(has(message, "key \"batch_size\"")) << message;
  EXPECT_FALSE(has(message, "routes[")) << message;
  EXPECT_TRUE(has(routes_error(json::parse(R"({"bogus": 1, "routes": [{}]})")), "unknown key \"bogus\""));
  EXPECT_TRUE(has(routes_error(json::parse(R"({"name": "x", "routes": [{}]})")),
                  "a route's name goes inside its element"));
}

TEST(Routes, ListMustBeANonEmptyArray) {
  EXPECT_TRUE(has(routes_error({{"routes", json::array()}}), "key \"routes\": expected a non-empty array"));
  EXPECT_TRUE(has(routes_error({{"routes", json::object()}}), "key \"routes\": expected a non-empty array"));
  EXPECT_TRUE(has(routes_error(json::array()), "config: expected a JSON object"));
  json many = {{"routes", json::array()}};
  for (int i = 0; i < 256; ++i) many["routes"].push_back(json::object());
  EXPECT_EQ(n::routes_from_json(many).size(), 256u);
  many["routes"].push_back(json::object());
  EXPECT_TRUE(has(routes_error(many), "key \"routes\": expected at most 256 routes, got 257"));
}

TEST(Routes, DuplicateNamesAreRefused) {
  std::string message = routes_error(json::parse(R"({"routes": [{"name": "a"}, {"name": "a"}]})"));
  EXPECT_TRUE(has(message, "key \"routes[1].name\"")) << message;
  EXPECT_TRUE(has(message, "also routes[0]'s")) << message;
  // An explicit name may collide with an unnamed route's.
  message = routes_error(json::parse(R"({"routes": [{}, {"name": "route1"}]})"));
  EXPECT_TRUE(has(message, "key \"routes[1].name\"")) << message;
}

TEST(Routes, DuplicateOutboxFilesAreRefused) {
  const std::string message = routes_error(json::parse(R"({"durability": "async", "routes": [
    {"name": "a", "outbox": {"path": "data/o.db"}}, {"name": "b", "outbox": {"path": "data/./o.db"}}]})"));
  EXPECT_TRUE(has(message, "key \"routes[1].outbox.path\"")) << message;
  EXPECT_TRUE(has(message, "also routes[0]'s outbox file")) << message;
  // A path in the defaults would be every route's.
  EXPECT_TRUE(has(routes_error(json::parse(
                      R"({"durability": "async", "outbox": {"path": "o.db"}, "routes": [{}, {}]})")),
                  "key \"routes[1].outbox.path\""));
}

TEST(Routes, FromTextNamesTheSource) {
  EXPECT_TRUE(has(error_of([] { n::routes_from_text("{\"routes\": [", "app.json"); }),
                  "app.json: invalid JSON at byte"));
  const std::string message =
      error_of([] { n::routes_from_text(R"({"routes": [{"batch_size": -1}]})", "app.json"); });
  EXPECT_TRUE(has(message, "app.json: key \"routes[0].batch_size\"")) << message;
  EXPECT_EQ(n::routes_from_text(R"({"routes": [{}, {}]})").size(), 2u);
}

// ---- the environment ----

constexpr const char* kVariables[] = {
    "NOTIFICATIONS_CONFIG",  "NOTIFICATIONS_URL",       "NOTIFICATIONS_APP",  "NOTIFICATIONS_PREFIX",
    "NOTIFICATIONS_FORWARD", "NOTIFICATIONS_SUBSCRIBE", "NOTIFICATIONS_GROUP",
};

// Starts with every NOTIFICATIONS_* variable unset; restores them and removes its files.
class RoutesEnvironment : public testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVariables) {
      const char* value = std::getenv(name);
      saved_[name] = value ? std::optional<std::string>(value) : std::nullopt;
      unsetenv(name);
    }
  }
  void TearDown() override {
    (void)n::shutdown(5s);
    for (const auto& [name, value] : saved_) {
      if (value) {
        setenv(name.c_str(), value->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
    for (const auto& path : files_) std::filesystem::remove(path);
  }

  // Writes `text` to a fresh temp file and points NOTIFICATIONS_CONFIG at it.
  std::string use_file(const std::string& text) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("test_routes_" + std::to_string(getpid()) + "_" + std::to_string(files_.size()) + ".json");
    files_.push_back(path);
    std::ofstream(path) << text;
    setenv("NOTIFICATIONS_CONFIG", path.c_str(), 1);
    return path.string();
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
  std::vector<std::filesystem::path> files_;
};

constexpr const char* kTwoRoutes = R"({"routes": [{"name": "a"}, {"name": "b", "url": "mock://"}]})";

TEST_F(RoutesEnvironment, ConfigFromEnvironmentRefusesAFileWithRoutes) {
  const std::string path = use_file(kTwoRoutes);
  const std::string message = error_of([] { n::config_from_environment(); });
  EXPECT_TRUE(has(message, "NOTIFICATIONS_CONFIG")) << message;
  EXPECT_TRUE(has(message, path)) << message;
  EXPECT_TRUE(has(message, "configure_routes()")) << message;
  EXPECT_TRUE(has(message, "routes_from_environment()")) << message;
}

TEST_F(RoutesEnvironment, ConfigFromEnvironmentWorksAsBefore) {
  use_file(R"({"app": "file_app"})");
  setenv("NOTIFICATIONS_URL", "mock://", 1);
  const n::BridgeConfig config = n::config_from_environment();
  EXPECT_EQ(config.app, "file_app");
  EXPECT_EQ(config.url, "mock://");
  EXPECT_EQ(config.name, "default");
}

TEST_F(RoutesEnvironment, VariablesOverrideASingleRoute) {
  EXPECT_EQ(n::routes_from_environment().size(), 1u);  // no file: the defaults
  use_file(R"({"routes": [{"name": "only", "app": "file_app"}]})");
  setenv("NOTIFICATIONS_APP", "env_app", 1);
  setenv("NOTIFICATIONS_FORWARD", "order.>", 1);
  const auto routes = n::routes_from_environment();
  ASSERT_EQ(routes.size(), 1u);
  EXPECT_EQ(routes[0].name, "only");
  EXPECT_EQ(routes[0].app, "env_app");
  EXPECT_EQ(routes[0].forward, std::vector<std::string>{"order.>"});
}

TEST_F(RoutesEnvironment, VariablesAreRefusedWithSeveralRoutes) {
  use_file(kTwoRoutes);
  EXPECT_EQ(n::routes_from_environment().size(), 2u);
  for (const char* variable : {"NOTIFICATIONS_URL", "NOTIFICATIONS_APP", "NOTIFICATIONS_PREFIX",
                               "NOTIFICATIONS_FORWARD", "NOTIFICATIONS_SUBSCRIBE", "NOTIFICATIONS_GROUP"}) {
    setenv(variable, "x", 1);
    const std::string message = error_of([] { n::routes_from_environment(); });
    EXPECT_TRUE(has(message, std::string("environment variable ") + variable + ": set, but")) << message;
    EXPECT_TRUE(has(message, "holds 2 routes")) << message;
    unsetenv(variable);
  }
}

// ---- configure_routes() end to end ----

// A receiving process: its own notifier and a bridge that subscribes to everything on `url`
// and forwards nothing.
struct Receiver {
  n::Notifier notifier;
  std::unique_ptr<n::Bridge> bridge;
  std::mutex mutex;
  std::vector<std::string> names;
  n::Subscription subscription;

  explicit Receiver(const std::string& url) {
    n::BridgeConfig config = config_for("receiver");
    config.url = url;
    config.forward = {};
    bridge = n::make_bridge(notifier, config);
    subscription = notifier.subscribe([this](const n::Event& e) {
      std::lock_guard lock(mutex);
      names.emplace_back(e.name());
    });
    bridge->start();
  }
  ~Receiver() { bridge->shutdown(5s); }
  std::vector<std::string> seen() {
    std::lock_guard lock(mutex);
    return names;
  }
};

// Two routes, each to its own memory broker, forwarding disjoint patterns.
std::vector<n::BridgeConfig> two_routes(const std::string& broker_a, const std::string& broker_b) {
  n::BridgeConfig orders = config_for("shop");
  orders.name = "orders";
  orders.url = "memory://" + broker_a;
  orders.forward = {"order.>"};
  orders.subscribe = {};
  n::BridgeConfig sql = config_for("shop");
  sql.name = "sql";
  sql.url = "memory://" + broker_b;
  sql.forward = {"sql.>"};
  sql.subscribe = {};
  return {orders, sql};
}

TEST(ConfigureRoutes, EachEventGoesOnlyThroughItsRoute) {
  const std::string broker_a = unique_broker("routes-a");
  const std::string broker_b = unique_broker("routes-b");
  Receiver a("memory://" + broker_a);
  Receiver b("memory://" + broker_b);

  const auto bridges = n::configure_routes(two_routes(broker_a, broker_b));
  ASSERT_EQ(bridges.size(), 2u);
  EXPECT_EQ(bridges[0]->config().name, "orders");
  EXPECT_EQ(bridges[1]->config().name, "sql");
  EXPECT_EQ(bridges[0]->instance_id(), bridges[1]->instance_id());
  const auto attached = n::configured_bridges();
  ASSERT_EQ(attached.size(), 2u);
  EXPECT_EQ(attached[0], bridges[0]);
  EXPECT_EQ(attached[1], bridges[1]);

  n::instrument("order.placed");
  n::instrument("sql.query");
  n::instrument("order.paid");
  n::instrument("other.thing");  // no route forwards it
  ASSERT_TRUE(bridges[0]->flush(10s));
  ASSERT_TRUE(bridges[1]->flush(10s));
  ASSERT_TRUE(a.bridge->wait_delivered(10s));
  ASSERT_TRUE(b.bridge->wait_delivered(10s));
  EXPECT_EQ(a.seen(), (std::vector<std::string>{"order.placed", "order.paid"}));
  EXPECT_EQ(b.seen(), std::vector<std::string>{"sql.query"});
  EXPECT_EQ(counter(bridges[0]->health(), "sent"), 2u);
  EXPECT_EQ(counter(bridges[1]->health(), "sent"), 1u);

  const n::ShutdownReport report = n::shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 3u);
  EXPECT_EQ(report.undelivered, 0u);
  EXPECT_TRUE(has(report.detail, "route \"orders\": ")) << report.detail;
  EXPECT_TRUE(has(report.detail, "; route \"sql\": ")) << report.detail;
  EXPECT_TRUE(n::configured_bridges().empty());
  EXPECT_EQ(n::shutdown(1s).detail, "no bridge configured");
}

TEST(ConfigureRoutes, ConfigureWithOneConfigKeepsReturningThatBridge) {
  const std::string broker = unique_broker("routes-one");
  Receiver receiver("memory://" + broker);
  n::BridgeConfig config = config_for("one");
  config.url = "memory://" + broker;
  config.subscribe = {};
  const auto bridge = n::configure(config);
  ASSERT_EQ(n::configured_bridges().size(), 1u);
  EXPECT_EQ(n::configured_bridges()[0], bridge);
  EXPECT_EQ(bridge->config().name, "default");
  n::instrument("single.event");
  ASSERT_TRUE(bridge->flush(10s));
  ASSERT_TRUE(receiver.bridge->wait_delivered(10s));
  EXPECT_EQ(receiver.seen(), std::vector<std::string>{"single.event"});
  const n::ShutdownReport report = n::shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 1u);
  EXPECT_FALSE(has(report.detail, "route \"")) << report.detail;
}

TEST(ConfigureRoutes, AFailureKeepsWhatWasAttached) {
  const std::string broker = unique_broker("routes-keep");
  n::BridgeConfig first = config_for("first");
  first.url = "memory://" + broker;
  first.subscribe = {};
  const auto attached = n::configure(first);

  // The second route cannot be wired (an unknown memory:// option): nothing is replaced.
  auto routes = two_routes(unique_broker("routes-x"), unique_broker("routes-y"));
  routes[1].url += "?bogus=1";
  EXPECT_THROW(n::configure_routes(routes), n::TransportError);
  // A bad route is refused before anything is wired, naming it.
  routes = two_routes(unique_broker("routes-x"), unique_broker("routes-y"));
  routes[1].forward = {"sql..x"};
  EXPECT_TRUE(has(error_of([&] { n::configure_routes(routes); }), "routes[1]: key \"forward[0]\""));
  routes = two_routes(unique_broker("routes-x"), unique_broker("routes-y"));
  routes[1].name = routes[0].name;
  EXPECT_TRUE(has(error_of([&] { n::configure_routes(routes); }), "routes[1]: the name \"orders\""));
  EXPECT_TRUE(has(error_of([] { n::configure_routes({}); }), "at least one route"));

  ASSERT_EQ(n::configured_bridges().size(), 1u);
  EXPECT_EQ(n::configured_bridges()[0], attached);
  EXPECT_TRUE(n::shutdown(5s).clean);
}

TEST(ConfigureRoutes, AStartFailureShutsDownTheStartedRoutes) {
  // "routes-fail://": a mock whose start() throws.
  n::register_transport("routes-fail", [](const n::TransportConfig&) {
    auto mock = std::make_unique<n::MockTransport>(n::MockOptions{.broker = unique_broker("routes-fail")});
    mock->fail_next_starts(1);
    return mock;
  });
  const std::string broker = unique_broker("routes-started");
  auto routes = two_routes("unused", "unused");
  routes[0].url = "mock://" + broker;
  routes[0].forward = {"started.>"};
  routes[0].subscribe = {">"};
  routes[1].url = "routes-fail://";
  const auto before = n::default_notifier().listening("started.x");
  EXPECT_FALSE(before);
  EXPECT_THROW(n::configure_routes(routes), n::TransportError);
  EXPECT_TRUE(n::configured_bridges().empty());
  // Nothing of the first route is left forwarding.
  EXPECT_FALSE(n::default_notifier().listening("started.x"));
}

TEST_F(RoutesEnvironment, ConfigureAttachesEveryRouteOfTheFile) {
  const std::string broker_a = unique_broker("routes-env-a");
  const std::string broker_b = unique_broker("routes-env-b");
  Receiver a("memory://" + broker_a);
  Receiver b("memory://" + broker_b);
  use_file(R"({"prefix": "test", "subscribe": [], "routes": [
    {"name": "orders", "url": "memory://)" + broker_a + R"(", "forward": ["order.>"]},
    {"url": "memory://)" + broker_b + R"(", "forward": ["sql.>"]}]})");
  const auto first = n::configure();
  const auto attached = n::configured_bridges();
  ASSERT_EQ(attached.size(), 2u);
  EXPECT_EQ(attached[0], first);
  EXPECT_EQ(attached[1]->config().name, "route2");
  n::instrument("sql.query");
  ASSERT_TRUE(attached[1]->flush(10s));
  ASSERT_TRUE(b.bridge->wait_delivered(10s));
  EXPECT_EQ(b.seen(), std::vector<std::string>{"sql.query"});
  EXPECT_TRUE(a.seen().empty());
  const n::ShutdownReport report = n::shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 1u);
}

}  // namespace
