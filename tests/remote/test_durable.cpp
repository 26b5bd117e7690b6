// Durable handlers (include/notifications/durable.hpp, promises D1-D4 of
// remote/durable_consumer.hpp) over the memory and mock transports, with the memory store: the
// inbox runs a handler once per event id, failures retry with backoff (lower bounds only) and end
// as dead letters, replay runs them again, a handler past its deadline holds its claim, malformed
// input is a dead letter at once, exceptions of any type are contained, shutdown returns what waits.
// Every wait is bounded; nothing here asserts speed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bridge_test_support.hpp"
#include "child_process.hpp"
#include "notifications/bridge.hpp"
#include "notifications/context.hpp"
#include "notifications/durable.hpp"
#include "notifications/envelope.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"
#include "wait.hpp"
#include "scale.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::config_for;
using test_support::unique_broker;
using test_support::wait_until;

namespace {

using Clock = std::chrono::steady_clock;

// A gate a handler can wait on; every wait is bounded.
struct Gate {
  std::mutex mutex;
  std::condition_variable changed;
  bool open = false;
  // Notifies under the lock: a waiter cannot return (and its test end, destroying the gate)
  // before this call is done with it.
  void release() {
    std::lock_guard<std::mutex> lock(mutex);
    open = true;
    changed.notify_all();
  }
  void wait(std::chrono::milliseconds limit = 20s) {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait_for(lock, limit, [&] { return open; });
  }
};

// A transport for each case: the transport's capabilities decide between naks and local retries,
// which both must honour the same promises.
std::shared_ptr<n::Transport> make(const std::string& kind, const std::string& broker) {
  if (kind == "mock") return std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker});
  if (kind == "mock_acks") {
    return std::make_shared<n::MockTransport>(
        n::MockOptions{.broker = broker, .capabilities = n::kMemoryAckCapabilities});
  }
  return n::make_memory_transport({.broker = broker, .acknowledgements = kind == "memory_acks"});
}

// A producer bridge forwarding everything, and a consumer bridge with no listeners of its own:
// only its durable handlers receive.
struct Pair {
  explicit Pair(const std::string& kind = "memory") {
    broker = unique_broker("durable");
    n::BridgeConfig pc = config_for("producer");
    pc.subscribe = {};
    producer = std::make_unique<n::Bridge>(producer_notifier, make(kind, broker), pc);
    n::BridgeConfig cc = config_for("consumer");
    cc.forward = {};
    cc.subscribe = {};
    consumer_transport = make(kind, broker);
    consumer = std::make_unique<n::Bridge>(consumer_notifier, consumer_transport, cc);
  }
  void start() {
    consumer->start();
    producer->start();
  }
  ~Pair() {
    producer->shutdown(5s);
    consumer->shutdown(5s);
  }
  void instrument(const std::string& name, json payload) { producer_notifier.instrument(name, std::move(payload)); }
  json health(const std::string& handler) const { return consumer->health()["durable"][handler]; }
  std::uint64_t count(const std::string& handler, const std::string& key) const {
    return health(handler)["counters"][key].get<std::uint64_t>();
  }

  std::string broker;
  n::Notifier producer_notifier;
  n::Notifier consumer_notifier;
  std::unique_ptr<n::Bridge> producer;
  std::shared_ptr<n::Transport> consumer_transport;
  std::unique_ptr<n::Bridge> consumer;
};

n::DurableOptions fast_options() {
  n::DurableOptions options;
  options.backoff.initial = 20ms;
  options.backoff.max = 200ms;
  options.backoff.multiplier = 2.0;
  options.backoff.jitter = 0.0;
  options.max_attempts = 3;
  options.handler_deadline = 5s;
  return options;
}

class Durable : public ::testing::TestWithParam<std::string> {};

