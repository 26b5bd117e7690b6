// The JetStream transport against real nats-server -js processes on 127.0.0.1: its URL and
// options, provisioning (create, verify-only, overlaps, a server without JetStream), what
// "published" means, the server's dedupe, durable names, and events that all arrive once while
// the server is killed and restarted under a forwarding Bridge.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "jetstream_test_support.hpp"
#include "child_process.hpp"
#include "nats_server.hpp"
#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/fork.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/jetstream.hpp"
#include "scale.hpp"
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

n::Message message(const std::string& subject, const std::string& body, const std::string& id) {
  return n::Message{subject, body, {}, id};
}

// ---- options --------------------------------------------------------------------------------

TEST(JetStreamOptions, UrlQueryAndOptionsAreReadTheUrlWinning) {
  n::TransportConfig config;
  config.url =
      "jetstream://alice:s3cret@127.0.0.1:4333?stream=ORDERS&subjects=orders.>,billing.*&duplicate_window_ms=60000"
      "&provision=verify&max_reconnect=3&fetch_batch=32";
  config.options = {{"stream", "IGNORED"}, {"replicas", 3}, {"storage", "memory"}, {"ack_wait_ms", 1500}};
  const n::JetStreamOptions o = n::jetstream_options_from_config(config);
  EXPECT_EQ(o.stream, "ORDERS");
  EXPECT_EQ(o.subjects, (std::vector<std::string>{"orders.>", "billing.*"}));
  EXPECT_EQ(o.duplicate_window, 60s);
  EXPECT_EQ(o.provision, n::JetStreamOptions::Provision::verify);
  EXPECT_EQ(o.replicas, 3);
  EXPECT_FALSE(o.file_storage);
  EXPECT_EQ(o.ack_wait, 1500ms);
  EXPECT_EQ(o.fetch_batch, 32);
  EXPECT_EQ(o.connection.servers, (std::vector<std::string>{"nats://127.0.0.1:4333"}));
  EXPECT_EQ(o.connection.user, "alice");
  EXPECT_EQ(o.connection.password, "s3cret");
  EXPECT_EQ(o.connection.max_reconnect, 3);
}

TEST(JetStreamOptions, BadKeysAndValuesAreNamedWithoutCredentials) {
  const auto error = [](const std::string& url, json options = json::object()) {
    return error_of([&] { n::jetstream_options_from_config({url, options}); });
  };
  const std::string unknown = error("jetstream://bob:hunter2@127.0.0.1?strem=X");
  EXPECT_NE(unknown.find("\"strem\""), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("stream"), std::string::npos) << "lists the JetStream keys: " << unknown;
  EXPECT_EQ(unknown.find("hunter2"), std::string::npos) << unknown;
  const std::string provision = error("jetstream://127.0.0.1?provision=maybe");
  EXPECT_NE(provision.find("provision"), std::string::npos) << provision;
  EXPECT_NE(provision.find("create or verify"), std::string::npos) << provision;
  const std::string stream = error("jetstream://127.0.0.1?stream=a.b");
  EXPECT_NE(stream.find("stream \"a.b\""), std::string::npos) << stream;
  const std::string subjects = error("jetstream://127.0.0.1", {{"subjects", json::array({"ok.>", "bad..subject"})}});
  EXPECT_NE(subjects.find("bad..subject"), std::string::npos) << subjects;
  const std::string window = error("jetstream://127.0.0.1?duplicate_window_ms=5000&max_age_ms=1000");
  EXPECT_NE(window.find("duplicate_window_ms"), std::string::npos) << window;
  const std::string scheme = error("nats://127.0.0.1");
  EXPECT_NE(scheme.find("jetstream://"), std::string::npos) << scheme;
}

