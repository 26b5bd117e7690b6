// Credential redaction (transport/redaction.hpp): one list of secret-looking words governs the
// URL redaction (redact_url), the configuration's errors, the factory's errors and the Bridge's
// health; credentials never reach what the library shows.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/bridge.hpp"
#include "notifications/config.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transport.hpp"
#include "notifications/transports/memory.hpp"
#include "transport/redaction.hpp"

namespace n = notifications;
namespace r = notifications::redaction;
using nlohmann::json;

namespace {

// The message of whatever `f` throws, or "NO ERROR".
template <class F>
std::string thrown_by(F f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "NO ERROR";
}

// One key per secret word, spelled as a real option might be: "x_<WORD>_y", mixed case.
std::vector<std::string> secret_keys() {
  std::vector<std::string> keys;
  for (const std::string_view word : r::kSecretWords) {
    std::string upper(word);
    for (char& c : upper) c = static_cast<char>(c - 'a' + 'A');
    keys.push_back("x_" + upper + "_y");
  }
  return keys;
}

}  // namespace

TEST(Redaction, RedactUrl) {
  EXPECT_EQ(n::redact_url("nats://user:pass@host:4222"), "nats://***@host:4222");
  EXPECT_EQ(n::redact_url("nats://s3cr3tt0k3n@host"), "nats://***@host");
  EXPECT_EQ(n::redact_url("nats://host:4222"), "nats://host:4222");
  EXPECT_EQ(n::redact_url("memory://"), "memory://");
  EXPECT_EQ(n::redact_url("memory://b?mode=inline"), "memory://b?mode=inline");
  EXPECT_EQ(n::redact_url("nats://a:b@h1:4222,nats://c:d@h2:4222,tls://h3"),
            "nats://***@h1:4222,nats://***@h2:4222,tls://h3");
  EXPECT_EQ(n::redact_url("nats://a:b@h1, nats://tok@h2"), "nats://***@h1, nats://***@h2");
  // Unencoded '@', '/', ',' in a password never leak.
  EXPECT_EQ(n::redact_url("nats://u:p@ss@host"), "nats://***@host");
  EXPECT_EQ(n::redact_url("nats://u:p/ss@host/db"), "nats://***@host/db");
  EXPECT_EQ(n::redact_url("nats://u:p,ss@host"), "nats://***@host");
  EXPECT_EQ(n::redact_url("postgres://u:pw@host/db?sslmode=require&password=x&token=y"),
            "postgres://***@host/db?sslmode=require&password=***&token=***");
  EXPECT_EQ(n::redact_url("user:pass@host"), "***@host");
  // Credentials inside a query value, whatever its key.
  EXPECT_EQ(n::redact_url("nats://h?servers=nats://u:pw@h2:4222&name=x"), "nats://h?servers=nats://***@h2:4222&name=x");
  EXPECT_EQ(n::redact_url("nats://h?servers=u:pw@h2"), "nats://h?servers=***@h2");
  EXPECT_EQ(n::redact_url(""), "");
}

TEST(Redaction, TheListIsTheUnionOfTheOldOnes) {
  // config.cpp knew "seed", transport.cpp knew "pwd" and "jwt": one list knows all of them.
  for (const char* word : {"pass", "pwd", "token", "secret", "key", "jwt", "seed", "cred", "auth"}) {
    EXPECT_TRUE(r::secret_looking(word)) << word;
  }
  EXPECT_TRUE(r::secret_looking("NKEY_Seed_File"));
  EXPECT_TRUE(r::secret_looking("Authorization"));
  EXPECT_FALSE(r::secret_looking("mode"));
  EXPECT_FALSE(r::secret_looking("max_pending"));
  EXPECT_FALSE(r::secret_looking(""));
}

// Every secret word hides its value in URL queries, in free text, in JSON for messages and in
// configuration errors: there is no second list that could miss one.
TEST(Redaction, OneWordListGovernsUrlsTextJsonAndConfigErrors) {
  for (const std::string& key : secret_keys()) {
    const std::string url = "memory://b?mode=inline&" + key + "=s3cr3t";
    EXPECT_EQ(n::redact_url(url), "memory://b?mode=inline&" + key + "=***");
    EXPECT_EQ(r::redact_text("cannot reach " + url + " now"),
              "cannot reach memory://b?mode=inline&" + key + "=*** now");

    std::string shown;
    r::append_redacted_json(json{{"outer", {{key, {"s3cr3t"}}}}}, shown, 1000);
    EXPECT_EQ(shown, "{\"outer\":{\"" + key + "\":\"***\"}}");

    const std::string config_error =
        thrown_by([&] { n::config_from_json({{"retry", {{"initial_ms", {{key, "s3cr3t"}}}}}}); });
    EXPECT_NE(config_error.find("retry.initial_ms"), std::string::npos) << config_error;
    EXPECT_EQ(config_error.find("s3cr3t"), std::string::npos) << config_error;
  }
}

