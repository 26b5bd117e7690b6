// Push consumers (JetStreamOptions::consumer_type push) against a real nats-server -js on
// 127.0.0.1, beyond the conformance suite (which runs them too): the URL key, a consumer of the
// other type under the same name is refused naming it, and a consumer the server lost is made
// again by itself, found by its silence. The consumer is removed with the JetStream API through a
// plain cnats connection, as an operator would.
#include <gtest/gtest.h>
#include <nats/nats.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "jetstream_test_support.hpp"
#include "nats_server.hpp"
#include "notifications/transports/jetstream.hpp"
#include "transport_test_support.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::error_of;
using test_support::in;
using test_support::jetstream_options_for;
using test_support::NatsServer;
using test_support::NatsServerOptions;
using test_support::started;
using test_support::wait_until;
using test_support::with_jetstream;

n::JetStreamOptions push_options(const std::string& url, const std::string& stream, const std::string& subjects) {
  auto options = jetstream_options_for(url, stream, {subjects});
  options.consumer_type = n::JetStreamOptions::ConsumerType::push;
  options.idle_heartbeat = 200ms;
  return options;
}

// What a subscription received, in order.
class Received {
 public:
  n::DeliveryHandler handler() {
    return [this](n::Delivery&& delivery) {
      {
        std::lock_guard lock(mutex_);
        bodies_.push_back(delivery.message.body);
      }
      delivery.settle(n::Settle::ack);
    };
  }
  std::vector<std::string> bodies() {
    std::lock_guard lock(mutex_);
    return bodies_;
  }
  bool has(const std::string& body) {
    std::lock_guard lock(mutex_);
    for (const std::string& b : bodies_) {
      if (b == body) return true;
    }
    return false;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> bodies_;
};

void publish(n::Transport& transport, const std::string& subject, const std::string& body) {
  const std::vector<n::Message> batch{n::Message{subject, body, {}, subject + "-" + body}};
  ASSERT_EQ(transport.publish(batch).published, 1u);
}

TEST(JetStreamPush, TheUrlKeySelectsPushAndBadValuesAreNamed) {
  n::TransportConfig config;
  config.url = "jetstream://127.0.0.1:4222?consumer_type=push&idle_heartbeat_ms=750";
  const n::JetStreamOptions options = n::jetstream_options_from_config(config);
  EXPECT_EQ(options.consumer_type, n::JetStreamOptions::ConsumerType::push);
  EXPECT_EQ(options.idle_heartbeat, 750ms);
  config.url = "jetstream://127.0.0.1:4222?consumer_type=shove";
  const std::string error = error_of([&] { n::jetstream_options_from_config(config); });
  EXPECT_NE(error.find("consumer_type"), std::string::npos) << error;
  EXPECT_NE(error.find("pull or push"), std::string::npos) << error;
  config.url = "jetstream://127.0.0.1:4222?idle_heartbeat_ms=5";
  EXPECT_NE(error_of([&] { n::jetstream_options_from_config(config); }).find("idle_heartbeat_ms"), std::string::npos);
}

// A durable name is one consumer: a pull consumer cannot be read as a push one, nor the reverse.
TEST(JetStreamPush, AConsumerOfTheOtherTypeUnderTheSameNameIsRefusedNamingIt) {
  NatsServer server(with_jetstream());
  const auto push = push_options(server.url(), "KINDS", "kinds.>");
  auto pull_options = push;
  pull_options.consumer_type = n::JetStreamOptions::ConsumerType::pull;
  auto pull_transport = started(pull_options);
  auto push_transport = started(push);
  n::DeliveryOptions pulled;
  pulled.durable = "pulled";
  pull_transport->unsubscribe(pull_transport->subscribe("kinds.a", pulled, [](n::Delivery&&) {}));
  const std::string refused = error_of([&] { push_transport->subscribe("kinds.a", pulled, [](n::Delivery&&) {}); });
  EXPECT_NE(refused.find("\"pulled\""), std::string::npos) << refused;
  EXPECT_NE(refused.find("pull consumer"), std::string::npos) << refused;
  EXPECT_NE(refused.find("consumer_type"), std::string::npos) << refused;
  n::DeliveryOptions pushed;
  pushed.durable = "pushed";
  push_transport->unsubscribe(push_transport->subscribe("kinds.a", pushed, [](n::Delivery&&) {}));
  const std::string reverse = error_of([&] { pull_transport->subscribe("kinds.a", pushed, [](n::Delivery&&) {}); });
  EXPECT_NE(reverse.find("\"pushed\""), std::string::npos) << reverse;
  EXPECT_NE(reverse.find("push consumer"), std::string::npos) << reverse;
  push_transport->stop(in(5s));
  pull_transport->stop(in(5s));
}

// A durable push consumer keeps its deliver subject: a later subscription (another process, a
// restart) reads through it and gets what was published while none was subscribed.
TEST(JetStreamPush, ADurablePushConsumerIsReadAgainThroughItsDeliverSubject) {
  NatsServer server(with_jetstream());
  const auto options = push_options(server.url(), "AGAIN", "again.>");
  auto publisher = started(options);
  n::DeliveryOptions durable;
  durable.durable = "again";
  {
    auto first = started(options);
    Received received;
    first->subscribe("again.>", durable, received.handler());
    publish(*publisher, "again.a", "1");
    ASSERT_TRUE(wait_until([&] { return received.has("1"); }, 10s)) << first->health().dump();
    first->stop(in(5s));
  }
  publish(*publisher, "again.a", "2");
  auto second = started(options);
  Received received;
  second->subscribe("again.>", durable, received.handler());
  ASSERT_TRUE(wait_until([&] { return received.has("2"); }, 10s)) << second->health().dump();
  EXPECT_EQ(received.bodies(), std::vector<std::string>{"2"});
  second->stop(in(5s));
  publisher->stop(in(5s));
}

// The server lost the consumer (removed by an operator here): the subscription notices the
// silence (no heartbeat for twice idle_heartbeat), makes the consumer again from the message
// after the last one it handed over, and reads on.
TEST(JetStreamPush, AConsumerTheServerLostIsMadeAgainAndReadingGoesOn) {
  NatsServer server(with_jetstream());
  const auto options = push_options(server.url(), "LOST", "lost.>");
  auto transport = started(options);
  Received received;
  transport->subscribe("lost.>", n::DeliveryOptions{}, received.handler());
  publish(*transport, "lost.a", "1");
  ASSERT_TRUE(wait_until([&] { return received.has("1"); }, 10s)) << transport->health().dump();
  const std::string consumer = transport->health()["subscriptions"][0]["consumer"].get<std::string>();
  ASSERT_FALSE(consumer.empty());

  natsConnection* nc = nullptr;
  ASSERT_EQ(natsConnection_ConnectTo(&nc, server.url().c_str()), NATS_OK);
  natsMsg* reply = nullptr;
  const std::string subject = "$JS.API.CONSUMER.DELETE.LOST." + consumer;
  ASSERT_EQ(natsConnection_RequestString(&reply, nc, subject.c_str(), "", 5000), NATS_OK);
  const std::string answer(natsMsg_GetData(reply), static_cast<std::size_t>(natsMsg_GetDataLength(reply)));
  natsMsg_Destroy(reply);
  natsConnection_Destroy(nc);
  ASSERT_NE(answer.find("\"success\":true"), std::string::npos) << answer;

  publish(*transport, "lost.a", "2");
  ASSERT_TRUE(wait_until([&] { return received.has("2"); }, 20s)) << transport->health().dump();
  const json health = transport->health();
  EXPECT_GE(health["consumers_recreated"].get<int>(), 1) << health.dump();
  EXPECT_EQ(received.bodies(), (std::vector<std::string>{"1", "2"})) << "nothing again, nothing skipped";
  transport->stop(in(5s));
}

}  // namespace