TEST(DurableInbox, DurablePromise2_TheInboxRunsAHandlerOncePerEventIdAcrossDuplicates) {
  // The mock delivers its next messages twice, as a transport redelivering would.
  const std::string broker = unique_broker("durable-dup");
  auto consumer_transport = std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker});
  n::Notifier pn;
  n::Notifier cn;
  n::BridgeConfig pc = config_for("producer");
  pc.subscribe = {};
  n::BridgeConfig cc = config_for("consumer");
  cc.forward = {};
  cc.subscribe = {};
  std::atomic<int> calls{0};
  std::mutex mutex;
  std::vector<std::string> ids;
  {
    n::Bridge consumer(cn, consumer_transport, cc);
    n::Bridge producer(pn, std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker}), pc);
    consumer.subscribe_durable("billing", "order.*", [&](const n::Event& event, n::DurableContext& context) {
      EXPECT_EQ(context.handler(), "billing");
      EXPECT_EQ(context.attempt(), 1u);
      std::lock_guard<std::mutex> lock(mutex);
      ids.push_back(event.id());
      calls.fetch_add(1);
    });
    consumer.start();
    producer.start();
    // A peer mock that delivers each of its next messages twice.
    std::shared_ptr<n::Transport> peer = std::make_shared<n::MockTransport>(n::MockOptions{.broker = broker});
    peer->start();
    auto& mock = dynamic_cast<n::MockTransport&>(*peer);
    mock.duplicate_next(5);
    for (int i = 0; i < 5; ++i) {
      n::Envelope envelope;
      envelope.id = "00000000-0000-4000-8000-00000000000" + std::to_string(i);
      envelope.name = "order.placed";
      envelope.payload = {{"n", i}};
      envelope.time = std::chrono::system_clock::now();
      envelope.producer = "peer";
      envelope.producer_instance = "peer-instance";
      const n::Message message = n::message_from_envelope(envelope, "test.order.placed");
      ASSERT_EQ(peer->publish(std::span<const n::Message>(&message, 1)).published, 1u);
    }
    ASSERT_TRUE(wait_until([&] {
      return consumer.health()["durable"]["billing"]["counters"]["duplicates_skipped"].get<int>() == 5;
    }, 20s)) << consumer.health().dump();
    EXPECT_EQ(calls.load(), 5);
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(std::unique(ids.begin(), ids.end()), ids.end());
    peer->stop(Clock::now() + 5s);
    producer.shutdown(5s);
    consumer.shutdown(5s);
  }
}

TEST_P(Durable, DurablePromise3_AFailingHandlerIsRetriedWithBackoffThenDeadLetteredAndReplayed) {
  Pair pair(GetParam());
  std::mutex mutex;
  std::vector<Clock::time_point> at;
  std::atomic<bool> fail{true};
  pair.consumer->subscribe_durable("mailer", "user.signed_up", [&](const n::Event&, n::DurableContext& context) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      at.push_back(Clock::now());
    }
    if (fail.load()) throw std::runtime_error("smtp down (attempt " + std::to_string(context.attempt()) + ")");
  }, fast_options());
  pair.start();
  pair.instrument("user.signed_up", {{"user", 7}});
  ASSERT_TRUE(wait_until([&] { return pair.count("mailer", "dead_lettered") == 1; }, 20s))
      << pair.consumer->health().dump();
  {
    std::lock_guard<std::mutex> lock(mutex);
    ASSERT_EQ(at.size(), 3u);
    // Lower bounds only: backoff 20 ms then 40 ms, no jitter.
    EXPECT_GE(at[1] - at[0], 20ms);
    EXPECT_GE(at[2] - at[1], 40ms);
  }
  auto store = pair.consumer->durable_store("mailer");
  const auto letters = store->dead_letters({.handler = "mailer"});
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_EQ(letters[0].reason, "max_attempts");
  EXPECT_EQ(letters[0].attempts, 3u);
  EXPECT_NE(letters[0].last_error.find("smtp down (attempt 3)"), std::string::npos) << letters[0].last_error;
  EXPECT_EQ(letters[0].subject, "test.user.signed_up");
  EXPECT_EQ(letters[0].handler, "mailer");
  EXPECT_FALSE(letters[0].event_id.empty());
  EXPECT_LE(letters[0].first_failed_at, letters[0].dead_at);
  EXPECT_GE(letters[0].dead_at - letters[0].first_failed_at, 60ms);  // two backoffs in between
  EXPECT_EQ(pair.count("mailer", "failed"), 3u);
  EXPECT_EQ(pair.count("mailer", "retried"), 2u);

  // A replay that fails again keeps the letter, with one more attempt and the new error.
  EXPECT_FALSE(pair.consumer->replay_dead_letter("mailer", letters[0].id, 10s));
  auto again = store->dead_letter(letters[0].id);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->attempts, 4u);
  // Once it succeeds the letter is gone, and a redelivery of the event is skipped as done.
  fail = false;
  EXPECT_TRUE(pair.consumer->replay_dead_letter("mailer", letters[0].id, 10s));
  EXPECT_FALSE(store->dead_letter(letters[0].id).has_value());
  EXPECT_TRUE(store->dead_letters({.handler = "mailer"}).empty());
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(at.size(), 5u);
}

