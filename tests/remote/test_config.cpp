#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "notifications/config.hpp"

using nlohmann::json;
using notifications::BridgeConfig;
using notifications::config_from_environment;
using notifications::config_from_json;
using notifications::config_from_text;
using notifications::ConfigError;
using notifications::OverflowPolicy;

namespace {

// what() of the ConfigError `action` throws; fails the test when it throws nothing.
std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return "no error";
}

std::string json_error(const json& value) {
  return error_of([&] { config_from_json(value); });
}

std::string text_error(std::string_view text, std::string_view source = "config") {
  return error_of([&] { config_from_text(text, source); });
}

std::string validate_error(const BridgeConfig& config) {
  return error_of([&] { config.validate(); });
}

void expect_defaults(const BridgeConfig& c) {
  EXPECT_EQ(c.url, "memory://");
  EXPECT_EQ(c.app, "app");
  EXPECT_EQ(c.prefix, "notifications");
  EXPECT_EQ(c.forward, std::vector<std::string>{">"});
  EXPECT_EQ(c.subscribe, std::vector<std::string>{">"});
  EXPECT_EQ(c.group, "");
  EXPECT_EQ(c.queue_capacity, 65536u);
  EXPECT_EQ(c.queue_max_bytes, 64u * 1024 * 1024);
  EXPECT_EQ(c.overflow, OverflowPolicy::block);
  EXPECT_EQ(c.block_timeout, std::chrono::milliseconds(100));
  EXPECT_EQ(c.batch_size, 256u);
  EXPECT_EQ(c.retry.initial, std::chrono::milliseconds(50));
  EXPECT_EQ(c.retry.max, std::chrono::milliseconds(5000));
  EXPECT_EQ(c.retry.multiplier, 2.0);
  EXPECT_EQ(c.retry.jitter, 0.2);
  EXPECT_EQ(c.retry.max_attempts, 0);
  EXPECT_EQ(c.transport, json::object());
}

// ---- defaults and a full object ----

TEST(ConfigBasic, DefaultsAreValid) {
  const BridgeConfig config;
  expect_defaults(config);
  EXPECT_NO_THROW(config.validate());
}

TEST(ConfigBasic, EmptyObjectGivesDefaults) {
  expect_defaults(config_from_json(json::object()));
  expect_defaults(config_from_text("{}"));
  expect_defaults(config_from_text(" \n{ }\n"));
}

TEST(ConfigBasic, FullObject) {
  const auto config = config_from_text(R"({
    "url": "nats://localhost:4222",
    "app": "billing-api_2",
    "prefix": "acme.events",
    "forward": ["order.*", "sql.>", "payment.captured"],
    "subscribe": ["order.placed", "*.failed"],
    "group": "billing",
    "queue_capacity": 1000,
    "overflow": "drop_oldest",
    "block_timeout_ms": 0,
    "batch_size": 1000,
    "retry": {"initial_ms": 10, "max_ms": 10, "multiplier": 1, "jitter": 0.5, "max_attempts": 7},
    "transport": {"stream": "EVENTS", "password": "x", "nested": {"a": [1, 2]}}
  })");
  EXPECT_EQ(config.url, "nats://localhost:4222");
  EXPECT_EQ(config.app, "billing-api_2");
  EXPECT_EQ(config.prefix, "acme.events");
  EXPECT_EQ(config.forward, (std::vector<std::string>{"order.*", "sql.>", "payment.captured"}));
  EXPECT_EQ(config.subscribe, (std::vector<std::string>{"order.placed", "*.failed"}));
  EXPECT_EQ(config.group, "billing");
  EXPECT_EQ(config.queue_capacity, 1000u);
  EXPECT_EQ(config.overflow, OverflowPolicy::drop_oldest);
  EXPECT_EQ(config.block_timeout, std::chrono::milliseconds(0));
  EXPECT_EQ(config.batch_size, 1000u);
  EXPECT_EQ(config.retry.initial, std::chrono::milliseconds(10));
  EXPECT_EQ(config.retry.max, std::chrono::milliseconds(10));
  EXPECT_EQ(config.retry.multiplier, 1.0);
  EXPECT_EQ(config.retry.jitter, 0.5);
  EXPECT_EQ(config.retry.max_attempts, 7);
  EXPECT_EQ(config.transport,
            json::parse(R"({"stream": "EVENTS", "password": "x", "nested": {"a": [1, 2]}})"));
}

TEST(ConfigBasic, PartialRetryKeepsOtherDefaults) {
  const auto config = config_from_json({{"retry", {{"max_ms", 60000}}}});
  EXPECT_EQ(config.retry.initial, std::chrono::milliseconds(50));
  EXPECT_EQ(config.retry.max, std::chrono::milliseconds(60000));
  EXPECT_EQ(config.retry.multiplier, 2.0);
}

TEST(ConfigBasic, EmptyListsAreAllowed) {
  const auto config = config_from_json({{"forward", json::array()}, {"subscribe", json::array()}});
  EXPECT_TRUE(config.forward.empty());
  EXPECT_TRUE(config.subscribe.empty());
}

TEST(ConfigBasic, BoundariesAreAccepted) {
  EXPECT_NO_THROW(config_from_json({{"queue_capacity", 10000000}, {"batch_size", 100000}}));
  EXPECT_NO_THROW(config_from_json({{"queue_capacity", 1}, {"batch_size", 1}}));
  EXPECT_NO_THROW(config_from_json({{"block_timeout_ms", 600000}}));
  EXPECT_NO_THROW(config_from_json({{"retry",
                                     {{"initial_ms", 600000},
                                      {"max_ms", 3600000},
                                      {"multiplier", 10.0},
                                      {"jitter", 0},
                                      {"max_attempts", 2147483647}}}}));
  EXPECT_NO_THROW(config_from_json({{"retry", {{"initial_ms", 1}, {"jitter", 1}}}}));
  EXPECT_NO_THROW(config_from_json({{"url", "a+b-c.d9://"}}));
  EXPECT_NO_THROW(config_from_json({{"group", ""}}));
}

TEST(ConfigQueueMaxBytes, ReadFromJson) {
  EXPECT_EQ(config_from_json({{"queue_max_bytes", 0}}).queue_max_bytes, 0u);  // no byte bound
  EXPECT_EQ(config_from_json({{"queue_max_bytes", 4096}}).queue_max_bytes, 4096u);
  EXPECT_EQ(config_from_json({{"queue_max_bytes", 1099511627776}}).queue_max_bytes,
            std::size_t{1} << 40);
  EXPECT_EQ(config_from_text(R"({"queue_max_bytes": 1048576})").queue_max_bytes, 1048576u);
}

TEST(ConfigQueueMaxBytes, OutOfRangeNamesTheRule) {
  EXPECT_EQ(json_error({{"queue_max_bytes", 4095}}),
            "[notifications.config] key \"queue_max_bytes\": expected 0 (no byte bound) or an "
            "integer from 4096 to 1099511627776, got 4095");
  BridgeConfig config;
  config.queue_max_bytes = std::numeric_limits<std::size_t>::max();
  EXPECT_EQ(validate_error(config),
            "[notifications.config] key \"queue_max_bytes\": expected 0 (no byte bound) or an "
            "integer from 4096 to 1099511627776, got 18446744073709551615");
}

