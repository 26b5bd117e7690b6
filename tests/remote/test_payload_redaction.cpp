// Payload redaction (BridgeConfig::redact, remote/payload_redaction.hpp): the rules' syntax and
// errors, the matcher, and the proof that a redacted value never leaves the process: not on the
// wire, not in the outbox file, not in a log line (at debug level), not in health().
// Every wait is bounded; nothing asserts speed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/context.hpp"
#include "notifications/config.hpp"
#include "notifications/logging.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "notifications/transports/sqlite.hpp"
#include "remote/bridge_test_support.hpp"
#include "remote/payload_redaction.hpp"
#include "wait.hpp"

namespace n = notifications;
namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;
using test_support::wait_until;

namespace {

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// what() of the ConfigError `action` throws; fails the test when it throws nothing.
template <typename Action>
std::string error_of(Action action) {
  try {
    action();
  } catch (const n::ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError";
  return {};
}

json redacted(const std::vector<std::string>& rules, const json& payload) {
  const n::detail::Redactor redactor(rules);
  return redactor.redacted(payload).value_or(payload);
}

const json kR = std::string(n::detail::kRedacted);

// ---- the matcher ----

TEST(PayloadRedactor, APlainRuleMatchesTheKeyAtAnyDepthAndInArrays) {
  const json payload = {{"password", "a"},
                        {"user", {{"password", "b"}, {"name", "ann"}}},
                        {"list", json::array({json{{"password", "c"}}, json{{"x", 1}}, 7})}};
  const json expected = {{"password", kR},
                         {"user", {{"password", kR}, {"name", "ann"}}},
                         {"list", json::array({json{{"password", kR}}, json{{"x", 1}}, 7})}};
  EXPECT_EQ(redacted({"password"}, payload), expected);
}

TEST(PayloadRedactor, LettersMatchIgnoringCase) {
  EXPECT_EQ(redacted({"PassWord"}, {{"PASSWORD", 1}, {"password", 2}, {"passwords", 3}}),
            (json{{"PASSWORD", kR}, {"password", kR}, {"passwords", 3}}));
}

TEST(PayloadRedactor, AStarMatchesAnyRunWithinOneKey) {
  const json payload = {{"access_token", 1}, {"TokenId", 2}, {"token", 3}, {"tok", 4}, {"a", {{"my_token_x", 5}}}};
  EXPECT_EQ(redacted({"*token*"}, payload),
            (json{{"access_token", kR}, {"TokenId", kR}, {"token", kR}, {"tok", 4}, {"a", {{"my_token_x", kR}}}}));
  EXPECT_EQ(redacted({"api_*"}, {{"api_key", 1}, {"api", 2}, {"xapi_key", 3}}),
            (json{{"api_key", kR}, {"api", 2}, {"xapi_key", 3}}));
  EXPECT_EQ(redacted({"a*b*c"}, {{"abc", 1}, {"aXbYc", 2}, {"acb", 3}, {"abcabd", 4}, {"ab_b_cc", 5}}),
            (json{{"abc", kR}, {"aXbYc", kR}, {"acb", 3}, {"abcabd", 4}, {"ab_b_cc", kR}}));
}

TEST(PayloadRedactor, ADottedRuleMatchesTheEndOfAKeyPath) {
  const json payload = {{"number", 1},
                        {"card", {{"number", 2}, {"brand", "visa"}}},
                        {"order", {{"card", {{"number", 3}}}}},
                        {"cards", {{"number", 4}}},
                        {"card_list", {{"card", json::array({json{{"number", 5}}})}}}};
  const json expected = {{"number", 1},
                         {"card", {{"number", kR}, {"brand", "visa"}}},
                         {"order", {{"card", {{"number", kR}}}}},
                         {"cards", {{"number", 4}}},
                         {"card_list", {{"card", json::array({json{{"number", kR}}})}}}};
  EXPECT_EQ(redacted({"card.number"}, payload), expected);
  // Each segment may have stars.
  EXPECT_EQ(redacted({"*.secret"}, {{"secret", 1}, {"a", {{"secret", 2}}}}), (json{{"secret", 1}, {"a", {{"secret", kR}}}}));
}

TEST(PayloadRedactor, AMatchedValueIsReplacedWholeWhateverItsType) {
  const json payload = {{"s", {{"deep", "x"}, {"list", {1, 2}}}}, {"l", {1, 2}}, {"n", 1.5}, {"z", nullptr}, {"b", true}};
  EXPECT_EQ(redacted({"s", "l", "n", "z", "b"}, payload), (json{{"s", kR}, {"l", kR}, {"n", kR}, {"z", kR}, {"b", kR}}));
}

TEST(PayloadRedactor, NoMatchMeansNoCopyAndScalarsHaveNoKeys) {
  const n::detail::Redactor redactor({"password", "card.number"});
  const json payload = {{"user", "ann"}, {"card", {{"brand", "visa"}}}, {"number", 1}, {"list", {json{{"x", 1}}}}};
  EXPECT_FALSE(redactor.matches(payload));
  EXPECT_FALSE(redactor.redacted(payload).has_value());
  for (const json& scalar : {json("password"), json(1), json(nullptr), json::array({"password"})}) {
    EXPECT_FALSE(redactor.redacted(scalar).has_value()) << scalar.dump();
  }
  const n::detail::Redactor none({});
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(none.matches({{"password", 1}}));
  json copy = {{"password", 1}};
  EXPECT_EQ(redactor.redact(copy), 1u);
  EXPECT_EQ(copy, (json{{"password", kR}}));
}

TEST(PayloadRedactor, RuleProblemsQuoteNothingOfTheRule) {
  EXPECT_EQ(n::detail::redact_rule_problem("card.number"), "");
  EXPECT_EQ(n::detail::redact_rule_problem("*Tok-en_9*"), "");
  EXPECT_EQ(n::detail::redact_rule_problem(""), "it is empty");
  EXPECT_TRUE(has(n::detail::redact_rule_problem("a..b"), "segment 2 is empty"));
  EXPECT_TRUE(has(n::detail::redact_rule_problem(".a"), "segment 1 is empty"));
  EXPECT_TRUE(has(n::detail::redact_rule_problem("a."), "segment 2 is empty"));
  EXPECT_TRUE(has(n::detail::redact_rule_problem("pass word"), "' ' at byte 5"));
  EXPECT_TRUE(has(n::detail::redact_rule_problem("caf\xc3\xa9"), "byte 0xc3 at byte 4"));
  EXPECT_TRUE(has(n::detail::redact_rule_problem(std::string(257, 'a')), "257 bytes long (at most 256)"));
}

// ---- configuration ----

TEST(RedactConfig, IsReadAndDefaultsToNothing) {
  EXPECT_TRUE(n::config_from_json(json::object()).redact.empty());
  EXPECT_EQ(n::config_from_json({{"redact", {"password", "card.number", "*token*"}}}).redact,
            (std::vector<std::string>{"password", "card.number", "*token*"}));
}

TEST(RedactConfig, ErrorsNameTheKeyPathAndTheRule) {
  std::string message = error_of([] { n::config_from_json({{"redact", "password"}}); });
  EXPECT_TRUE(has(message, "key \"redact\": expected an array of redaction rule strings")) << message;
  message = error_of([] { n::config_from_json({{"redact", {"ok", 5}}}); });
  EXPECT_TRUE(has(message, "key \"redact[1]\"")) << message;
  message = error_of([] { n::config_from_json({{"redact", {"ok", "pass word"}}}); });
  EXPECT_TRUE(has(message, "key \"redact[1]\"")) << message;
  EXPECT_TRUE(has(message, "\"pass word\"")) << message;
  EXPECT_TRUE(has(message, "' ' at byte 5")) << message;
  message = error_of([] { n::config_from_json({{"redact", {""}}}); });
  EXPECT_TRUE(has(message, "key \"redact[0]\"")) << message;
  EXPECT_TRUE(has(message, "it is empty")) << message;
  message = error_of([] { n::config_from_json({{"redact", json(std::vector<std::string>(257, "a"))}}); });
  EXPECT_TRUE(has(message, "key \"redact\": expected at most 256 redaction rules, got 257")) << message;
}

TEST(RedactConfig, RoutesTakeTheDefaultsAndNameTheRoute) {
  const auto routes = n::routes_from_json({{"redact", {"password"}},
                                           {"routes", {json{{"name", "a"}}, json{{"name", "b"}, {"redact", {"pin"}}}}}});
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].redact, (std::vector<std::string>{"password"}));
  EXPECT_EQ(routes[1].redact, (std::vector<std::string>{"pin"}));  // replaces the default list
  const std::string message = error_of([] {
    n::routes_from_json({{"routes", {json{{"name", "a"}}, json{{"name", "b"}, {"redact", {"ok", "a..b"}}}}}});
  });
  EXPECT_TRUE(has(message, "key \"routes[1].redact[1]\"")) << message;
  EXPECT_TRUE(has(message, "segment 2 is empty")) << message;
  const std::string top = error_of([] { n::routes_from_json({{"redact", {"x y"}}, {"routes", {json::object()}}}); });
  EXPECT_TRUE(has(top, "key \"redact[0]\"")) << top;
}