// What `notifications dlq replay` does (docs/cli_outbox_dlq.md): the store takes the letter back,
// then its message is published again with the same id. The handler runs once more, from attempt
// 1; another handler whose inbox says done skips it.
TEST_P(Durable, ADeadLetterTakenBackAndRepublishedRunsItsHandlerOnceMoreAndNotAHandlerThatIsDone) {
  Pair pair(GetParam());
  auto fail = std::make_shared<std::atomic<bool>>(true);
  auto mailer_attempts = std::make_shared<std::vector<std::uint32_t>>();
  auto mutex = std::make_shared<std::mutex>();
  auto audit_calls = std::make_shared<std::atomic<int>>(0);
  pair.consumer->subscribe_durable(
      "mailer", "user.signed_up",
      [fail, mailer_attempts, mutex](const n::Event&, n::DurableContext& context) {
        {
          std::lock_guard<std::mutex> lock(*mutex);
          mailer_attempts->push_back(context.attempt());
        }
        if (fail->load()) throw std::runtime_error("smtp down");
      },
      fast_options());
  pair.consumer->subscribe_durable(
      "audit", "user.signed_up", [audit_calls](const n::Event&, n::DurableContext&) { audit_calls->fetch_add(1); },
      fast_options());
  pair.start();
  pair.instrument("user.signed_up", {{"user", 7}});
  ASSERT_TRUE(wait_until([&] { return pair.count("mailer", "dead_lettered") == 1 && pair.count("audit", "succeeded") == 1; },
                         20s))
      << pair.consumer->health().dump();
  auto store = pair.consumer->durable_store("mailer");
  const auto letters = store->dead_letters({.handler = "mailer"});
  ASSERT_EQ(letters.size(), 1u);
  fail->store(false);
  const auto taken = store->take_back_dead_letter(letters[0].id);
  ASSERT_TRUE(taken.has_value());
  EXPECT_FALSE(store->dead_letter(letters[0].id).has_value());

  std::shared_ptr<n::Transport> peer = make(GetParam(), pair.broker);
  peer->start();
  const n::Message message{taken->subject, taken->body, {}, taken->event_id};
  ASSERT_EQ(peer->publish(std::span<const n::Message>(&message, 1)).published, 1u);
  ASSERT_TRUE(wait_until([&] { return pair.count("mailer", "succeeded") == 1 && pair.count("audit", "duplicates_skipped") == 1; },
                         20s))
      << pair.consumer->health().dump();
  EXPECT_TRUE(pair.consumer->wait_delivered(5s));
  {
    std::lock_guard<std::mutex> lock(*mutex);
    EXPECT_EQ(*mailer_attempts, (std::vector<std::uint32_t>{1, 2, 3, 1})) << "one more call, as a first attempt";
  }
  EXPECT_EQ(audit_calls->load(), 1) << "audit's inbox said done";
  EXPECT_TRUE(store->dead_letters().empty());
  EXPECT_EQ(pair.count("mailer", "dead_lettered"), 1u);
  peer->stop(Clock::now() + 5s);
}

TEST_P(Durable, DurablePromise3_MalformedInputIsADeadLetterAtOnceWithTheReason) {
  Pair pair(GetParam());
  std::atomic<int> calls{0};
  pair.consumer->subscribe_durable("audit", ">", [&](const n::Event&, n::DurableContext&) { calls.fetch_add(1); });
  pair.start();
  auto raw = make(GetParam(), pair.consumer_transport->health()["broker"].get<std::string>());
  raw->start();
  const n::Message message{"test.order.placed", "{\"not\": \"an envelope\"}", {}, "bad-1"};
  ASSERT_EQ(raw->publish(std::span<const n::Message>(&message, 1)).published, 1u);
  ASSERT_TRUE(wait_until([&] { return pair.count("audit", "dead_lettered") == 1; }, 20s));
  const auto letters = pair.consumer->durable_store("audit")->dead_letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_EQ(letters[0].reason, "malformed");
  EXPECT_EQ(letters[0].attempts, 0u);
  EXPECT_EQ(letters[0].body, message.body);
  EXPECT_NE(letters[0].last_error.find("field"), std::string::npos) << letters[0].last_error;
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(pair.count("audit", "malformed"), 1u);
  raw->stop(Clock::now() + 5s);
}

TEST_P(Durable, DurablePromise3_ExceptionsOfAnyTypeAreContainedAndDescribed) {
  Pair pair(GetParam());
  n::DurableOptions options = fast_options();
  options.max_attempts = 1;
  pair.consumer->subscribe_durable("odd", "x.y", [](const n::Event&, n::DurableContext&) { throw 42; }, options);
  pair.start();
  pair.instrument("x.y", json::object());
  ASSERT_TRUE(wait_until([&] { return pair.count("odd", "dead_lettered") == 1; }, 20s));
  const auto letters = pair.consumer->durable_store("odd")->dead_letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_NE(letters[0].last_error.find("int"), std::string::npos) << letters[0].last_error;
}