// ---- list limits: at most 1024 patterns per list, forward patterns at most 1024 bytes ----

// `count` patterns "p0", "p1", ...
std::vector<std::string> patterns(std::size_t count) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) out.push_back("p" + std::to_string(i));
  return out;
}

TEST(ConfigLists, ListsAtTheLimitAreAccepted) {
  const auto config =
      config_from_json({{"forward", patterns(1024)}, {"subscribe", patterns(1024)}});
  EXPECT_EQ(config.forward.size(), 1024u);
  EXPECT_EQ(config.subscribe.size(), 1024u);
}

TEST(ConfigLists, JsonListPastTheLimitIsRefused) {
  EXPECT_EQ(json_error({{"forward", patterns(1025)}}),
            "[notifications.config] key \"forward\": expected at most 1024 patterns, got 1025");
  EXPECT_EQ(json_error({{"subscribe", patterns(1025)}}),
            "[notifications.config] key \"subscribe\": expected at most 1024 patterns, got 1025");
}

TEST(ConfigLists, JsonListLengthIsCheckedBeforeItsItems) {
  // Not one item is a string: the length is what is reported, so nothing was read item by item.
  const json nulls(std::vector<json>(100000, nullptr));
  EXPECT_EQ(json_error({{"forward", nulls}}),
            "[notifications.config] key \"forward\": expected at most 1024 patterns, got 100000");
  EXPECT_EQ(json_error({{"subscribe", nulls}}),
            "[notifications.config] key \"subscribe\": expected at most 1024 patterns, got "
            "100000");
}

TEST(ConfigLists, ValidateBoundsTheLists) {
  BridgeConfig config;
  config.forward = patterns(1025);
  EXPECT_EQ(validate_error(config), json_error({{"forward", patterns(1025)}}));
  config = BridgeConfig{};
  config.subscribe = patterns(1025);
  EXPECT_EQ(validate_error(config), json_error({{"subscribe", patterns(1025)}}));
}

TEST(ConfigLists, LongForwardPatternIsRefused) {
  EXPECT_NO_THROW(config_from_json({{"forward", {std::string(1024, 'a')}}}));
  const std::string message =
      json_error({{"forward", {"a", "b.*", std::string(1023, 'a') + ".*"}}});
  EXPECT_EQ(
      message.rfind("[notifications.config] key \"forward[2]\": expected a pattern string", 0), 0u)
      << message;
  EXPECT_NE(message.find("1025 bytes long (at most 1024)"), std::string::npos) << message;
  EXPECT_LT(message.size(), 400u) << message;
  BridgeConfig config;
  config.forward = {"a", std::string(5000, 'x')};
  EXPECT_NE(validate_error(config).find("key \"forward[1]\""), std::string::npos);
}

TEST(ConfigLists, LongSubscribePatternIsRefused) {
  // A subscribe pattern is a subject pattern: at most 255 bytes, and so is prefix.pattern.
  const std::string message = json_error({{"subscribe", {"a", std::string(5000, 'x')}}});
  EXPECT_EQ(message.rfind("[notifications.config] key \"subscribe[1]\": expected a subject "
                          "pattern string",
                          0),
            0u)
      << message;
  EXPECT_NE(message.find("5000 bytes long (at most 255)"), std::string::npos) << message;
}

// ---- empty tokens: a pattern with one never matches an event that can be sent or received ----

TEST(ConfigPatterns, ForwardPatternWithAnEmptyTokenIsRefused) {
  for (const auto& [pattern, token] : std::map<std::string, std::string>{
           {"order..placed", "token 2"},
           {".order", "token 1"},
           {"order.", "token 2"},
           {".", "token 1"},
           {"a.b..", "token 3"},
           {"order..*", "token 2"},
           {"..>", "token 1"},
       }) {
    const std::string message = json_error({{"forward", {"ok", pattern}}});
    EXPECT_EQ(message, "[notifications.config] key \"forward[1]\": expected " +
                           std::string("a pattern string (e.g. \"order.placed\", \"sql.*\", "
                                       "\"order.>\", \">\"), got \"") +
                           pattern + "\": " + token +
                           " is empty (tokens are separated by single dots, with none at either "
                           "end)");
  }
}

TEST(ConfigPatterns, SubscribePatternWithAnEmptyTokenIsRefused) {
  for (const auto& [pattern, token] : std::map<std::string, std::string>{
           {"order..placed", "token 2"},
           {".order", "token 1"},
           {"order.", "token 2"},
           {"order..*", "token 2"},
       }) {
    const std::string message = json_error({{"subscribe", {"ok", pattern}}});
    EXPECT_EQ(message.rfind("[notifications.config] key \"subscribe[1]\": expected a subject "
                            "pattern string",
                            0),
              0u)
        << message;
    EXPECT_NE(message.find("got \"" + pattern + "\": " + token + " is empty"), std::string::npos)
        << message;
  }
}

TEST(ConfigPatterns, ValidateRefusesEmptyTokens) {
  BridgeConfig config;
  config.forward = {"a", "b.c", "order."};
  EXPECT_EQ(validate_error(config), json_error({{"forward", config.forward}}));
  EXPECT_NE(validate_error(config).find("key \"forward[2]\""), std::string::npos);
  config = BridgeConfig{};
  config.subscribe = {".a"};
  EXPECT_NE(validate_error(config).find("key \"subscribe[0]\""), std::string::npos);
}

TEST(ConfigBasic, OverflowNames) {
  EXPECT_EQ(notifications::to_string(OverflowPolicy::block), "block");
  EXPECT_EQ(notifications::to_string(OverflowPolicy::drop_newest), "drop_newest");
  EXPECT_EQ(notifications::to_string(OverflowPolicy::drop_oldest), "drop_oldest");
  EXPECT_EQ(notifications::to_string(static_cast<OverflowPolicy>(7)), "OverflowPolicy(7)");
  for (const auto policy :
       {OverflowPolicy::block, OverflowPolicy::drop_newest, OverflowPolicy::drop_oldest}) {
    EXPECT_EQ(config_from_json({{"overflow", notifications::to_string(policy)}}).overflow, policy);
  }
}

// ---- wrong types and bad values, key by key ----

struct BadValue {
  const char* json_text;  // the whole config object
  const char* key;        // the key path the message must name
  const char* shown;      // how the message must show the value
  const char* expected;   // part of what the message must say was expected
};

void PrintTo(const BadValue& bad, std::ostream* os) { *os << bad.json_text; }

class ConfigBadValue : public testing::TestWithParam<BadValue> {};

TEST_P(ConfigBadValue, NamesKeyValueAndExpectation) {
  const BadValue& bad = GetParam();
  const std::string message = json_error(json::parse(bad.json_text));
  EXPECT_EQ(message.rfind("[notifications.config] key \"" + std::string(bad.key) + "\": ", 0), 0u)
      << message;
  EXPECT_NE(message.find(std::string("expected ") + bad.expected), std::string::npos) << message;
  EXPECT_NE(message.find(std::string(", got ") + bad.shown), std::string::npos) << message;
}