TEST(JetStream, MakeTransportKnowsTheScheme) {
  NatsServer server(with_jetstream());
  const std::string url = "jetstream://127.0.0.1:" + std::to_string(server.port()) + "?stream=SCHEME&subjects=scheme.>";
  auto transport = n::make_transport({url, json::object()});
  EXPECT_EQ(transport->kind(), "jetstream");
  EXPECT_TRUE(transport->capabilities().persistent);
  EXPECT_EQ(transport->capabilities().dedupe_window, n::JetStreamOptions{}.duplicate_window);
  transport->start();
  const json health = transport->health();
  EXPECT_EQ(health["stream"], "SCHEME");
  EXPECT_EQ(health["provisioned"], true);
  EXPECT_EQ(health["connection"], "connected");
  transport->stop(in(5s));
}

// ---- provisioning -----------------------------------------------------------------------------

TEST(JetStream, VerifyOnlyRefusesAMissingStreamNamingIt) {
  NatsServer server(with_jetstream());
  auto options = jetstream_options_for(server.url(), "MISSING", {"missing.>"});
  options.provision = n::JetStreamOptions::Provision::verify;
  auto transport = n::make_jetstream_transport(options);
  const std::string error = error_of([&] { transport->start(); });
  EXPECT_NE(error.find("stream \"MISSING\" does not exist"), std::string::npos) << error;
  EXPECT_NE(error.find("provision=verify"), std::string::npos) << error;
  EXPECT_EQ(transport->health()["state"], "created") << "a failed start leaves the transport created";
  transport->stop(in(5s));
}

TEST(JetStream, VerifyOnlyUsesAnExistingStreamAndNamesTheSubjectsItLacks) {
  NatsServer server(with_jetstream());
  auto creator = started(jetstream_options_for(server.url(), "SHARED", {"shared.>"}));
  auto options = jetstream_options_for(server.url(), "SHARED", {"shared.>"});
  options.provision = n::JetStreamOptions::Provision::verify;
  auto verifier = started(options);
  EXPECT_EQ(test_support::publish1(*verifier, message("shared.x", "1", "v-1")).published, 1u);
  verifier->stop(in(5s));
  options.subjects = {"shared.>", "other.>"};
  auto lacking = n::make_jetstream_transport(options);
  const std::string error = error_of([&] { lacking->start(); });
  EXPECT_NE(error.find("does not store subjects [\"other.>\"]"), std::string::npos) << error;
  lacking->stop(in(5s));
  creator->stop(in(5s));
}

TEST(JetStream, CreateAddsItsSubjectsToAnExistingStream) {
  NatsServer server(with_jetstream());
  auto first = started(jetstream_options_for(server.url(), "GROWING", {"one.>"}));
  auto second = started(jetstream_options_for(server.url(), "GROWING", {"two.>"}));
  EXPECT_EQ(test_support::publish1(*second, message("one.x", "1", "g-1")).published, 1u) << "kept the first's";
  EXPECT_EQ(test_support::publish1(*second, message("two.x", "2", "g-2")).published, 1u) << "added its own";
  EXPECT_EQ(second->health()["stream_messages"], 2);
  second->stop(in(5s));
  first->stop(in(5s));
}

TEST(JetStream, OverlappingSubjectsAreReportedNotMerged) {
  NatsServer server(with_jetstream());
  auto first = started(jetstream_options_for(server.url(), "FIRST", {"orders.>"}));
  auto second = n::make_jetstream_transport(jetstream_options_for(server.url(), "SECOND", {"orders.eu.>"}));
  const std::string error = error_of([&] { second->start(); });
  EXPECT_NE(error.find("stream \"SECOND\""), std::string::npos) << error;
  EXPECT_NE(error.find("overlap"), std::string::npos) << error;
  second->stop(in(5s));
  first->stop(in(5s));
}

TEST(JetStream, AServerWithoutJetStreamIsNamed) {
  NatsServer server;  // no -js
  auto transport = n::make_jetstream_transport(jetstream_options_for(server.url(), "NONE", {"none.>"}));
  const std::string error = error_of([&] { transport->start(); });
  EXPECT_NE(error.find("without JetStream"), std::string::npos) << error;
  transport->stop(in(5s));
}

// ---- publishing -------------------------------------------------------------------------------