TEST_P(Durable, DurablePromise1_AHandlerPastItsDeadlineHoldsItsClaimAndNoRetryRunsBesideIt) {
  Pair pair(GetParam());
  n::DurableOptions options = fast_options();
  options.handler_deadline = 50ms;
  options.revive_after = 10s;
  Gate gate;
  std::atomic<int> running{0};
  std::atomic<int> most{0};
  std::atomic<int> calls{0};
  pair.consumer->subscribe_durable("slow", "job.run", [&](const n::Event&, n::DurableContext&) {
    const int now = running.fetch_add(1) + 1;
    most.store(std::max(most.load(), now));
    calls.fetch_add(1);
    gate.wait();  // far past the deadline
    running.fetch_sub(1);
  }, options);
  pair.start();
  pair.instrument("job.run", json::object());
  ASSERT_TRUE(wait_until([&] { return pair.count("slow", "timeouts") == 1; }, 20s));
  EXPECT_EQ(pair.health("slow")["stuck_handlers"].get<int>(), 1);
  // The retry comes while the first call still runs: it is held, not run.
  ASSERT_TRUE(wait_until([&] { return pair.count("slow", "held") >= 2; }, 20s));
  EXPECT_EQ(calls.load(), 1);
  gate.release();
  // The late call returned successfully: the inbox marks the event done, the retry skips it.
  ASSERT_TRUE(wait_until([&] { return pair.count("slow", "late_completions") == 1; }, 20s));
  ASSERT_TRUE(wait_until([&] { return pair.count("slow", "duplicates_skipped") >= 1; }, 20s))
      << pair.consumer->health().dump();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(most.load(), 1);
  EXPECT_EQ(pair.health("slow")["stuck_handlers"].get<int>(), 0);
}

TEST_P(Durable, DurablePromise1_AtTheBoundOfStuckHandlersNothingNewRunsUntilOneReturns) {
  Pair pair(GetParam());
  n::DurableOptions options = fast_options();
  options.handler_deadline = 30ms;
  options.max_stuck_handlers = 1;
  Gate gate;
  std::atomic<int> calls{0};
  pair.consumer->subscribe_durable("stuck", "job.*", [&](const n::Event& event, n::DurableContext&) {
    calls.fetch_add(1);
    if (event.name() == "job.block") gate.wait();
  }, options);
  pair.start();
  pair.instrument("job.block", json::object());
  ASSERT_TRUE(wait_until([&] { return pair.health("stuck")["stalled"].get<bool>(); }, 20s));
  pair.instrument("job.other", json::object());
  ASSERT_TRUE(wait_until([&] { return pair.count("stuck", "stalled") >= 1; }, 20s));
  EXPECT_EQ(calls.load(), 1);  // the other job waits for a thread
  gate.release();
  ASSERT_TRUE(wait_until([&] { return pair.count("stuck", "succeeded") >= 1 && calls.load() == 2; }, 20s))
      << pair.consumer->health().dump();
  EXPECT_FALSE(pair.health("stuck")["stalled"].get<bool>());
}

TEST_P(Durable, DurablePromise2_TenConcurrentDeliveriesOfOneIdRunTheHandlerOnce) {
  // Ten bridges (ten owners) share one store; the same event reaches all of them at once.
  auto store = n::make_memory_durable_store();
  std::atomic<int> calls{0};
  struct Node {
    n::Notifier notifier;
    std::shared_ptr<n::Transport> transport;
    std::unique_ptr<n::Bridge> bridge;
  };
  std::vector<std::unique_ptr<Node>> nodes;
  std::vector<std::shared_ptr<n::Transport>> peers;
  for (int i = 0; i < 10; ++i) {
    const std::string broker = unique_broker("storm");
    auto node = std::make_unique<Node>();
    node->transport = make(GetParam(), broker);
    n::BridgeConfig config = config_for("storm");
    config.forward = {};
    config.subscribe = {};
    node->bridge = std::make_unique<n::Bridge>(node->notifier, node->transport, config);
    n::DurableOptions options = fast_options();
    options.store = store;
    options.backoff.initial = 5ms;
    node->bridge->subscribe_durable("charge", "order.placed", [&](const n::Event&, n::DurableContext&) {
      calls.fetch_add(1);
      std::this_thread::sleep_for(20ms);  // widens the window for a second call
    }, options);
    node->bridge->start();
    peers.push_back(make(GetParam(), broker));
    peers.back()->start();
    nodes.push_back(std::move(node));
  }
  n::Envelope envelope;
  envelope.id = "11111111-2222-4333-8444-555555555555";
  envelope.name = "order.placed";
  envelope.payload = {{"order", 1}};
  envelope.time = std::chrono::system_clock::now();
  envelope.producer = "shop";
  envelope.producer_instance = "shop-1";
  const n::Message message = n::message_from_envelope(envelope, "test.order.placed");
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  for (auto& peer : peers) {
    threads.emplace_back([&, peer] {
      while (!go.load()) std::this_thread::yield();
      peer->publish(std::span<const n::Message>(&message, 1));
    });
  }
  go = true;
  for (auto& thread : threads) thread.join();
  const auto settled = [&] {
    std::uint64_t done = 0;
    for (auto& node : nodes) {
      const json counters = node->bridge->health()["durable"]["charge"]["counters"];
      done += counters["succeeded"].get<std::uint64_t>() + counters["duplicates_skipped"].get<std::uint64_t>();
    }
    return done == 10;
  };
  ASSERT_TRUE(wait_until(settled, 20s));
  EXPECT_EQ(calls.load(), 1);
  for (auto& node : nodes) node->bridge->shutdown(5s);
  for (auto& peer : peers) peer->stop(Clock::now() + 5s);
}