TEST(RedactConfig, ValidateChecksTheStruct) {
  n::BridgeConfig config;
  config.redact = {"password", "bad rule"};
  const std::string message = error_of([&] { config.validate(); });
  EXPECT_TRUE(has(message, "key \"redact[1]\"")) << message;
  config.redact = std::vector<std::string>(257, "a");
  EXPECT_TRUE(has(error_of([&] { config.validate(); }), "at most 256 redaction rules"));
  config.redact = {"password"};
  config.validate();
}

// Sets an environment variable for its lifetime.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

TEST(RedactConfig, TheEnvironmentReplacesTheList) {
  {
    const ScopedEnv env("NOTIFICATIONS_REDACT", "password, card.number ,*token*");
    EXPECT_EQ(n::config_from_environment().redact, (std::vector<std::string>{"password", "card.number", "*token*"}));
  }
  {
    const ScopedEnv env("NOTIFICATIONS_REDACT", "password,a b");
    const std::string message = error_of([] { n::config_from_environment(); });
    EXPECT_TRUE(has(message, "environment variable NOTIFICATIONS_REDACT: item 2")) << message;
  }
  const ScopedEnv env("NOTIFICATIONS_REDACT", "password");
  const std::vector<std::string> unknown = n::unknown_environment_variables();
  EXPECT_EQ(std::find(unknown.begin(), unknown.end(), "NOTIFICATIONS_REDACT"), unknown.end());
}