TEST(JetStream, ARepeatedIdIsStoredOnceAndCountedAsADuplicate) {
  NatsServer server(with_jetstream());
  auto transport = started(jetstream_options_for(server.url(), "DEDUPE", {"dedupe.>"}));
  const std::vector<n::Message> batch{message("dedupe.a", "1", "id-1"), message("dedupe.a", "1", "id-1"),
                                      message("dedupe.a", "2", "id-2")};
  const n::PublishResult result = transport->publish(batch);
  EXPECT_EQ(result.published, 3u) << "a duplicate is acknowledged too: " << result.error;
  EXPECT_EQ(transport->publish(std::span(batch.data(), 1)).published, 1u);
  const json health = transport->health();
  EXPECT_EQ(health["stream_messages"], 2) << health.dump();
  EXPECT_EQ(health["duplicates"], 2) << health.dump();
  EXPECT_EQ(health["published"], 4) << health.dump();
  transport->stop(in(5s));
}

TEST(JetStream, PublishedCountsOnlyWhatTheServerAcknowledged) {
  NatsServer server(with_jetstream());
  auto options = jetstream_options_for(server.url(), "ACKED", {"acked.>"});
  options.publish_timeout = 300ms;
  auto transport = started(options);
  ASSERT_EQ(test_support::publish1(*transport, message("acked.x", "before", "a-1")).published, 1u);
  server.stop();
  const n::PublishResult down = test_support::publish1(*transport, message("acked.x", "during", "a-2"));
  EXPECT_EQ(down.published, 0u) << "nothing acknowledged while the server is down";
  EXPECT_TRUE(down.transient);
  EXPECT_FALSE(down.error.empty());
  server.start();
  // Sent again (as the Bridge does) once the server is back: stored once.
  ASSERT_TRUE(wait_until([&] { return test_support::publish1(*transport, message("acked.x", "during", "a-2")).published == 1; },
                         20s));
  EXPECT_EQ(transport->health()["stream_messages"], 2);
  transport->stop(in(5s));
}

// ---- consuming --------------------------------------------------------------------------------

TEST(JetStream, ADurableNameBoundToAnotherPatternIsRefused) {
  NatsServer server(with_jetstream());
  auto transport = started(jetstream_options_for(server.url(), "NAMES", {"names.>"}));
  n::DeliveryOptions options;
  options.durable = "reader";
  const auto id = transport->subscribe("names.a", options, [](n::Delivery&&) {});
  transport->unsubscribe(id);
  const std::string error = error_of([&] { transport->subscribe("names.b", options, [](n::Delivery&&) {}); });
  EXPECT_NE(error.find("\"reader\""), std::string::npos) << error;
  EXPECT_NE(error.find("durable"), std::string::npos) << error;
  options.durable = "bad.name";
  const std::string bad = error_of([&] { transport->subscribe("names.a", options, [](n::Delivery&&) {}); });
  EXPECT_NE(bad.find("durable \"bad.name\""), std::string::npos) << bad;
  transport->stop(in(5s));
}

// Delivery::more_follows is a promise that another delivery comes at once: never on the last
// message of a pull request whose ending status already waits behind it (the Bridge's dispatcher
// would sleep on that delivery until the next message).
TEST(JetStream, MoreFollowsIsNeverSetWhenOnlyARequestsEndFollows) {
  NatsServer server(with_jetstream());
  auto options = jetstream_options_for(server.url(), "HINTS", {"hints.>"});
  options.fetch_wait = 50ms;  // the request ends (408) while the first delivery is held below
  auto transport = started(options);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(test_support::publish1(*transport, message("hints.x", std::to_string(i), "h-" + std::to_string(i))).published,
              1u);
  }
  std::mutex mutex;
  std::vector<std::pair<std::string, bool>> seen;  // body, more_follows; guarded by mutex
  n::DeliveryOptions all;
  all.start = n::StartPosition::all_retained();
  transport->subscribe("hints.>", all, [&](n::Delivery&& d) {
    bool first = false;
    {
      std::lock_guard lock(mutex);
      seen.emplace_back(d.message.body, d.more_follows);
      first = seen.size() == 1;
    }
    if (first) std::this_thread::sleep_for(300ms);  // the rest, and the request's end, queue up
    d.settle(n::Settle::ack);
  });
  const auto count = [&] {
    std::lock_guard lock(mutex);
    return seen.size();
  };
  ASSERT_TRUE(wait_until([&] { return count() >= 3; }, 10s)) << count();
  std::lock_guard lock(mutex);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[2].first, "2");
  EXPECT_FALSE(seen[2].second) << "the last delivery was hinted with only the request's end behind it";
  EXPECT_TRUE(seen[1].second) << "the middle one had a delivery behind it";
  transport->stop(in(5s));
}