const BadValue kWrongTypes[] = {
    {R"({"url": 42})", "url", "42", "a URL"},
    {R"({"url": null})", "url", "null", "a URL"},
    {R"({"url": ["a://b"]})", "url", "a value of type array", "a URL"},
    {R"({"app": true})", "app", "true", "a subject token"},
    {R"({"prefix": 1.5})", "prefix", "1.5", "a subject"},
    {R"({"forward": "order.*"})", "forward", "\"order.*\"", "an array of pattern strings"},
    {R"({"forward": ["a", "b", 3]})", "forward[2]", "3", "a pattern string"},
    {R"({"subscribe": {"a": 1}})", "subscribe", "{\"a\":1}", "an array of subject pattern"},
    {R"({"subscribe": [null]})", "subscribe[0]", "null", "a subject pattern string"},
    {R"({"group": 7})", "group", "7", "an empty string or a subject token"},
    {R"({"start": "yesterday"})", "start", "\"yesterday\"", "\"new\", \"all\", a UTC time"},
    {R"({"start": "2026-11-30T04:00:00"})", "start", "\"2026-11-30T04:00:00\"", "\"new\", \"all\", a UTC time"},
    {R"({"start": {"sequence": 0}})", "start", "{\"sequence\":0}", "\"new\", \"all\", a UTC time"},
    {R"({"queue_capacity": "big"})", "queue_capacity", "\"big\"", "an integer from 1 to 10000000"},
    {R"({"queue_capacity": 100.0})", "queue_capacity", "100.0", "an integer from 1 to 10000000"},
    {R"({"queue_max_bytes": "64MiB"})", "queue_max_bytes", "\"64MiB\"",
     "0 (no byte bound) or an integer from 4096 to 1099511627776"},
    {R"({"queue_max_bytes": 4096.0})", "queue_max_bytes", "4096.0", "0 (no byte bound) or an"},
    {R"({"queue_max_bytes": null})", "queue_max_bytes", "null", "0 (no byte bound) or an"},
    {R"({"overflow": 1})", "overflow", "1", "one of \"block\", \"drop_newest\", \"drop_oldest\""},
    {R"({"block_timeout_ms": false})", "block_timeout_ms", "false", "an integer from 0 to 600000"},
    {R"({"batch_size": [1]})", "batch_size", "[1]", "an integer from 1 to 100000"},
    {R"({"retry": 5})", "retry", "5", "an object with keys initial_ms, max_ms"},
    {R"({"retry": {"initial_ms": "fast"}})", "retry.initial_ms", "\"fast\"",
     "an integer from 1 to 600000"},
    {R"({"retry": {"max_ms": 1.5}})", "retry.max_ms", "1.5", "an integer from 1 to 3600000"},
    {R"({"retry": {"multiplier": "2"}})", "retry.multiplier", "\"2\"", "a number from 1.0 to 10.0"},
    {R"({"retry": {"jitter": null}})", "retry.jitter", "null", "a number from 0.0 to 1.0"},
    {R"({"retry": {"max_attempts": 1.0}})", "retry.max_attempts", "1.0",
     "an integer from 0 to 2147483647"},
    {R"({"transport": "nats"})", "transport", "a value of type string", "an object"},
    {R"({"transport": []})", "transport", "a value of type array", "an object"},
};
INSTANTIATE_TEST_SUITE_P(WrongType, ConfigBadValue, testing::ValuesIn(kWrongTypes));

const BadValue kOutOfRange[] = {
    {R"({"url": ""})", "url", "\"\"", "a URL"},
    {R"({"url": "localhost:4222"})", "url", "\"localhost:4222\"", "a URL"},
    {R"({"url": "://host"})", "url", "\"://host\"", "a URL"},
    {R"({"url": "na ts://host"})", "url", "\"na ts://host\"", "a URL"},
    {R"({"url": "nats_x://host"})", "url", "\"nats_x://host\"", "a URL"},
    {R"({"app": ""})", "app", "\"\"", "a subject token"},
    {R"({"app": "my app"})", "app", "\"my app\"", "a subject token"},
    {R"({"app": "my.app"})", "app", "\"my.app\"", "a subject token"},
    {R"({"app": "*"})", "app", "\"*\"", "a subject token"},
    {R"({"prefix": ""})", "prefix", "\"\"", "a subject"},
    {R"({"prefix": "a..b"})", "prefix", "\"a..b\"", "a subject"},
    {R"({"prefix": "a.*"})", "prefix", "\"a.*\"", "a subject"},
    {R"({"prefix": ".a"})", "prefix", "\".a\"", "a subject"},
    {R"({"forward": ["a", ""]})", "forward[1]", "\"\"", "a pattern string"},
    {R"({"forward": ["sql.*x"]})", "forward[0]", "\"sql.*x\"", "a pattern string"},
    {R"({"forward": ["a.>.b"]})", "forward[0]", "\"a.>.b\"", "a pattern string"},
    {R"({"subscribe": ["a b"]})", "subscribe[0]", "\"a b\"", "a subject pattern string"},
    {R"({"subscribe": ["ok", ">.a"]})", "subscribe[1]", "\">.a\"", "a subject pattern string"},
    {R"({"subscribe": [""]})", "subscribe[0]", "\"\"", "a subject pattern string"},
    {R"({"group": "a.b"})", "group", "\"a.b\"", "an empty string or a subject token"},
    {R"({"group": "a b"})", "group", "\"a b\"", "an empty string or a subject token"},
    {R"({"queue_capacity": 0})", "queue_capacity", "0", "an integer from 1 to 10000000"},
    {R"({"queue_capacity": -1})", "queue_capacity", "-1", "an integer from 1 to 10000000"},
    {R"({"queue_capacity": 10000001})", "queue_capacity", "10000001",
     "an integer from 1 to 10000000"},
    {R"({"queue_capacity": 18446744073709551615})", "queue_capacity", "18446744073709551615",
     "an integer from 1 to 10000000"},
    {R"({"queue_capacity": -9223372036854775808})", "queue_capacity", "-9223372036854775808",
     "an integer from 1 to 10000000"},
    {R"({"queue_max_bytes": 1})", "queue_max_bytes", "1",
     "0 (no byte bound) or an integer from 4096 to 1099511627776"},
    {R"({"queue_max_bytes": -1})", "queue_max_bytes", "-1", "0 (no byte bound) or an"},
    {R"({"queue_max_bytes": 1099511627777})", "queue_max_bytes", "1099511627777",
     "0 (no byte bound) or an integer from 4096 to 1099511627776"},
    {R"({"queue_max_bytes": 18446744073709551615})", "queue_max_bytes", "18446744073709551615",
     "0 (no byte bound) or an"},
    {R"({"overflow": "drop"})", "overflow", "\"drop\"", "one of \"block\""},
    {R"({"overflow": "Block"})", "overflow", "\"Block\"", "one of \"block\""},
    {R"({"block_timeout_ms": -1})", "block_timeout_ms", "-1", "an integer from 0 to 600000"},
    {R"({"block_timeout_ms": 600001})", "block_timeout_ms", "600001",
     "an integer from 0 to 600000"},
    {R"({"batch_size": 0})", "batch_size", "0", "an integer from 1 to 100000"},
    {R"({"batch_size": 100001, "queue_capacity": 1000000})", "batch_size", "100001",
     "an integer from 1 to 100000"},
    {R"({"batch_size": 300, "queue_capacity": 200})", "batch_size", "300",
     "an integer from 1 to 100000 and at most queue_capacity (200)"},
    {R"({"retry": {"initial_ms": 0}})", "retry.initial_ms", "0", "an integer from 1 to 600000"},
    {R"({"retry": {"initial_ms": 600001, "max_ms": 3600000}})", "retry.initial_ms", "600001",
     "an integer from 1 to 600000"},
    {R"({"retry": {"max_ms": 3600001}})", "retry.max_ms", "3600001",
     "an integer from 1 to 3600000"},
    {R"({"retry": {"initial_ms": 100, "max_ms": 99}})", "retry.max_ms", "99",
     "an integer from 1 to 3600000 and at least retry.initial_ms (100)"},
    {R"({"retry": {"multiplier": 0.5}})", "retry.multiplier", "0.5", "a number from 1.0 to 10.0"},
    {R"({"retry": {"multiplier": 10.5}})", "retry.multiplier", "10.5", "a number from 1.0 to 10.0"},
    {R"({"retry": {"jitter": -0.1}})", "retry.jitter", "-0.1", "a number from 0.0 to 1.0"},
    {R"({"retry": {"jitter": 1.01}})", "retry.jitter", "1.01", "a number from 0.0 to 1.0"},
    {R"({"retry": {"max_attempts": -1}})", "retry.max_attempts", "-1",
     "an integer from 0 to 2147483647"},
    {R"({"retry": {"max_attempts": 2147483648}})", "retry.max_attempts", "2147483648",
     "an integer from 0 to 2147483647"},
    {R"({"redelivery": {"window_ms": -1}})", "redelivery.window_ms", "-1", "0 (the default"},
    {R"({"redelivery": {"window_ms": 86400001}})", "redelivery.window_ms", "86400001",
     "0 (the default: 2 minutes, or the transport's dedupe window if longer) or an integer from 1 to 86400000"},
    {R"({"redelivery": {"window_count": 10000001}})", "redelivery.window_count", "10000001",
     "0 (no suppression) or an integer from 1 to 10000000"},
};
INSTANTIATE_TEST_SUITE_P(OutOfRange, ConfigBadValue, testing::ValuesIn(kOutOfRange));

// The redelivery window (docs/bridge.md, "Redeliveries"): read, defaulted, validated by key.
TEST(ConfigRedelivery, ReadFromJsonWithDefaults) {
  const auto defaults = config_from_json(json::object());
  EXPECT_EQ(defaults.redelivery.window, std::chrono::milliseconds(0));  // 0: the default window
  EXPECT_EQ(defaults.redelivery.window_count, 65536u);
  const auto config = config_from_json({{"redelivery", {{"window_ms", 300000}, {"window_count", 10}}}});
  EXPECT_EQ(config.redelivery.window, std::chrono::milliseconds(300000));
  EXPECT_EQ(config.redelivery.window_count, 10u);
  EXPECT_EQ(config_from_json({{"redelivery", {{"window_count", 0}}}}).redelivery.window_count, 0u);
}

TEST(ConfigRedelivery, BadValuesNameTheKey) {
  EXPECT_NE(json_error({{"redelivery", {{"window_ms", "2m"}}}}).find("key \"redelivery.window_ms\""),
            std::string::npos);
  EXPECT_NE(json_error({{"redelivery", 5}}).find("key \"redelivery\": expected an object with keys window_ms, window_count"),
            std::string::npos);
  EXPECT_EQ(json_error({{"redelivery", {{"window", 5}}}}),
            "[notifications.config] unknown key \"redelivery.window\" (known keys of \"redelivery\": "
            "window_ms, window_count)");
  BridgeConfig config;
  config.redelivery.window_count = 10'000'001;
  try {
    config.validate();
    ADD_FAILURE() << "validate() accepted redelivery.window_count 10000001";
  } catch (const notifications::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("redelivery.window_count"), std::string::npos) << e.what();
  }
  config.redelivery.window_count = 1;
  config.redelivery.window = std::chrono::milliseconds(-5);
  try {
    config.validate();
    ADD_FAILURE() << "validate() accepted redelivery.window_ms -5";
  } catch (const notifications::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("redelivery.window_ms"), std::string::npos) << e.what();
  }
}

// "start": where subscriptions begin on transports that keep messages.
TEST(ConfigStart, ReadFromJsonAndShownBack) {
  using notifications::StartPosition;
  EXPECT_EQ(config_from_json(json::object()).start.kind, StartPosition::Kind::new_only);
  EXPECT_EQ(config_from_json({{"start", "all"}}).start.kind, StartPosition::Kind::all_retained);
  const auto timed = config_from_json({{"start", "2026-11-30T04:00:00Z"}}).start;
  ASSERT_EQ(timed.kind, StartPosition::Kind::from_time);
  EXPECT_EQ(std::chrono::system_clock::to_time_t(timed.time), 1'796'011'200);
  EXPECT_EQ(notifications::to_string(timed), "2026-11-30T04:00:00Z");
  const auto sequence = config_from_json({{"start", {{"sequence", 42}}}}).start;
  ASSERT_EQ(sequence.kind, StartPosition::Kind::from_sequence);
  EXPECT_EQ(sequence.sequence, 42u);
  EXPECT_EQ(notifications::to_string(sequence), "sequence 42");
}

TEST(ConfigErrors, ExampleMessagesReadAsDocumented) {
  EXPECT_EQ(json_error({{"retry", {{"initial_ms", "fast"}}}}),
            "[notifications.config] key \"retry.initial_ms\": expected an integer from 1 to "
            "600000, got \"fast\"");
  EXPECT_EQ(json_error({{"queue_capasity", 5}}),
            "[notifications.config] unknown key \"queue_capasity\" (known keys: url, app, prefix, "
            "forward, subscribe, group, start, queue_capacity, queue_max_bytes, overflow, "
            "block_timeout_ms, batch_size, retry, redelivery, durability, outbox, transport, "
            "name, redact)");
}

TEST(ConfigErrors, ProblemIsExplained) {
  EXPECT_NE(json_error({{"url", "localhost"}}).find("no \"://\""), std::string::npos);
  EXPECT_NE(json_error({{"url", "na ts://x"}}).find("the scheme has ' '"), std::string::npos);
  EXPECT_NE(json_error({{"prefix", "a..b"}}).find("token 2 is empty"), std::string::npos);
  EXPECT_NE(json_error({{"forward", {"sql.*x"}}}).find("whole token"), std::string::npos);
  EXPECT_NE(json_error({{"app", "a.b"}}).find("single token"), std::string::npos);
}

TEST(ConfigErrors, SubscribedSubjectIsPrefixDotPattern) {
  // Each part is valid, the whole is too long.
  const std::string prefix(200, 'p');
  const std::string pattern = std::string(60, 'q') + ".>";
  const std::string message = json_error({{"prefix", prefix}, {"subscribe", {pattern}}});
  EXPECT_NE(message.find("key \"subscribe[0]\""), std::string::npos) << message;
  EXPECT_NE(message.find("prefix + \".\" + pattern"), std::string::npos) << message;
  EXPECT_NE(message.find("bytes long"), std::string::npos) << message;
}

TEST(ConfigErrors, NotAnObjectNamesConfig) {
  for (const char* text : {"[]", "1", "\"x\"", "null", "true"}) {
    const std::string message = json_error(json::parse(text));
    EXPECT_EQ(message.rfind("[notifications.config] config: expected a JSON object, got ", 0), 0u)
        << message;
  }
}

TEST(ConfigErrors, UnknownKeysListTheKnownOnes) {
  EXPECT_NE(json_error({{"URL", "memory://"}}).find("unknown key \"URL\" (known keys: url,"),
            std::string::npos);
  const std::string nested = json_error({{"retry", {{"initial", 5}}}});
  EXPECT_EQ(nested,
            "[notifications.config] unknown key \"retry.initial\" (known keys of \"retry\": "
            "initial_ms, max_ms, multiplier, jitter, max_attempts)");
  // An unknown key is reported before a bad value elsewhere.
  EXPECT_NE(json_error({{"url", 1}, {"zzz", 1}}).find("unknown key \"zzz\""), std::string::npos);
  // Keys inside "transport" are the transport's business.
  EXPECT_NO_THROW(config_from_json({{"transport", {{"anything", {{"goes", 1}}}}}}));
}

TEST(ConfigErrors, LongValuesAreCut) {
  const std::string long_app(10000, 'x');
  const std::string message = json_error({{"app", long_app + " "}});
  EXPECT_LT(message.size(), 1000u) << message;
  EXPECT_NE(message.find("\"xxxx"), std::string::npos);
  EXPECT_NE(message.find("..."), std::string::npos);
  // A long unknown key is cut too.
  EXPECT_LT(json_error({{long_app, 1}}).size(), 1000u);
}

TEST(ConfigErrors, DeeplyNestedValueIsShownShortWithoutRecursingThroughIt) {
  std::string text = "{\"url\": ";
  constexpr int kDepth = 200000;
  text.append(kDepth, '[');
  text.append(kDepth, ']');
  text += "}";
  const std::string message = text_error(text);
  EXPECT_NE(message.find("key \"url\""), std::string::npos);
  std::string batch = "{\"batch_size\": ";
  batch.append(kDepth, '[');
  batch.append(kDepth, ']');
  batch += "}";
  const std::string batch_message = text_error(batch);
  EXPECT_NE(batch_message.find("got [[[["), std::string::npos) << batch_message.substr(0, 300);
  EXPECT_LT(batch_message.size(), 400u);
}

// ---- credentials never appear in messages ----

TEST(ConfigCredentials, UrlUserInfoIsRedacted) {
  const std::string message = json_error({{"url", "na ts://alice:s3cr3t@nats.example:4222"}});
  EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
  EXPECT_EQ(message.find("alice"), std::string::npos) << message;
  EXPECT_NE(message.find("na ts://***@nats.example:4222"), std::string::npos) << message;

  const std::string token = json_error({{"url", "n@ts://tok3n@host"}});
  EXPECT_EQ(token.find("tok3n"), std::string::npos) << token;

  const std::string schemeless = json_error({{"url", "alice:s3cr3t@nats.example"}});
  EXPECT_EQ(schemeless.find("s3cr3t"), std::string::npos) << schemeless;
  EXPECT_NE(schemeless.find("\"***@nats.example\""), std::string::npos) << schemeless;

  // Passwords holding URL delimiters are hidden whole.
  const std::string odd = json_error({{"url", "n ats://alice:pa/ss@w:rd@host/path"}});
  EXPECT_EQ(odd.find("ss@w"), std::string::npos) << odd;
  EXPECT_EQ(odd.find("pa/"), std::string::npos) << odd;
}

TEST(ConfigCredentials, RedactedInAnyShownValue) {
  for (const json& config : {
           json{{"url", {"nats://alice:s3cr3t@host"}}},
           json{{"url", {{"x", "alice:s3cr3t@host"}}}},
           json{{"app", "nats://alice:s3cr3t@host"}},
           json{{"prefix", "nats://alice:s3cr3t@host"}},
           json{{"group", "nats://alice:s3cr3t@host"}},
           json{{"forward", {"nats://alice:s3cr3t@host.*x"}}},
           json{{"subscribe", {"nats://alice:s3cr3t@host"}}},
           json{{"overflow", "nats://alice:s3cr3t@host"}},
           json{{"batch_size", {"nats://alice:s3cr3t@host"}}},
           json{{"retry", {{"initial_ms", {{"password", "s3cr3t"}}}}}},
           json{{"retry", {{"jitter", {{"nkey", "s3cr3t"}, {"seed", "s3cr3t"}}}}}},
           json{{"retry", {{"token", "s3cr3t"}}}},
           json{{"transport", "nats://alice:s3cr3t@host"}},
           json{{"transport", {{"password", "s3cr3t"}}}, {"zzz", 1}},
           json::array({"nats://alice:s3cr3t@host"}),
       }) {
    const std::string message = error_of([&] { config_from_json(config); });
    EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
  }
}

TEST(ConfigCredentials, RedactedInSyntaxErrors) {
  for (const std::string& text : {
           std::string(R"({"url": "nats://alice:s3cr3t@host)"),             // unterminated string
           std::string("{\"url\": \"nats://alice:s3cr3t\x01@host\"}"),      // control character
           std::string("{\"url\": \"nats://alice:s3cr3t\\x@host\"}"),       // bad escape
           std::string("{\"url\": \"nats://alice:s3cr3t\xff@host\"}"),      // invalid UTF-8
           std::string(R"({"url": "nats://alice:s3cr3t@host" "app": 1})"),  // missing comma
       }) {
    const std::string message = text_error(text);
    EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
    EXPECT_NE(message.find("invalid JSON at byte"), std::string::npos) << message;
  }
}

TEST(ConfigCredentials, ValidUrlWithCredentialsIsAccepted) {
  EXPECT_EQ(config_from_json({{"url", "nats://alice:s3cr3t@host:4222"}}).url,
            "nats://alice:s3cr3t@host:4222");
}

// ---- JSON text ----

TEST(ConfigText, SyntaxErrorNamesSourceAndPosition) {
  const std::string message = text_error("{\"url\": \"memory://\",\n}", "/etc/app/bus.json");
  EXPECT_EQ(message.rfind("[notifications.config] /etc/app/bus.json: invalid JSON at byte 22: ", 0),
            0u)
      << message;
  EXPECT_NE(message.find("line 2, column 1"), std::string::npos) << message;
  const std::string empty = text_error("");
  EXPECT_EQ(empty.rfind("[notifications.config] config: invalid JSON at byte 1: ", 0), 0u) << empty;
  EXPECT_NE(text_error("{} x").find("invalid JSON at byte 4"), std::string::npos);
}

TEST(ConfigText, SyntaxErrorKeepsWhatWasExpected) {
  const std::string message = text_error("{\"a\" 1}");
  EXPECT_NE(message.find("expected ':'"), std::string::npos) << message;
}

TEST(ConfigText, ExpectedTokenAfterALexerErrorIsKept) {
  const std::string message = text_error("{\"a\": 1, \"b\" \"unterminated");
  EXPECT_EQ(message.find("unterminated"), std::string::npos) << message;
  const std::string key = text_error("{\"a\x01\": 1}");
  EXPECT_NE(key.find("control character"), std::string::npos) << key;
  EXPECT_NE(key.find("; expected string literal"), std::string::npos) << key;
}

TEST(ConfigCredentials, InputThatMimicsTheExpectedSuffixIsNotShown) {
  const std::string message = text_error("{\"url\": \"x'; expected s3cr3t\x01\"}");
  EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
}

TEST(ConfigText, NumberOverflowIsAConfigError) {
  const std::string message = text_error(R"({"retry": {"jitter": 1e999}})");
  EXPECT_NE(message.find("config: invalid JSON"), std::string::npos) << message;
}

TEST(ConfigText, ValueErrorsNameTheSource) {
  EXPECT_EQ(text_error(R"({"batch_size": 0})", "bus.json"),
            "[notifications.config] bus.json: key \"batch_size\": expected an integer from 1 to "
            "100000, got 0");
}

// ---- validate() on a struct built in code ----

TEST(ConfigValidate, NamesFieldsLikeJsonKeys) {
  const auto bad = [](const std::function<void(BridgeConfig&)>& change) {
    BridgeConfig config;
    change(config);
    return validate_error(config);
  };
  const auto starts = [](const std::string& message, const std::string& key) {
    return message.rfind("[notifications.config] key \"" + key + "\": expected ", 0) == 0;
  };
  EXPECT_PRED2(starts, bad([](auto& c) { c.url = "nowhere"; }), "url");
  EXPECT_PRED2(starts, bad([](auto& c) { c.app = "a b"; }), "app");
  EXPECT_PRED2(starts, bad([](auto& c) { c.prefix = "a."; }), "prefix");
  EXPECT_PRED2(starts, bad([](auto& c) { c.forward = {"a", "b", "*x"}; }), "forward[2]");
  EXPECT_PRED2(starts, bad([](auto& c) { c.subscribe = {"a b"}; }), "subscribe[0]");
  EXPECT_PRED2(starts, bad([](auto& c) { c.group = "."; }), "group");
  EXPECT_PRED2(starts, bad([](auto& c) { c.queue_capacity = 0; }), "queue_capacity");
  EXPECT_PRED2(starts,
               bad([](auto& c) { c.queue_capacity = std::numeric_limits<std::size_t>::max(); }),
               "queue_capacity");
  EXPECT_PRED2(starts, bad([](auto& c) { c.queue_max_bytes = 4095; }), "queue_max_bytes");
  EXPECT_PRED2(starts, bad([](auto& c) { c.overflow = static_cast<OverflowPolicy>(9); }),
               "overflow");
  EXPECT_PRED2(starts, bad([](auto& c) { c.block_timeout = std::chrono::milliseconds(-5); }),
               "block_timeout_ms");
  EXPECT_PRED2(starts, bad([](auto& c) { c.batch_size = 0; }), "batch_size");
  EXPECT_PRED2(starts, bad([](auto& c) { c.queue_capacity = 10; }), "batch_size");
  EXPECT_PRED2(starts, bad([](auto& c) { c.retry.initial = std::chrono::milliseconds(0); }),
               "retry.initial_ms");
  EXPECT_PRED2(starts, bad([](auto& c) { c.retry.max = std::chrono::milliseconds(49); }),
               "retry.max_ms");
  EXPECT_PRED2(starts, bad([](auto& c) { c.retry.multiplier = 0.99; }), "retry.multiplier");
  EXPECT_PRED2(starts, bad([](auto& c) { c.retry.multiplier = std::nan(""); }), "retry.multiplier");
  EXPECT_PRED2(starts,
               bad([](auto& c) { c.retry.jitter = std::numeric_limits<double>::infinity(); }),
               "retry.jitter");
  EXPECT_PRED2(starts, bad([](auto& c) { c.retry.max_attempts = -1; }), "retry.max_attempts");
  EXPECT_PRED2(starts, bad([](auto& c) { c.transport = json::array(); }), "transport");
}

TEST(ConfigValidate, ShowsStructValues) {
  BridgeConfig config;
  config.overflow = static_cast<OverflowPolicy>(9);
  EXPECT_NE(validate_error(config).find("got OverflowPolicy(9)"), std::string::npos);
  config = BridgeConfig{};
  config.retry.multiplier = std::nan("");
  EXPECT_NE(validate_error(config).find("got nan"), std::string::npos);
  config = BridgeConfig{};
  config.queue_capacity = std::numeric_limits<std::size_t>::max();
  EXPECT_NE(validate_error(config).find("got 18446744073709551615"), std::string::npos);
  config = BridgeConfig{};
  config.batch_size = 100;
  config.queue_capacity = 50;
  EXPECT_EQ(validate_error(config),
            "[notifications.config] key \"batch_size\": expected an integer from 1 to 100000 and "
            "at most queue_capacity (50), got 100");
}

TEST(ConfigValidate, ReportsTheFirstBadFieldInDeclarationOrder) {
  BridgeConfig config;
  config.retry.jitter = 5;
  config.app = "";
  EXPECT_NE(validate_error(config).find("key \"app\""), std::string::npos);
}

TEST(ConfigValidate, SameMessageAsTheJsonForm) {
  BridgeConfig config;
  config.retry.initial = std::chrono::milliseconds(700000);
  EXPECT_EQ(validate_error(config), json_error({{"retry", {{"initial_ms", 700000}}}}));
  config = BridgeConfig{};
  config.forward = {"a.>.b"};
  EXPECT_EQ(validate_error(config), json_error({{"forward", {"a.>.b"}}}));
}

// ---- the environment ----

constexpr const char* kVariables[] = {
    "NOTIFICATIONS_CONFIG", "NOTIFICATIONS_URL",     "NOTIFICATIONS_APP",
    "NOTIFICATIONS_PREFIX", "NOTIFICATIONS_FORWARD", "NOTIFICATIONS_SUBSCRIBE",
    "NOTIFICATIONS_GROUP",
};

// Starts with every NOTIFICATIONS_* variable unset; restores them and removes the temp files.
class ConfigEnvironment : public testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVariables) {
      const char* value = std::getenv(name);
      saved_[name] = value ? std::optional<std::string>(value) : std::nullopt;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        setenv(name.c_str(), value->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
    for (const auto& path : files_) std::filesystem::remove(path);
  }

  // A fresh path in the temp directory, removed by TearDown.
  std::string temp_path(const std::string& suffix) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("test_config_" + std::to_string(getpid()) + "_" +
                       std::to_string(files_.size()) + suffix);
    std::filesystem::remove(path);
    files_.push_back(path);
    return path.string();
  }

  std::string write_file(const std::string& text) {
    const std::string path = temp_path(".json");
    std::ofstream(path) << text;
    return path;
  }

  static std::string env_error() {
    return error_of([] { config_from_environment(); });
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
  std::vector<std::filesystem::path> files_;
};

TEST_F(ConfigEnvironment, NothingSetGivesDefaults) { expect_defaults(config_from_environment()); }

TEST_F(ConfigEnvironment, FileIsRead) {
  setenv("NOTIFICATIONS_CONFIG",
         write_file(R"({"url": "mock://", "app": "file_app", "batch_size": 9})").c_str(), 1);
  const auto config = config_from_environment();
  EXPECT_EQ(config.url, "mock://");
  EXPECT_EQ(config.app, "file_app");
  EXPECT_EQ(config.batch_size, 9u);
}

TEST_F(ConfigEnvironment, VariablesOverrideTheFile) {
  setenv("NOTIFICATIONS_CONFIG",
         write_file(R"({
    "url": "mock://", "app": "file_app", "prefix": "file", "forward": ["f.*"],
    "subscribe": ["f.>"], "group": "file_group", "queue_capacity": 777,
    "queue_max_bytes": 8192
  })")
             .c_str(),
         1);
  setenv("NOTIFICATIONS_URL", "nats://env:4222", 1);
  setenv("NOTIFICATIONS_APP", "env_app", 1);
  setenv("NOTIFICATIONS_PREFIX", "env.prefix", 1);
  setenv("NOTIFICATIONS_FORWARD", " order.* ,sql.>,\tpayment.captured ", 1);
  setenv("NOTIFICATIONS_SUBSCRIBE", "a.*", 1);
  setenv("NOTIFICATIONS_GROUP", "env_group", 1);
  const auto config = config_from_environment();
  EXPECT_EQ(config.url, "nats://env:4222");
  EXPECT_EQ(config.app, "env_app");
  EXPECT_EQ(config.prefix, "env.prefix");
  EXPECT_EQ(config.forward, (std::vector<std::string>{"order.*", "sql.>", "payment.captured"}));
  EXPECT_EQ(config.subscribe, std::vector<std::string>{"a.*"});
  EXPECT_EQ(config.group, "env_group");
  EXPECT_EQ(config.queue_capacity, 777u);  // from the file: no variable for it
  EXPECT_EQ(config.queue_max_bytes, 8192u);  // likewise
}

TEST_F(ConfigEnvironment, VariablesWithoutAFile) {
  setenv("NOTIFICATIONS_APP", "only_env", 1);
  const auto config = config_from_environment();
  EXPECT_EQ(config.app, "only_env");
  EXPECT_EQ(config.url, "memory://");
}

TEST_F(ConfigEnvironment, EmptyGroupClearsTheFileGroup) {
  setenv("NOTIFICATIONS_CONFIG", write_file(R"({"group": "workers"})").c_str(), 1);
  setenv("NOTIFICATIONS_GROUP", "", 1);
  EXPECT_EQ(config_from_environment().group, "");
}

TEST_F(ConfigEnvironment, MissingFileNamesPathAndReason) {
  const std::string path = "/nonexistent/dir/notifications.json";
  setenv("NOTIFICATIONS_CONFIG", path.c_str(), 1);
  const std::string message = env_error();
  EXPECT_NE(message.find("NOTIFICATIONS_CONFIG"), std::string::npos) << message;
  EXPECT_NE(message.find("\"" + path + "\""), std::string::npos) << message;
  EXPECT_NE(message.find("No such file or directory"), std::string::npos) << message;
}

// config_from_environment() with NOTIFICATIONS_CONFIG=`path`, on another thread so that a
// regression (a read that blocks) fails the test instead of hanging it; the message it threw.
std::string env_error_within_bound(const std::string& path) {
  setenv("NOTIFICATIONS_CONFIG", path.c_str(), 1);
  auto result = std::async(std::launch::async, [] {
    try {
      config_from_environment();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  });
  if (result.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    ADD_FAILURE() << "config_from_environment() still blocked after 30 s on " << path;
    // Unblock a reader waiting in open() or read() of a FIFO: a writer that appears and goes.
    const int fd = open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) close(fd);
  }
  return result.get();
}

// "[notifications.config] environment variable NOTIFICATIONS_CONFIG: "<path>" is <what>, ..."
void expect_not_regular(const std::string& message, const std::string& path,
                        const std::string& what) {
  EXPECT_EQ(message.rfind("[notifications.config] environment variable NOTIFICATIONS_CONFIG: \"" +
                              path + "\" is " + what + ", not a regular file",
                          0),
            0u)
      << message;
}

TEST_F(ConfigEnvironment, DirectoryIsUnreadable) {
  const std::string path = std::filesystem::temp_directory_path().string();
  expect_not_regular(env_error_within_bound(path), path, "a directory");
}

TEST_F(ConfigEnvironment, FifoIsRefusedWithoutWaitingForAWriter) {
  const std::string path = temp_path(".fifo");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
  expect_not_regular(env_error_within_bound(path), path, "a FIFO");
}

TEST_F(ConfigEnvironment, CharacterDevicesAreRefused) {
  for (const std::string path : {"/dev/zero", "/dev/null"}) {
    expect_not_regular(env_error_within_bound(path), path, "a character device");
  }
}

TEST_F(ConfigEnvironment, SocketIsRefused) {
  const std::string path = temp_path(".sock");
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof address.sun_path);
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address), 0)
      << std::strerror(errno);
  const std::string message = env_error_within_bound(path);
  close(fd);
  expect_not_regular(message, path, "a socket");
}

TEST_F(ConfigEnvironment, SymlinkToARegularFileIsRead) {
  const std::string target = write_file(R"({"app": "linked"})");
  const std::string link = temp_path(".link");
  std::filesystem::create_symlink(target, link);
  setenv("NOTIFICATIONS_CONFIG", link.c_str(), 1);
  EXPECT_EQ(config_from_environment().app, "linked");
}

TEST_F(ConfigEnvironment, EmptyConfigVariableIsAnError) {
  setenv("NOTIFICATIONS_CONFIG", "", 1);
  EXPECT_NE(env_error().find("environment variable NOTIFICATIONS_CONFIG is empty"),
            std::string::npos);
}

TEST_F(ConfigEnvironment, LargeFileIsRefused) {
  const std::string path = write_file("");
  std::filesystem::resize_file(path, 16 * 1024 * 1024 + 1);  // sparse: zeros, one past the limit
  setenv("NOTIFICATIONS_CONFIG", path.c_str(), 1);
  const std::string message = env_error();
  EXPECT_NE(message.find("\"" + path + "\" is larger than 16777216 bytes"), std::string::npos)
      << message;
}

TEST_F(ConfigEnvironment, FileAtTheSizeLimitIsRead) {
  const std::string path = write_file(R"({"app": "big"})");
  std::filesystem::resize_file(path, 16 * 1024 * 1024);
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(14);
    file << std::string(16 * 1024 * 1024 - 14, ' ');  // JSON whitespace up to the limit
  }
  setenv("NOTIFICATIONS_CONFIG", path.c_str(), 1);
  EXPECT_EQ(config_from_environment().app, "big");
}

TEST_F(ConfigEnvironment, FileErrorsNameTheFile) {
  const std::string path = write_file("{\"url\": \"mock://\",}");
  setenv("NOTIFICATIONS_CONFIG", path.c_str(), 1);
  EXPECT_NE(env_error().find(path + ": invalid JSON at byte 19"), std::string::npos);
  const std::string bad_value = write_file(R"({"overflow": "sometimes"})");
  setenv("NOTIFICATIONS_CONFIG", bad_value.c_str(), 1);
  EXPECT_NE(env_error().find(bad_value + ": key \"overflow\""), std::string::npos);
}

TEST_F(ConfigEnvironment, BadVariablesAreNamed) {
  setenv("NOTIFICATIONS_FORWARD", "order.*, sql.*x", 1);
  std::string message = env_error();
  EXPECT_EQ(message.rfind("[notifications.config] environment variable NOTIFICATIONS_FORWARD: "
                          "item 2: expected a pattern string",
                          0),
            0u)
      << message;
  unsetenv("NOTIFICATIONS_FORWARD");

  setenv("NOTIFICATIONS_SUBSCRIBE", "a,, b", 1);
  message = env_error();
  EXPECT_EQ(message.rfind("[notifications.config] environment variable NOTIFICATIONS_SUBSCRIBE: "
                          "item 2 is empty",
                          0),
            0u)
      << message;
  setenv("NOTIFICATIONS_SUBSCRIBE", "", 1);
  EXPECT_NE(env_error().find("NOTIFICATIONS_SUBSCRIBE: item 1 is empty"), std::string::npos);
  setenv("NOTIFICATIONS_SUBSCRIBE", "a,", 1);
  EXPECT_NE(env_error().find("NOTIFICATIONS_SUBSCRIBE: item 2 is empty"), std::string::npos);
  setenv("NOTIFICATIONS_SUBSCRIBE", "a b", 1);
  EXPECT_NE(env_error().find("NOTIFICATIONS_SUBSCRIBE: item 1: expected a subject pattern"),
            std::string::npos);
  unsetenv("NOTIFICATIONS_SUBSCRIBE");

  for (const auto& [name, value] : std::map<std::string, std::string>{
           {"NOTIFICATIONS_URL", "nowhere"},
           {"NOTIFICATIONS_APP", "a.b"},
           {"NOTIFICATIONS_PREFIX", "a b"},
           {"NOTIFICATIONS_GROUP", "*"},
       }) {
    setenv(name.c_str(), value.c_str(), 1);
    message = env_error();
    EXPECT_EQ(
        message.rfind("[notifications.config] environment variable " + name + ": expected ", 0), 0u)
        << message;
    unsetenv(name.c_str());
  }
}

// `count` comma-separated patterns "p0,p1,...".
std::string pattern_list(std::size_t count) {
  std::string out;
  for (std::size_t i = 0; i < count; ++i) out += (i == 0 ? "p" : ",p") + std::to_string(i);
  return out;
}

TEST_F(ConfigEnvironment, ListVariablesAreBounded) {
  setenv("NOTIFICATIONS_FORWARD", pattern_list(1024).c_str(), 1);
  setenv("NOTIFICATIONS_SUBSCRIBE", pattern_list(1024).c_str(), 1);
  const auto config = config_from_environment();
  EXPECT_EQ(config.forward.size(), 1024u);
  EXPECT_EQ(config.subscribe.size(), 1024u);

  setenv("NOTIFICATIONS_FORWARD", pattern_list(1025).c_str(), 1);
  EXPECT_EQ(env_error(),
            "[notifications.config] environment variable NOTIFICATIONS_FORWARD: expected at most "
            "1024 comma-separated patterns, got 1025");
  setenv("NOTIFICATIONS_FORWARD", "a", 1);
  setenv("NOTIFICATIONS_SUBSCRIBE", pattern_list(1025).c_str(), 1);
  EXPECT_EQ(env_error(),
            "[notifications.config] environment variable NOTIFICATIONS_SUBSCRIBE: expected at "
            "most 1024 comma-separated subject patterns, got 1025");
}

TEST_F(ConfigEnvironment, ListVariableIsCountedBeforeItsItems) {
  // 200000 empty items: the count is reported, not "item 1 is empty".
  setenv("NOTIFICATIONS_FORWARD", std::string(199999, ',').c_str(), 1);
  EXPECT_EQ(env_error(),
            "[notifications.config] environment variable NOTIFICATIONS_FORWARD: expected at most "
            "1024 comma-separated patterns, got 200000");
}

TEST_F(ConfigEnvironment, LongForwardItemIsRefused) {
  setenv("NOTIFICATIONS_FORWARD", ("a, " + std::string(1025, 'b') + " ,c").c_str(), 1);
  const std::string message = env_error();
  EXPECT_EQ(message.rfind("[notifications.config] environment variable NOTIFICATIONS_FORWARD: "
                          "item 2: expected a pattern string",
                          0),
            0u)
      << message;
  EXPECT_NE(message.find("1025 bytes long (at most 1024)"), std::string::npos) << message;
}

TEST_F(ConfigEnvironment, EmptyTokensInListVariablesAreRefused) {
  setenv("NOTIFICATIONS_FORWARD", "a, order..placed", 1);
  std::string message = env_error();
  EXPECT_EQ(message.rfind("[notifications.config] environment variable NOTIFICATIONS_FORWARD: "
                          "item 2: expected a pattern string",
                          0),
            0u)
      << message;
  EXPECT_NE(message.find("got \"order..placed\": token 2 is empty"), std::string::npos) << message;
  unsetenv("NOTIFICATIONS_FORWARD");
  setenv("NOTIFICATIONS_SUBSCRIBE", "a,b.", 1);
  message = env_error();
  EXPECT_EQ(message.rfind("[notifications.config] environment variable NOTIFICATIONS_SUBSCRIBE: "
                          "item 2: expected a subject pattern string",
                          0),
            0u)
      << message;
  EXPECT_NE(message.find("got \"b.\": token 2 is empty"), std::string::npos) << message;
}

TEST_F(ConfigEnvironment, SubscribeIsCheckedAgainstTheFinalPrefix) {
  setenv("NOTIFICATIONS_PREFIX", std::string(250, 'p').c_str(), 1);
  setenv("NOTIFICATIONS_SUBSCRIBE", "abc.>", 1);
  EXPECT_NE(env_error().find("NOTIFICATIONS_SUBSCRIBE: item 1"), std::string::npos);
}

TEST_F(ConfigEnvironment, UrlCredentialsAreRedacted) {
  setenv("NOTIFICATIONS_URL", "na ts://alice:s3cr3t@host", 1);
  const std::string message = env_error();
  EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
  EXPECT_NE(message.find("NOTIFICATIONS_URL"), std::string::npos) << message;
}

}  // namespace