// ---- end to end ----

// Every library line at debug level, for the life of the capture.
class LogCapture {
 public:
  LogCapture() : lines_(std::make_shared<Lines>()) {
    n::set_log_level(n::LogLevel::debug);
    n::set_log_handler([lines = lines_](n::LogLevel, std::string_view message) {
      std::lock_guard lock(lines->mutex);
      lines->text.emplace_back(message);
    });
  }
  ~LogCapture() {
    n::set_log_handler({});
    n::set_log_level(n::LogLevel::info);
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  std::vector<std::string> lines() const {
    std::lock_guard lock(lines_->mutex);
    return lines_->text;
  }

 private:
  struct Lines {
    std::mutex mutex;
    std::vector<std::string> text;
  };
  std::shared_ptr<Lines> lines_;
};

// A fresh folder, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> next{0};
    path_ = fs::temp_directory_path() /
            ("notifications-redact-" + std::to_string(::getpid()) + "-" + std::to_string(next.fetch_add(1)));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// The raw bytes of `path`; empty when it does not exist.
std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every message a raw subscriber of the broker saw: what went over the wire.
struct Wire {
  std::mutex mutex;
  std::vector<n::Message> messages;
  std::size_t size() {
    std::lock_guard lock(mutex);
    return messages.size();
  }
  std::string all_text() {
    std::lock_guard lock(mutex);
    std::string text;
    for (const n::Message& m : messages) {
      text += m.subject + "\n" + m.id + "\n" + m.body + "\n";
      for (const auto& [key, value] : m.headers) text += key + ": " + value + "\n";
    }
    return text;
  }
};

// Not in the source of any value below except where it is a secret.
constexpr const char* kMarker = "s3cr3t-m4rk3r";
std::string secret(const std::string& which) { return std::string(kMarker) + "-" + which; }

json secret_payload() {
  return {{"user", "ann"},
          {"Password", secret("password")},
          {"card", {{"number", secret("card")}, {"brand", "visa"}}},
          {"items", json::array({json{{"sku", "x-1"}, {"access_token", secret("token")}}})},
          {"auth", {{"password", {{"nested", secret("object")}}}}}};
}

const std::vector<std::string> kRules{"password", "card.number", "*token*"};

void expect_no_secret(const std::string& where, const std::string& text) {
  EXPECT_FALSE(has(text, kMarker)) << "a redacted value reached " << where << ": " << text.substr(0, 2000);
}

class RedactedEndToEnd : public ::testing::TestWithParam<n::Durability> {};

TEST_P(RedactedEndToEnd, ASecretNeverReachesTheWireTheOutboxTheLogOrHealth) {
  const LogCapture log;
  TempDir dir;
  const std::string broker = test_support::unique_broker("redact");
  const std::string db = dir.file("outbox.db");

  // The wire: a raw subscriber of the broker.
  auto wire = std::make_shared<Wire>();
  auto raw = n::make_memory_transport({.broker = broker, .inline_delivery = true});
  raw->start();
  raw->subscribe(">", n::DeliveryOptions{}, [wire](n::Delivery&& delivery) {
    std::lock_guard lock(wire->mutex);
    wire->messages.push_back(std::move(delivery.message));
  });

  // Before the bridges: an early return of a failed ASSERT shuts the bridges down first.
  std::mutex received_mutex;
  std::vector<json> received;
  std::vector<json> received_context_and_tags;
  n::Notifier sender_notifier;
  n::BridgeConfig sender_config = test_support::config_for("redact-a");
  sender_config.redact = kRules;
  sender_config.durability = GetParam();
  sender_config.outbox.path = db;
  sender_config.subscribe = {"nothing"};
  n::Bridge sender(sender_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = true}),
                   sender_config);

  n::Notifier receiver_notifier;
  n::BridgeConfig receiver_config = test_support::config_for("redact-b");
  receiver_config.redact = kRules;
  receiver_config.forward = {"nothing"};
  n::Bridge receiver(receiver_notifier, n::make_memory_transport({.broker = broker, .inline_delivery = true}),
                     receiver_config);
  auto subscription = receiver_notifier.subscribe("order.placed", [&](const n::Event& event) {
    std::lock_guard lock(received_mutex);
    received.push_back(event.payload());
    received_context_and_tags.push_back(json{{"context", event.context()}, {"tags", event.tags()}});
  });
  sender.start();
  receiver.start();

  // Local subscribers see the payload as given.
  std::vector<json> local;
  auto local_subscription = sender_notifier.subscribe("order.placed", [&](const n::Event& event) {
    local.push_back(event.payload());
  });
  constexpr int kEvents = 5;
  for (int i = 0; i < kEvents; ++i) {
    // The rules apply to the context and tags the event carries too.
    const n::ContextScope context({{"request_id", "r-1"}, {"password", secret("context")}});
    const n::TagScope tags({{"checkout", true}, {"session_token", secret("tag")}});
    sender_notifier.instrument("order.placed", secret_payload());
  }
  ASSERT_EQ(local.size(), static_cast<std::size_t>(kEvents));
  EXPECT_EQ(local[0], secret_payload());

  ASSERT_TRUE(sender.flush(10s));
  ASSERT_TRUE(receiver.wait_delivered(10s));
  ASSERT_TRUE(wait_until([&] { return wire->size() >= kEvents; }, 10s));
  // The file while the bridge still has it open (its -wal holds the pages written).
  const std::string db_open = bytes_of(db) + bytes_of(db + "-wal");

  // A malformed message with a secret, to the receiver: its log line quotes the body.
  n::Message malformed;
  malformed.subject = "test.order.placed";
  malformed.body = json{{"not_an_envelope", true}, {"password", secret("malformed")}}.dump();
  malformed.headers = {{"Content-Type", "application/json"}};
  ASSERT_EQ(raw->publish(std::span<const n::Message>(&malformed, 1)).published, 1u);
  ASSERT_TRUE(receiver.wait_delivered(10s));

  const std::string health = sender.health().dump() + receiver.health().dump();
  sender.shutdown(5s);
  receiver.shutdown(5s);
  raw->stop(std::chrono::steady_clock::now() + 5s);

  {
    std::lock_guard lock(received_mutex);
    ASSERT_EQ(received.size(), static_cast<std::size_t>(kEvents));
    const json expected = {{"user", "ann"},
                           {"Password", kR},
                           {"card", {{"number", kR}, {"brand", "visa"}}},
                           {"items", json::array({json{{"sku", "x-1"}, {"access_token", kR}}})},
                           {"auth", {{"password", kR}}}};
    for (const json& payload : received) EXPECT_EQ(payload, expected);
    const json expected_context_and_tags = {{"context", {{"request_id", "r-1"}, {"password", kR}}},
                                            {"tags", {{"checkout", true}, {"session_token", kR}}}};
    for (const json& both : received_context_and_tags) EXPECT_EQ(both, expected_context_and_tags);
  }
  // The wire saw the events themselves (and the malformed message, which the test sent).
  std::string wire_text = wire->all_text();
  const std::size_t malformed_at = wire_text.find(malformed.body);
  ASSERT_NE(malformed_at, std::string::npos);
  wire_text.erase(malformed_at, malformed.body.size());
  EXPECT_TRUE(has(wire_text, "\"brand\":\"visa\"")) << wire_text.substr(0, 500);
  expect_no_secret("the wire", wire_text);

  ASSERT_FALSE(db_open.empty()) << "no outbox file at " << db;
  expect_no_secret("the outbox file (open)", db_open);
  expect_no_secret("the outbox file (closed)", bytes_of(db) + bytes_of(db + "-wal"));
  expect_no_secret("health()", health);

  const std::vector<std::string> lines = log.lines();
  bool malformed_logged = false;
  for (const std::string& line : lines) {
    expect_no_secret("a log line", line);
    if (has(line, "malformed message") && has(line, "\"password\":\"[REDACTED]\"")) malformed_logged = true;
  }
  EXPECT_TRUE(malformed_logged) << "the malformed message's line should quote its body, redacted";
}