// stop(deadline) lets a pull request in flight end by itself, but not past its deadline: a long
// fetch_wait is cut short and counted.
TEST(JetStream, StopKeepsItsDeadlineWhileAPullRequestWaits) {
  NatsServer server(with_jetstream());
  auto options = jetstream_options_for(server.url(), "STOPS", {"stops.>"});
  options.fetch_wait = 20s;
  auto transport = started(options);
  transport->subscribe("stops.>", n::DeliveryOptions{}, [](n::Delivery&& d) { d.settle(n::Settle::ack); });
  ASSERT_TRUE(wait_until([&] { return transport->health()["pull_requests"].get<int>() >= 1; }, 10s));
  const auto begin = std::chrono::steady_clock::now();
  transport->stop(in(300ms));
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 10s) << "stop() waited for the 20 s pull request";
  EXPECT_EQ(transport->health()["requests_cut_short"], 1);
}

// A process that only subscribes, started while the server was away (retry_on_failed_connect),
// provisions the stream itself once the server is there: its consumer does not wait for some
// producer's first publish to create the stream (a consumer that reads only new messages would
// then miss what that first publish stored).
TEST(JetStream, ASubscriberStartedBeforeTheServerProvisionsTheStreamItself) {
  NatsServer server(with_jetstream());
  server.stop();
  auto options = jetstream_options_for(server.url(), "LATE", {"late.>"});
  options.connection.retry_on_failed_connect = true;
  auto subscriber = started(options);
  std::mutex mutex;
  std::vector<std::string> bodies;
  subscriber->subscribe("late.>", n::DeliveryOptions{}, [&](n::Delivery&& d) {
    {
      std::lock_guard lock(mutex);
      bodies.push_back(d.message.body);
    }
    d.settle(n::Settle::ack);
  });
  server.start();
  ASSERT_TRUE(wait_until([&] {
    const json health = subscriber->health();
    return health["provisioned"] == true && !health["subscriptions"][0]["consumer"].get<std::string>().empty();
  }, 30s)) << "the subscriber never provisioned the stream and made its consumer: " << subscriber->health().dump();
  auto publisher = started(options);
  const std::vector<n::Message> batch{message("late.a", "1", "late-1")};
  ASSERT_EQ(publisher->publish(batch).published, 1u);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mutex);
    return !bodies.empty();
  }, 10s)) << subscriber->health().dump();
  std::lock_guard lock(mutex);
  EXPECT_EQ(bodies, std::vector<std::string>{"1"});
  publisher->stop(in(5s));
  subscriber->stop(in(5s));
}