TEST_P(Durable, DurableHandlersSeeTheEventsTheirOwnProcessForwards) {
  const std::string broker = unique_broker("durable-self");
  n::Notifier notifier;
  n::BridgeConfig config = config_for("self");
  n::Bridge bridge(notifier, make(GetParam(), broker), config);
  std::atomic<int> calls{0};
  bridge.subscribe_durable("self", "a.b", [&](const n::Event& event, n::DurableContext&) {
    EXPECT_TRUE(event.remote());
    EXPECT_EQ(event.payload()["v"], 1);
    calls.fetch_add(1);
  });
  bridge.start();
  notifier.instrument("a.b", {{"v", 1}});
  EXPECT_TRUE(wait_until([&] { return calls.load() == 1; }, 20s));
  bridge.shutdown(5s);
}

TEST_P(Durable, AHandlerSeesTheSendersContextAndTagsAndWhatItInstrumentsCarriesThem) {
  std::mutex mutex;
  std::vector<n::Event> received;  // the handler's event, then the one it instrumented
  Pair pair(GetParam());            // after them: its shutdown ends every call before they go
  auto shipped = pair.consumer_notifier.subscribe(n::Pattern("order.shipped"), [&](const n::Event& event) {
    std::lock_guard<std::mutex> lock(mutex);
    received.push_back(event);
  });
  pair.consumer->subscribe_durable("shipping", "order.placed", [&](const n::Event& event, n::DurableContext&) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      received.push_back(event);
    }
    pair.consumer_notifier.instrument("order.shipped", json{{"id", event.payload()["id"]}});
  });
  pair.start();
  {
    n::ContextScope request({{"request_id", "r-5"}});
    n::tagged("checkout", [&] { pair.instrument("order.placed", {{"id", 5}}); });
  }
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(mutex);
    return received.size() == 2;
  }, 20s));
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(received[0].context(), json({{"request_id", "r-5"}}));
  EXPECT_EQ(received[0].tags(), json({{"checkout", true}}));
  EXPECT_EQ(received[1].name(), "order.shipped");
  EXPECT_EQ(received[1].context(), json({{"request_id", "r-5"}}));
  EXPECT_EQ(received[1].tags(), json({{"checkout", true}}));
}

TEST_P(Durable, ShutdownLetsTheRunningCallFinishWithinTheDeadline) {
  Pair pair(GetParam());
  Gate entered;
  std::atomic<bool> finished{false};
  pair.consumer->subscribe_durable("finish", "job.run", [&](const n::Event&, n::DurableContext&) {
    entered.release();
    std::this_thread::sleep_for(100ms);
    finished = true;
  });
  pair.start();
  pair.instrument("job.run", json::object());
  entered.wait();
  const n::ShutdownReport report = pair.consumer->shutdown(5s);
  EXPECT_TRUE(finished.load());
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.durable_unfinished, 0u);
  EXPECT_EQ(pair.count("finish", "succeeded"), 1u);
  EXPECT_EQ(pair.health("finish")["state"], "stopped");
}

TEST_P(Durable, ACallStillRunningAtShutdownsDeadlineIsReportedUnfinished) {
  Pair pair(GetParam());
  Gate entered;
  Gate gate;
  pair.consumer->subscribe_durable("late", "job.run", [&](const n::Event&, n::DurableContext&) {
    entered.release();
    gate.wait();
  });
  pair.start();
  pair.instrument("job.run", json::object());
  entered.wait();
  const n::ShutdownReport report = pair.consumer->shutdown(100ms);
  gate.release();
  EXPECT_FALSE(report.clean);
  EXPECT_EQ(report.durable_unfinished, 1u) << report.detail;
  EXPECT_NE(report.detail.find("durable handlers"), std::string::npos) << report.detail;
  // The call left behind returns before this test's gates go.
  EXPECT_TRUE(wait_until([&] { return pair.count("late", "late_completions") == 1; }, 20s));
}