INSTANTIATE_TEST_SUITE_P(Durabilities, RedactedEndToEnd, ::testing::Values(n::Durability::async, n::Durability::sync),
                         [](const auto& info) { return n::to_string(info.param); });

// sqlite:// keeps every message in its file: the file is the wire.
TEST(RedactedOverSqlite, TheBusFileNeverHoldsTheSecret) {
  const LogCapture log;
  TempDir dir;
  const std::string bus = dir.file("bus.db");
  n::Notifier sender_notifier;
  n::BridgeConfig sender_config = test_support::config_for("redact-sa");
  sender_config.redact = kRules;
  sender_config.durability = n::Durability::async;
  sender_config.outbox.path = dir.file("outbox.db");
  sender_config.subscribe = {"nothing"};
  n::Bridge sender(sender_notifier, n::make_sqlite_transport({.path = bus}), sender_config);
  n::Notifier receiver_notifier;
  n::BridgeConfig receiver_config = test_support::config_for("redact-sb");
  receiver_config.forward = {"nothing"};
  n::Bridge receiver(receiver_notifier, n::make_sqlite_transport({.path = bus}), receiver_config);
  std::mutex received_mutex;
  std::vector<json> received;
  std::vector<json> received_context_and_tags;
  auto subscription = receiver_notifier.subscribe("order.placed", [&](const n::Event& event) {
    std::lock_guard lock(received_mutex);
    received.push_back(event.payload());
    received_context_and_tags.push_back(json{{"context", event.context()}, {"tags", event.tags()}});
  });
  receiver.start();
  sender.start();
  constexpr int kEvents = 3;
  for (int i = 0; i < kEvents; ++i) {
    // The rules apply to the context and tags the event carries too.
    const n::ContextScope context({{"request_id", "r-1"}, {"password", secret("context")}});
    const n::TagScope tags({{"checkout", true}, {"session_token", secret("tag")}});
    sender_notifier.instrument("order.placed", secret_payload());
  }
  ASSERT_TRUE(sender.flush(10s));
  ASSERT_TRUE(wait_until(
      [&] {
        std::lock_guard lock(received_mutex);
        return received.size() >= kEvents;
      },
      10s));
  const std::string bus_open = bytes_of(bus) + bytes_of(bus + "-wal");
  const std::string health = sender.health().dump() + receiver.health().dump();
  sender.shutdown(5s);
  receiver.shutdown(5s);
  {
    std::lock_guard lock(received_mutex);
    for (const json& payload : received) {
      EXPECT_EQ(payload["Password"], kR);
      EXPECT_EQ(payload["card"]["brand"], "visa");
    }
  }
  ASSERT_TRUE(has(bus_open, "visa")) << "the bus file should hold the events";
  expect_no_secret("the sqlite:// file (open)", bus_open);
  expect_no_secret("the sqlite:// file (closed)", bytes_of(bus) + bytes_of(bus + "-wal"));
  expect_no_secret("the outbox file", bytes_of(dir.file("outbox.db")) + bytes_of(dir.file("outbox.db") + "-wal"));
  expect_no_secret("health()", health);
  for (const std::string& line : log.lines()) expect_no_secret("a log line", line);
}