// from_time with a start whose fraction of a second is below 0.1 s: cnats 3.4.1 writes such a
// fraction without its leading zeros (x.025 s as ".25"), which would start the consumer after the
// messages published right after the start time.
TEST(JetStream, AStartTimeWithASmallFractionOfASecondIsHonoured) {
  NatsServer server(with_jetstream());
  auto transport = started(jetstream_options_for(server.url(), "TIMES", {"times.>"}));
  const auto publish = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      ASSERT_EQ(test_support::publish1(*transport, message("times.x", std::to_string(i), "t-" + std::to_string(i))).published,
                1u);
    }
  };
  publish(0, 5);
  using std::chrono::system_clock;
  const auto fraction = [] { return system_clock::now().time_since_epoch() % std::chrono::seconds(1); };
  ASSERT_TRUE(wait_until([&] { return fraction() >= 10ms && fraction() < 30ms; }, 3s));
  const auto t = system_clock::now();
  publish(5, 10);
  std::mutex mutex;
  std::vector<std::string> bodies;  // guarded by mutex
  n::DeliveryOptions options;
  options.start = n::StartPosition::from_time(t);
  transport->subscribe("times.>", options, [&](n::Delivery&& d) {
    std::lock_guard lock(mutex);
    bodies.push_back(d.message.body);
    d.settle(n::Settle::ack);
  });
  const auto count = [&] {
    std::lock_guard lock(mutex);
    return bodies.size();
  };
  EXPECT_TRUE(wait_until([&] { return count() >= 5; }, 10s)) << count() << " of the 5 messages after the start";
  std::this_thread::sleep_for(300ms);  // one more would show now
  std::lock_guard lock(mutex);
  EXPECT_EQ(bodies, (std::vector<std::string>{"5", "6", "7", "8", "9"}));
  transport->stop(in(5s));
}

// Two Bridges over the same JetStream options: one forwards "order.placed" events numbered by
// "i", the other runs a durable handler that counts its calls per number.
class ForwardAndCount {
 public:
  ForwardAndCount(const n::JetStreamOptions& options, const std::string& prefix, int events) {
    n::BridgeConfig producer_config;
    producer_config.app = "producer";
    producer_config.prefix = prefix;
    producer_config.subscribe = {};
    producer_config.retry.initial = 20ms;
    producer_config.retry.max = 200ms;
    // Room for every event while the server is away: these cases are about the transport, not
    // about the Bridge's overflow policy.
    producer_config.queue_capacity = static_cast<std::size_t>(events) * 2;
    n::BridgeConfig consumer_config = producer_config;
    consumer_config.app = "consumer";
    consumer_config.forward = {};
    producer = std::make_unique<n::Bridge>(producer_notifier, n::make_jetstream_transport(options), producer_config);
    consumer = std::make_unique<n::Bridge>(consumer_notifier, n::make_jetstream_transport(options), consumer_config);
    consumer->subscribe_durable("counter", "order.placed", [this](const n::Event& event, n::DurableContext&) {
      std::lock_guard lock(mutex_);
      ++calls_[event.payload()["i"].get<int>()];
    });
    producer->start();
    consumer->start();
  }
  ~ForwardAndCount() {
    producer->shutdown(10s);
    consumer->shutdown(10s);
  }
  void instrument(int i) { producer_notifier.instrument("order.placed", {{"i", i}}); }
  // Distinct events handled.
  std::size_t handled() {
    std::lock_guard lock(mutex_);
    return calls_.size();
  }
  // Events whose handler ran more than once.
  int handled_twice() {
    std::lock_guard lock(mutex_);
    int twice = 0;
    for (const auto& [i, count] : calls_) twice += count > 1 ? 1 : 0;
    return twice;
  }
  std::string health() { return "producer " + producer->health().dump() + "; consumer " + consumer->health().dump(); }

  n::Notifier producer_notifier;
  n::Notifier consumer_notifier;
  std::unique_ptr<n::Bridge> producer;
  std::unique_ptr<n::Bridge> consumer;

 private:
  std::mutex mutex_;
  std::map<int, int> calls_;  // event number -> handler calls; guarded by mutex_
};