TEST_P(Durable, ALongCallTellsTheTransportItIsInProgressSoItIsNotRedelivered) {
  if (GetParam().find("acks") == std::string::npos) GTEST_SKIP() << "needs acknowledgements";
  Pair pair(GetParam());
  n::DurableOptions options = fast_options();
  options.ack_wait = 150ms;
  std::atomic<int> calls{0};
  pair.consumer->subscribe_durable("long", "job.run", [&](const n::Event&, n::DurableContext&) {
    calls.fetch_add(1);
    std::this_thread::sleep_for(600ms);  // four ack waits
  }, options);
  pair.start();
  pair.instrument("job.run", json::object());
  ASSERT_TRUE(wait_until([&] { return pair.count("long", "succeeded") == 1; }, 20s));
  const json transport = pair.consumer_transport->health();
  EXPECT_EQ(transport["expired"].get<std::uint64_t>(), 0u) << transport.dump();
  EXPECT_GE(transport["in_progress"].get<std::uint64_t>(), 3u) << transport.dump();
  EXPECT_EQ(pair.count("long", "held"), 0u);
  EXPECT_EQ(calls.load(), 1);
}

TEST_P(Durable, ExecuteWithoutAnSqlStoreFailsNamingTheStoreToUse) {
  Pair pair(GetParam());
  n::DurableOptions options = fast_options();
  options.max_attempts = 1;
  pair.consumer->subscribe_durable("sql", "x.y", [](const n::Event&, n::DurableContext& context) {
    context.execute("INSERT INTO t VALUES (?1)", json::array({1}));
  }, options);
  pair.start();
  pair.instrument("x.y", json::object());
  ASSERT_TRUE(wait_until([&] { return pair.count("sql", "dead_lettered") == 1; }, 20s));
  const auto letters = pair.consumer->durable_store("sql")->dead_letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_NE(letters[0].last_error.find("make_sqlite_durable_store"), std::string::npos) << letters[0].last_error;
}

// Without acknowledgements (local retries) and with them (naks carrying the backoff).
INSTANTIATE_TEST_SUITE_P(Transports, Durable, ::testing::Values("memory", "mock", "memory_acks", "mock_acks"),
                         [](const auto& info) { return info.param; });