// A local event's traceparent is its payload's "traceparent" member: redacted, it is not sent
// as a header either.
TEST(RedactedTraceparent, ARedactedTraceparentMemberIsNotSentAsAHeader) {
  const std::string traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  for (const bool redact : {false, true}) {
    n::MockOptions options;
    options.broker = test_support::unique_broker("redact-trace");
    auto mock = std::make_shared<n::MockTransport>(options);
    n::Notifier notifier;
    n::BridgeConfig config = test_support::config_for("redact-trace");
    if (redact) config.redact = {"*parent"};
    n::Bridge bridge(notifier, mock, config);
    bridge.start();
    {
      const n::ContextScope context({{"request_id", "r-1"}});
      notifier.instrument("job.run", json{{"traceparent", traceparent}, {"job", 1}});
    }
    ASSERT_TRUE(bridge.flush(10s));
    bridge.shutdown(5s);
    const std::vector<n::Message> published = mock->published();
    ASSERT_EQ(published.size(), 1u);
    std::string wire = published[0].body;
    for (const auto& [key, value] : published[0].headers) wire += "\n" + key + ": " + value;
    EXPECT_EQ(has(wire, traceparent), !redact) << wire;
    EXPECT_TRUE(has(wire, "\"job\":1")) << wire;
    EXPECT_TRUE(has(wire, R"("context":{"request_id":"r-1"})")) << "dropping the traceparent lost the context: " << wire;
  }
}