// Events forwarded by one Bridge reach a durable handler of another exactly once, every one of
// them, while the server is killed (SIGKILL: no graceful shutdown) and restarted three times.
void run_chaos(n::JetStreamOptions::ConsumerType type, int events) {
  NatsServer server(with_jetstream());
  auto options = jetstream_options_for(server.url(), "CHAOS", {"chaos.>"});
  options.publish_timeout = 1s;
  options.consumer_type = type;
  options.idle_heartbeat = 500ms;
  // Push: what the server pushed to a subscription that died with the server comes again after
  // the ack wait; a short one keeps the case short.
  if (type == n::JetStreamOptions::ConsumerType::push) options.ack_wait = 3s;
  ForwardAndCount run(options, "chaos", events);
  std::thread instrumenting([&] {
    for (int i = 0; i < events; ++i) {
      run.instrument(i);
      if (i % 100 == 99) std::this_thread::sleep_for(1ms);  // spread over the kills
    }
  });
  // Killed and started from this thread: the harness ties the server's life to the thread that
  // last started it.
  for (int round = 1; round <= 3; ++round) {
    wait_until([&] { return run.handled() >= static_cast<std::size_t>(events * round / 4); }, 60s);
    server.kill_hard();
    std::this_thread::sleep_for(300ms);
    server.start();
  }
  instrumenting.join();
  ASSERT_TRUE(wait_until([&] { return run.handled() == static_cast<std::size_t>(events); }, 120s))
      << run.handled() << " of " << events << "; " << run.health() << "; server log: " << server.log_tail();
  std::this_thread::sleep_for(500ms);  // a second call would show now
  EXPECT_EQ(run.handled_twice(), 0) << "handlers that ran more than once";
  EXPECT_EQ(run.handled(), static_cast<std::size_t>(events));
}