TEST(DurableSetup, BadNamesPatternsAndOptionsAreRefusedNamingThem) {
  n::Notifier notifier;
  n::Bridge bridge(notifier, n::make_memory_transport({.broker = unique_broker("durable-setup")}), config_for("s"));
  const n::DurableHandler noop = [](const n::Event&, n::DurableContext&) {};
  const auto message_of = [&](const std::string& name, const std::string& pattern, n::DurableOptions options) {
    try {
      bridge.subscribe_durable(name, pattern, noop, options);
    } catch (const n::DurableError& error) {
      return std::string(error.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(message_of("a.b", "x", {}).find("one token"), std::string::npos);
  EXPECT_NE(message_of("bill ing", "x", {}).find("bill ing"), std::string::npos);
  EXPECT_NE(message_of("ok", "x..y", {}).find("pattern"), std::string::npos);
  n::DurableOptions zero;
  zero.max_attempts = 0;
  EXPECT_NE(message_of("ok", "x", zero).find("max_attempts"), std::string::npos);
  n::DurableOptions jitter;
  jitter.backoff.jitter = 1.5;
  EXPECT_NE(message_of("ok", "x", jitter).find("backoff.jitter"), std::string::npos);
  n::DurableOptions revive;
  revive.revive_after = revive.handler_deadline;
  EXPECT_NE(message_of("ok", "x", revive).find("revive_after"), std::string::npos);
  n::DurableOptions start;
  start.start = n::StartPosition::all_retained();
  EXPECT_NE(message_of("ok", "x", start).find("start"), std::string::npos);
  n::DurableOptions ack;
  ack.ack_wait = 1s;
  EXPECT_NE(message_of("ok", "x", ack).find("ack_wait"), std::string::npos);
  EXPECT_EQ(message_of("ok", "x", {}), "(accepted)");
  EXPECT_NE(message_of("ok", "y", {}).find("already registered"), std::string::npos);
  EXPECT_THROW(bridge.durable_store("missing"), n::DurableError);
  bridge.shutdown(1s);
  EXPECT_NE(message_of("late", "x", {}).find("shut down"), std::string::npos);
}

TEST(DurableFork, AHandlerRegisteredBeforeAForkHandlesNothingInTheChildAndTakesNoLock) {
#if defined(NOTIFICATIONS_TEST_ASAN)
  GTEST_SKIP() << "ASan's allocator is not fork-safe (as in test_fork_transports.cpp)";
#endif
  n::Notifier notifier;
  n::Bridge bridge(notifier, n::make_memory_transport({.broker = unique_broker("durable-fork")}), config_for("f"));
  std::atomic<int> calls{0};
  bridge.subscribe_durable("h", "a.b", [&](const n::Event&, n::DurableContext&) { calls.fetch_add(1); });
  bridge.start();
  n::prepare_fork();
  const pid_t child = ::fork();
  if (child == 0) {
    n::after_fork();
    // The child: the handler's threads stayed in the parent.
    int code = 0;
    const json health = bridge.health()["durable"]["h"];
    if (health["state"] != "forked_child") code = 1;
    notifier.instrument("a.b", json::object());  // forwarded and received here: naked, not run
    bridge.flush(2s);
    const n::ShutdownReport report = bridge.shutdown(2s);
    if (calls.load() != 0) code = 2;
    (void)report;
    ::_exit(code);
  }
  n::after_fork();
  ASSERT_GT(child, 0);
  const test_support::ChildResult ended = test_support::wait_for_child(child, 20s);
  ASSERT_TRUE(ended.exited) << ended.describe();
  EXPECT_EQ(ended.exit_code, 0) << "1: health did not say forked_child; 2: the handler ran in the child";
  // The parent's handler still runs.
  notifier.instrument("a.b", json::object());
  EXPECT_TRUE(wait_until([&] { return calls.load() == 1; }, 20s));
  bridge.shutdown(5s);
}

TEST(DurableBackoff, DelaysGrowByTheMultiplierUpToTheMaxAndJitterOnlyShortens) {
  n::Backoff backoff{.initial = 100ms, .max = 1000ms, .multiplier = 3.0, .jitter = 0.5};
  EXPECT_EQ(backoff.delay(1), 100ms);
  EXPECT_EQ(backoff.delay(2), 300ms);
  EXPECT_EQ(backoff.delay(3), 900ms);
  EXPECT_EQ(backoff.delay(4), 1000ms);
  for (int i = 0; i < 100; ++i) {
    const auto d = backoff.jittered(2);
    EXPECT_LE(d, 300ms);
    EXPECT_GE(d, 150ms);
  }
}

TEST(DurableMemoryStore, ClaimOutcomesTakeoverDeadLettersAndPruningFollowTheContract) {
  auto store = n::make_memory_durable_store();
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  using Outcome = n::InboxClaim::Outcome;
  EXPECT_EQ(store->claim("h", "e1", a, 10s).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("h", "e1", b, 10s).outcome, Outcome::held);      // a is alive and renews
  EXPECT_EQ(store->claim("other", "e1", b, 10s).outcome, Outcome::claimed);  // per handler
  EXPECT_EQ(store->fail("h", "e1", a, "boom"), 1u);
  const n::InboxClaim again = store->claim("h", "e1", b, 10s);             // released by fail()
  EXPECT_EQ(again.outcome, Outcome::claimed);
  EXPECT_EQ(again.failed_attempts, 1u);
  EXPECT_EQ(again.last_error, "boom");
  EXPECT_FALSE(store->work("h", "e1", a)->complete());  // not a's claim any more
  EXPECT_TRUE(store->work("h", "e1", b)->complete());
  EXPECT_EQ(store->claim("h", "e1", a, 10s).outcome, Outcome::done);
  // Taken over at once when the owner is gone, after revive_after when it does not renew.
  EXPECT_EQ(store->claim("h", "e2", a, 10s).outcome, Outcome::claimed);
  n::release_durable_owner(a);
  EXPECT_EQ(store->claim("h", "e2", b, 10s).outcome, Outcome::claimed);
  const std::string c = n::durable_owner();
  EXPECT_EQ(store->claim("h", "e3", c, 10s).outcome, Outcome::claimed);
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(store->claim("h", "e3", b, 20ms).outcome, Outcome::claimed);
  // A dead letter marks its event dead; replay claims it again; a done row stays done.
  n::DeadLetter letter;
  letter.handler = "h";
  letter.event_id = "e3";
  letter.reason = "max_attempts";
  const std::uint64_t id = store->add_dead_letter(letter, b);
  EXPECT_EQ(store->claim("h", "e3", b, 10s).outcome, Outcome::dead);
  EXPECT_EQ(store->claim("h", "e3", b, 10s, /*replay=*/true).outcome, Outcome::claimed);
  store->update_dead_letter(id, "again", b);
  EXPECT_EQ(store->dead_letter(id)->attempts, 1u);
  EXPECT_EQ(store->claim("h", "e3", b, 10s).outcome, Outcome::dead);
  letter.event_id = "e1";  // done: a dead letter does not undo it
  store->add_dead_letter(letter, b);
  EXPECT_EQ(store->claim("h", "e1", b, 10s).outcome, Outcome::done);
  EXPECT_EQ(store->dead_letters({.handler = "h", .limit = 1}).size(), 1u);
  EXPECT_EQ(store->dead_letters({.handler = "h", .after_id = id}).size(), 1u);
  EXPECT_EQ(store->purge_dead_letters("h"), 2u);
  EXPECT_FALSE(store->remove_dead_letter(id));
  // claim_many as claim, one by one; release gives a claim back without a failure.
  const auto many = store->claim_many("many", {"m1", "m2"}, b, 10s);
  ASSERT_EQ(many.size(), 2u);
  EXPECT_EQ(many[1].outcome, Outcome::claimed);
  store->release("many", {"m1"}, c);  // not c's: stays b's
  EXPECT_EQ(store->claim("many", "m1", c, 10s).outcome, Outcome::held);
  store->release("many", {"m1"}, b);
  const n::InboxClaim freed = store->claim("many", "m1", c, 10s);
  EXPECT_EQ(freed.outcome, Outcome::claimed);
  EXPECT_EQ(freed.failed_attempts, 0u);
  // Pruning keeps the newest `keep` done rows: a pruned event runs again.
  for (int i = 0; i < 5; ++i) {
    const std::string event = "p" + std::to_string(i);
    ASSERT_EQ(store->claim("prune", event, b, 10s).outcome, Outcome::claimed);
    ASSERT_TRUE(store->work("prune", event, b)->complete());
  }
  EXPECT_EQ(store->prune_done("prune", 2, std::chrono::hours(1)), 3u);
  EXPECT_EQ(store->claim("prune", "p0", b, 10s).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("prune", "p4", b, 10s).outcome, Outcome::done);
  n::release_durable_owner(b);
  n::release_durable_owner(c);
}

TEST(DurableMemoryStore, TakeBackRemovesTheLetterAndMakesOnlyADeadEventClaimableWithNoFailures) {
  auto store = n::make_memory_durable_store();
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  using Outcome = n::InboxClaim::Outcome;
  ASSERT_EQ(store->claim("h", "e1", a, 10s).outcome, Outcome::claimed);
  store->fail("h", "e1", a, "boom");
  ASSERT_EQ(store->claim("h", "e1", a, 10s).outcome, Outcome::claimed);
  n::DeadLetter letter;
  letter.handler = "h";
  letter.event_id = "e1";
  letter.subject = "test.order.placed";
  letter.body = "{}";
  letter.reason = "max_attempts";
  const std::uint64_t id = store->add_dead_letter(letter, a);
  ASSERT_EQ(store->claim("h", "e1", b, 10s).outcome, Outcome::dead);
  const auto taken = store->take_back_dead_letter(id);
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->event_id, "e1");
  EXPECT_EQ(taken->subject, "test.order.placed");
  EXPECT_FALSE(store->dead_letter(id).has_value());
  EXPECT_FALSE(store->take_back_dead_letter(id).has_value());
  const n::InboxClaim claim = store->claim("h", "e1", b, 10s);
  EXPECT_EQ(claim.outcome, Outcome::claimed);
  EXPECT_EQ(claim.failed_attempts, 0u);
  EXPECT_EQ(claim.last_error, "");
  // Done stays done; while a replay runs (its owner's claim), the take-back is refused and
  // changes nothing.
  ASSERT_TRUE(store->work("h", "e1", b)->complete());
  const std::uint64_t done = store->add_dead_letter(letter, b);
  ASSERT_TRUE(store->take_back_dead_letter(done).has_value());
  EXPECT_EQ(store->claim("h", "e1", a, 10s).outcome, Outcome::done);
  letter.event_id = "e2";
  ASSERT_EQ(store->claim("h", "e2", a, 10s).outcome, Outcome::claimed);
  const std::uint64_t running = store->add_dead_letter(letter, a);
  ASSERT_EQ(store->claim("h", "e2", a, 10s, /*replay=*/true).outcome, Outcome::claimed);
  EXPECT_THROW(store->take_back_dead_letter(running), n::DeadLetterInUse);
  EXPECT_TRUE(store->dead_letter(running).has_value()) << "the letter stays";
  EXPECT_EQ(store->claim("h", "e2", b, 10s).outcome, Outcome::held);
  n::release_durable_owner(a);
  n::release_durable_owner(b);
}

TEST(DurableOwners, AnOwnerIsGoneOnceReleasedOrWhenItsProcessDoesNotExist) {
  const std::string owner = n::durable_owner();
  EXPECT_FALSE(n::durable_owner_gone(owner));
  n::release_durable_owner(owner);
  EXPECT_TRUE(n::durable_owner_gone(owner));
  EXPECT_FALSE(n::durable_owner_gone("not-an-owner"));
  EXPECT_TRUE(n::durable_owner_gone("4194305:x"));  // above the largest pid_max Linux allows
}

}  // namespace
