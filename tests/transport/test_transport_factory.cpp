// The scheme registry (transport/schemes.cpp): make_transport() finds a factory by its scheme,
// register_transport() adds one, and every error names the URL redacted and says what to link for
// a scheme the project ships in a component this program does not link.
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "notifications/transport.hpp"
#include "notifications/transports/memory.hpp"
#include "transport_test_support.hpp"

namespace n = notifications;

namespace {

using test_support::error_of;

}  // namespace

TEST(TransportFactory, UnknownSchemeNamesRedactedUrlAndKnownSchemes) {
  auto err = error_of([] { n::make_transport({"nats://alice:s3cret@nats.example:4222", {}}); });
  EXPECT_EQ(err.find("s3cret"), std::string::npos) << err;
  EXPECT_EQ(err.find("alice"), std::string::npos) << err;
  EXPECT_NE(err.find("url \"nats://***@nats.example:4222\": unknown scheme \"nats\""), std::string::npos) << err;
  EXPECT_NE(err.find("known schemes: "), std::string::npos) << err;
  EXPECT_NE(err.find("memory"), std::string::npos) << err;
  EXPECT_NE(err.find("mock"), std::string::npos) << err;
  // A scheme the project ships in a component this program does not link: say what to link.
  EXPECT_NE(err.find("target_link_libraries(<your target> PRIVATE notifications::nats)"), std::string::npos) << err;
  EXPECT_NE(err.find("COMPONENTS nats"), std::string::npos) << err;
  err = error_of([] { n::make_transport({"tls://nats.example:4222", {}}); });
  EXPECT_NE(err.find("notifications::nats"), std::string::npos) << err;
  err = error_of([] { n::make_transport({"bogus://x", {}}); });
  EXPECT_EQ(err.find("notifications::nats"), std::string::npos) << "no hint for a scheme nobody ships: " << err;

  err = error_of([] { n::make_transport({"tok3n@localhost:4222", {}}); });
  EXPECT_NE(err.find("no scheme"), std::string::npos) << err;
  EXPECT_EQ(err.find("tok3n"), std::string::npos) << err;
}

TEST(TransportFactory, RegisteredFactoriesAndTheirErrors) {
  n::register_transport("Custom-Test", [](const n::TransportConfig& config) {
    if (config.url.find("fail") != std::string::npos) throw n::TransportError("no such cluster");
    if (config.url.find("null") != std::string::npos) return std::unique_ptr<n::Transport>();
    return n::make_memory_transport({"custom"});
  });
  auto t = n::make_transport({"custom-test://x", {}});
  EXPECT_EQ(t->kind(), "memory");
  auto err = error_of([] { n::make_transport({"custom-test://u:pw@fail", {}}); });
  EXPECT_NE(err.find("url \"custom-test://***@fail\": no such cluster"), std::string::npos) << err;
  EXPECT_EQ(err.find("[notifications.transport] [notifications.transport]"), std::string::npos) << err;
  err = error_of([] { n::make_transport({"custom-test://null", {}}); });
  EXPECT_NE(err.find("returned no transport"), std::string::npos) << err;
  err = error_of([] { n::make_transport({"zzz://x", {}}); });
  EXPECT_NE(err.find("custom-test"), std::string::npos) << err;  // listed among known schemes

  EXPECT_NE(error_of([] { n::register_transport("1bad", [](const n::TransportConfig&) { return nullptr; }); })
                .find("not a URL scheme"),
            std::string::npos);
  EXPECT_NE(error_of([] { n::register_transport("ok", nullptr); }).find("empty factory"), std::string::npos);
}

TEST(TransportFactory, SchemesAreCaseInsensitiveAndALaterRegistrationReplacesTheEarlier) {
  n::register_transport("replace-test", [](const n::TransportConfig&) { return n::make_memory_transport({"first"}); });
  EXPECT_EQ(n::make_transport({"REPLACE-Test://x", {}})->health()["broker"], "first");
  n::register_transport("Replace-TEST", [](const n::TransportConfig&) { return n::make_memory_transport({"second"}); });
  EXPECT_EQ(n::make_transport({"replace-test://x", {}})->health()["broker"], "second");
}

TEST(TransportFactory, AFactoryMayUseTheRegistryItself) {
  // Contract 2 of schemes.cpp: the factory runs without the registry's lock.
  n::register_transport("nested-test", [](const n::TransportConfig&) {
    n::register_transport("nested-inner-test", [](const n::TransportConfig&) { return n::make_memory_transport({"inner"}); });
    return n::make_transport({"memory://nested", {}});
  });
  EXPECT_EQ(n::make_transport({"nested-test://x", {}})->kind(), "memory");
  EXPECT_EQ(n::make_transport({"nested-inner-test://x", {}})->health()["broker"], "inner");
}

TEST(TransportFactory, ErrorsNeverShowCredentialsFromTheUrlOrTheFactory) {
  // A factory whose error quotes the raw URL: make_transport still shows only the redacted one.
  n::register_transport("echo-test", [](const n::TransportConfig& config) -> std::unique_ptr<n::Transport> {
    throw std::runtime_error("cannot reach " + config.url);
  });
  for (const std::string url : {"echo-test://alice:s3cr3t@h", "echo-test://h?api_jwt=s3cr3t",
                                "echo-test://h?nkey_seed=s3cr3t", "zzz://h?pwd=s3cr3t", "zzz://alice:s3cr3t@h"}) {
    const std::string err = error_of([&] { n::make_transport({url, {}}); });
    EXPECT_NE(err.find("url \""), std::string::npos) << err;
    EXPECT_EQ(err.find("s3cr3t"), std::string::npos) << err;
  }
}