TEST(JetStreamChaos, EveryEventIsHandledOnceWhileTheServerIsKilledAndRestarted) {
  run_chaos(n::JetStreamOptions::ConsumerType::pull, 100'000 / (test_support::kScale * test_support::kScale));
}

// The same with push consumers (fewer events: the kills are the point, and the pull case has the
// full count): after each restart the server pushes to the subscription cnats made again.
TEST(JetStreamChaos, WithPushConsumersEveryEventIsHandledOnceWhileTheServerIsKilledAndRestarted) {
  run_chaos(n::JetStreamOptions::ConsumerType::push, 20'000 / (test_support::kScale * test_support::kScale));
}

// A stream replicated on three clustered servers (R3): the server a producer and a consumer use
// is killed (SIGKILL) mid-run; both fail over to the others, and every event is handled once.
TEST(JetStreamCluster, KillingTheServerInUseLosesNothing) {
  NatsServerOptions common = with_jetstream();
  test_support::NatsCluster cluster(3, common);
  ASSERT_TRUE(cluster.wait_routes(2, 30s)) << "the three servers did not form a cluster";
  const int events = 3'000 / test_support::kScale;
  auto options = jetstream_options_for(cluster.node(0).url(), "CLUSTER", {"cluster.>"});
  options.connection.servers = cluster.urls();
  options.replicas = 3;
  options.publish_timeout = 2s;
  // The cluster elects its JetStream leader after it formed: the stream can be made once it has.
  ASSERT_TRUE(wait_until(
      [&] {
        try {
          started(options)->stop(in(5s));
          return true;
        } catch (const n::TransportError&) {
          return false;
        }
      },
      60s))
      << "the replicated stream could not be created";
  ForwardAndCount run(options, "cluster", events);
  for (int i = 0; i < events / 3; ++i) run.instrument(i);
  ASSERT_TRUE(wait_until([&] { return run.handled() >= static_cast<std::size_t>(events / 3); }, 60s)) << run.handled();
  // The server the producer is connected to now (the consumer may use it too).
  const std::string in_use = run.producer->health()["transport"]["server"].get<std::string>();
  int killed = -1;
  for (int node = 0; node < cluster.size(); ++node) {
    if (cluster.node(node).url() == in_use) killed = node;
  }
  ASSERT_GE(killed, 0) << "the server in use (" << in_use << ") is not one of the nodes";
  cluster.node(killed).kill_hard();
  for (int i = events / 3; i < events; ++i) run.instrument(i);
  ASSERT_TRUE(wait_until([&] { return run.handled() == static_cast<std::size_t>(events); }, 120s))
      << run.handled() << " of " << events << "; " << run.health();
  std::this_thread::sleep_for(500ms);  // a second call would show now
  EXPECT_EQ(run.handled_twice(), 0) << "handlers that ran more than once";
  EXPECT_NE(run.producer->health()["transport"]["server"], in_use) << "failed over";
}

// A pre-fork server over jetstream://: prepare_fork() closes the connection and stops the
// consumers; after_fork() opens them again in the parent and in each child, and both directions
// work in every process.
TEST(JetStreamFork, ParentAndChildrenPublishAndReceiveAfterFork) {
  NatsServer server(with_jetstream());
  auto options = jetstream_options_for(server.url(), "FORK", {"fork.>"});
  n::BridgeConfig config;
  config.app = "prefork";
  config.prefix = "fork";
  n::Notifier notifier;
  std::mutex mutex;
  std::set<std::string> heard;  // "<from>/<round>"; guarded by mutex
  auto listener = notifier.subscribe("worker.>", [&](const n::Event& e) {
    if (!e.remote()) return;
    std::lock_guard lock(mutex);
    heard.insert(e.payload().value("from", "") + "/" + std::to_string(e.payload().value("round", -1)));
  });
  const auto has = [&](const std::string& key) {
    std::lock_guard lock(mutex);
    return heard.count(key) != 0;
  };
  n::Bridge bridge(notifier, n::make_jetstream_transport(options), config);
  bridge.start();
  const int children = 2;
  for (int round = 0; round < 2; ++round) {
    std::vector<pid_t> pids;
    n::prepare_fork();
    for (int c = 0; c < children; ++c) {
      const pid_t pid = fork();
      ASSERT_GE(pid, 0) << "fork failed";
      if (pid == 0) {
        n::after_fork();
        const std::string me = "child-" + std::to_string(c);
        bool heard_parent = false;
        for (int i = 0; i < 400 && !heard_parent; ++i) {
          notifier.instrument("worker.child", {{"from", me}, {"round", round}});
          heard_parent = wait_until([&] { return has("parent/" + std::to_string(round)); }, 25ms);
        }
        const n::ShutdownReport report = bridge.shutdown(5s);
        _exit(!heard_parent ? 2 : report.clean ? 0 : 3);
      }
      pids.push_back(pid);
    }
    n::after_fork();
    std::size_t hung = 0;
    const std::vector<int> codes = test_support::reap_children_while(
        pids, 30s, 20ms, [&] { notifier.instrument("worker.parent", {{"from", "parent"}, {"round", round}}); }, hung);
    ASSERT_EQ(hung, 0u) << hung << " child(ren) hung in round " << round;
    for (int code : codes) EXPECT_EQ(code, 0) << "round " << round << " (2: never heard the parent, 3: unclean shutdown)";
    for (int c = 0; c < children; ++c) {
      EXPECT_TRUE(wait_until([&] { return has("child-" + std::to_string(c) + "/" + std::to_string(round)); }, 10s))
          << "the parent never heard child " << c << " in round " << round;
    }
  }
  EXPECT_TRUE(bridge.shutdown(10s).clean);
}

TEST(JetStream, HealthAndErrorsNeverShowThePassword) {
  NatsServerOptions server_options = with_jetstream();
  server_options.user = "svc";
  server_options.password = "pa55-w0rd-x";
  NatsServer server(server_options);
  auto options = jetstream_options_for(server.url(), "SECRET", {"secret.>"});
  options.connection.user = "svc";
  options.connection.password = "pa55-w0rd-x";
  auto transport = started(options);
  EXPECT_EQ(transport->health().dump().find("pa55-w0rd-x"), std::string::npos);
  transport->stop(in(5s));
  options.connection.password = "wrong-pa55";
  auto refused = n::make_jetstream_transport(options);
  const std::string error = error_of([&] { refused->start(); });
  EXPECT_FALSE(error.empty());
  EXPECT_EQ(error.find("wrong-pa55"), std::string::npos) << error;
  refused->stop(in(5s));
}

}  // namespace