TEST(RedactedSizeLimit, AppliesToTheRedactedPayload) {
  const LogCapture log;
  n::MockOptions options;
  options.broker = test_support::unique_broker("redact-size");
  options.max_message_bytes = 4096;
  auto mock = std::make_shared<n::MockTransport>(options);
  n::Notifier notifier;
  n::BridgeConfig config = test_support::config_for("redact-size");
  config.redact = {"blob"};
  n::Bridge bridge(notifier, mock, config);
  bridge.start();
  // Too large as given, small once redacted: sent.
  notifier.instrument("file.saved", json{{"blob", secret(std::string(8000, 'x'))}, {"name", "a.txt"}});
  // Too large even redacted: dropped, and the drop's line says so without the secret.
  notifier.instrument("file.saved",
                      json{{"blob", secret("small")}, {"text", std::string(8000, 'y')}, {"name", "b.txt"}});
  ASSERT_TRUE(bridge.flush(10s));
  const json health = bridge.health();
  EXPECT_EQ(test_support::dropped(health, "too_large"), 1u);
  bridge.shutdown(5s);
  const std::vector<n::Message> published = mock->published();
  ASSERT_EQ(published.size(), 1u);
  EXPECT_TRUE(has(published[0].body, "a.txt"));
  expect_no_secret("the wire", published[0].body);
  expect_no_secret("health()", health.dump());
  bool drop_logged = false;
  for (const std::string& line : log.lines()) {
    expect_no_secret("a log line", line);
    drop_logged |= has(line, "too_large");
  }
  EXPECT_TRUE(drop_logged);
}

}  // namespace