// The words each old list lacked, end to end through the public functions.
TEST(Redaction, WordsOnlyOneOldListKnewAreHiddenEverywhere) {
  EXPECT_EQ(n::redact_url("nats://h?nkey_seed=s3cr3t"), "nats://h?nkey_seed=***");  // was only in config
  EXPECT_EQ(n::redact_url("nats://h?user_jwt=s3cr3t&pwd=s3cr3t"), "nats://h?user_jwt=***&pwd=***");
  for (const char* key : {"user_jwt", "pwd"}) {  // were only in the URL redaction
    const std::string message = thrown_by([&] { n::config_from_json({{"batch_size", {{key, "s3cr3t"}}}}); });
    EXPECT_NE(message.find("batch_size"), std::string::npos) << message;
    EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
  }
  // A URL in a configuration error: its secret query values are hidden like its user-info.
  const std::string message = thrown_by([] { n::config_from_json({{"url", "na ts://h?nkey_seed=s3cr3t"}}); });
  EXPECT_NE(message.find("na ts://h?nkey_seed=***"), std::string::npos) << message;
  EXPECT_EQ(message.find("s3cr3t"), std::string::npos) << message;
}

TEST(Redaction, FreeTextHidesUserInfoUpToTheLastAtOfEachUrl) {
  EXPECT_EQ(r::redact_text("no url here: a@b"), "no url here: a@b");
  EXPECT_EQ(r::redact_text("at nats://u:p@ss@h:4222 and tls://tok@h2."), "at nats://***@h:4222 and tls://***@h2.");
  EXPECT_EQ(r::redact_text("\"nats://u:pw@h\""), "\"nats://***@h\"");
  EXPECT_EQ(r::redact_text("x://h?servers=nats://u:pw@h2&name=a#frag"), "x://***@h2&name=a#frag");
  EXPECT_EQ(r::redact_text("x://h?servers=nats://h2&token=t#frag"), "x://h?servers=nats://h2&token=***#frag");
}

TEST(Redaction, RedactedJsonStopsAtItsLimit) {
  json deep = "plain";
  for (int i = 0; i < 500; ++i) deep = json::array({std::move(deep)});
  std::string shown;
  r::append_redacted_json(deep, shown, 64);
  // It stops descending past the limit; the brackets it closes on the way out may double it.
  EXPECT_LE(shown.size(), 2 * 64 + 2u) << shown;
  EXPECT_EQ(shown.find("plain"), std::string::npos) << shown;
  shown.clear();
  r::append_redacted_json(json{{"url", "nats://alice:s3cr3t@h"}, {"n", 1}}, shown, 1000);
  EXPECT_EQ(shown, R"({"n":1,"url":"nats://***@h"})");
}

TEST(Redaction, ScrubberHidesKnownSecretsAndUserInfo) {
  const r::Scrubber scrub({"hunter2", "", "t0k3n"});
  EXPECT_EQ(scrub("auth failed for hunter2 (t0k3n, hunter2)"), "auth failed for *** (***, ***)");
  EXPECT_EQ(scrub("connected to nats://bob:other@h:4222"), "connected to nats://***@h:4222");
  EXPECT_EQ(scrub("nothing secret"), "nothing secret");
  EXPECT_EQ(r::Scrubber()("x"), "x");
}

// The Bridge's health shows the URL, never its credentials.
TEST(Redaction, BridgeHealthShowsTheUrlWithoutCredentials) {
  n::register_transport("redaction-test", [](const n::TransportConfig&) {
    return n::make_memory_transport({"redaction-test"});
  });
  n::Notifier notifier;
  n::BridgeConfig config;
  config.app = "redaction";
  config.url = "redaction-test://alice:s3cr3t@h?mode=x&api_jwt=s3cr3t&nkey_seed=s3cr3t";
  auto bridge = n::make_bridge(notifier, config);
  const std::string health = bridge->health().dump();
  EXPECT_NE(health.find("redaction-test://***@h?mode=x&api_jwt=***&nkey_seed=***"), std::string::npos) << health;
  EXPECT_EQ(health.find("s3cr3t"), std::string::npos) << health;
  EXPECT_EQ(health.find("alice"), std::string::npos) << health;
}
