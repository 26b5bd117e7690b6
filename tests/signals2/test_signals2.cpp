// notifications::signals2 (include/notifications/signals2.hpp, docs/signals2.md): signals whose
// emissions become events, and Signals2 slots whose tracked objects end their subscription.
// Every loop is bounded in count and in time.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/make_shared.hpp>
#include <boost/shared_ptr.hpp>
#include <boost/signals2/signal.hpp>

#include "notifications/errors.hpp"
#include "notifications/notifier.hpp"
#include "notifications/signals2.hpp"
#include "notifications/testing.hpp"
#include "scale.hpp"
#include "wait.hpp"

namespace {

using nlohmann::json;
using notifications::Event;
using notifications::Notifier;
using notifications::Subscription;
using notifications::signals2::EventSlot;
using OrderPlaced = boost::signals2::signal<void(int, const std::string&)>;

json order_payload(int id, const std::string& customer) { return json{{"id", id}, {"customer", customer}}; }

// ---- Signal -> bus ------------------------------------------------------------------------------

TEST(Signals2Connect, EmissionBecomesInstantEventWithBuiltPayload) {
  Notifier notifier;
  OrderPlaced placed;
  const unsigned connect_line = __LINE__ + 2;
  const boost::signals2::scoped_connection connection =
      notifications::signals2::connect(placed, notifier, "order.placed", order_payload);
  const auto events = notifications::testing::capture(notifier, "order.placed", [&] {
    placed(7, "ada");
    placed(8, "bob");
  });
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].name(), "order.placed");
  EXPECT_EQ(events[0].payload(), order_payload(7, "ada"));
  EXPECT_EQ(events[1].payload(), order_payload(8, "bob"));
  EXPECT_EQ(events[0].duration().count(), 0);  // instant
  EXPECT_EQ(events[0].source_location().line, connect_line) << "the location is the connect() call's";
  EXPECT_NE(std::string_view(events[0].source_location().file).find("test_signals2.cpp"), std::string_view::npos);
}

TEST(Signals2Connect, SlotsAlreadyConnectedStillRun) {
  Notifier notifier;
  OrderPlaced placed;
  int plain = 0;
  placed.connect([&](int, const std::string&) { ++plain; });
  const boost::signals2::scoped_connection connection =
      notifications::signals2::connect(placed, notifier, "order.placed", order_payload);
  const auto events = notifications::testing::capture(notifier, "order.placed", [&] { placed(1, "x"); });
  EXPECT_EQ(plain, 1);
  EXPECT_EQ(events.size(), 1u);
}

TEST(Signals2Connect, BuilderIsNotCalledWhenNobodyListens) {
  Notifier notifier;
  OrderPlaced placed;
  auto built = std::make_shared<std::atomic<int>>(0);
  const boost::signals2::scoped_connection connection = notifications::signals2::connect(
      placed, notifier, "order.placed", [built](int id, const std::string& customer) {
        built->fetch_add(1);
        return order_payload(id, customer);
      });
  placed(1, "nobody subscribed at all");
  EXPECT_EQ(built->load(), 0);
  {
    const Subscription other = notifier.subscribe("order.shipped", [](const Event&) {});
    placed(2, "someone listens to another name");
    EXPECT_EQ(built->load(), 0);
  }
  {
    int seen = 0;
    const Subscription listener = notifier.subscribe("order.*", [&](const Event&) { ++seen; });
    placed(3, "listened to");
    EXPECT_EQ(built->load(), 1);
    EXPECT_EQ(seen, 1);
  }
  placed(4, "unsubscribed again");
  EXPECT_EQ(built->load(), 1);
}

TEST(Signals2Connect, DisconnectStopsEvents) {
  Notifier notifier;
  OrderPlaced placed;
  boost::signals2::connection connection =
      notifications::signals2::connect(placed, notifier, "order.placed", order_payload);
  std::vector<json> payloads;
  const Subscription listener =
      notifier.subscribe("order.placed", [&](const Event& e) { payloads.push_back(e.payload()); });
  placed(1, "before");
  connection.disconnect();
  placed(2, "after");
  {
    const boost::signals2::scoped_connection scoped =
        notifications::signals2::connect(placed, notifier, "order.placed", order_payload);
    placed(3, "scoped");
  }
  placed(4, "scoped connection gone");
  ASSERT_EQ(payloads.size(), 2u);
  EXPECT_EQ(payloads[0]["id"], 1);
  EXPECT_EQ(payloads[1]["id"], 3);
}

TEST(Signals2Connect, BuilderExceptionReachesTheEmitterAndPublishesNothing) {
  Notifier notifier;
  OrderPlaced placed;
  const boost::signals2::scoped_connection connection = notifications::signals2::connect(
      placed, notifier, "order.placed", [](int id, const std::string& customer) {
        if (id < 0) throw std::invalid_argument("negative id");
        return order_payload(id, customer);
      });
  std::vector<json> payloads;
  const Subscription listener =
      notifier.subscribe("order.placed", [&](const Event& e) { payloads.push_back(e.payload()); });
  EXPECT_THROW(placed(-1, "bad"), std::invalid_argument);
  EXPECT_TRUE(payloads.empty());
  placed(2, "good");  // the connection stays
  ASSERT_EQ(payloads.size(), 1u);
  EXPECT_EQ(payloads[0]["id"], 2);
  EXPECT_EQ(notifier.stats().subscriber_errors, 0u);  // not a subscriber's error
}

TEST(Signals2Connect, DefaultNotifierAndConnectionOutlivingItsNotifier) {
  OrderPlaced placed;
  const boost::signals2::scoped_connection on_default =
      notifications::signals2::connect(placed, "signals2_test.default", order_payload);
  const auto events = notifications::testing::capture("signals2_test.default", [&] { placed(5, "d"); });
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].payload(), order_payload(5, "d"));

  auto notifier = std::make_unique<Notifier>();
  const boost::signals2::scoped_connection connection =
      notifications::signals2::connect(placed, *notifier, "order.placed", order_payload);
  Subscription listener = notifier->subscribe("order.placed", [](const Event&) {});
  notifier.reset();
  placed(6, "after the notifier");  // publishes nothing, does not crash (ASan build)
  EXPECT_FALSE(listener.active());
}

TEST(Signals2Connect, EmptyNameIsRefusedAtConnect) {
  Notifier notifier;
  OrderPlaced placed;
  EXPECT_THROW(notifications::signals2::connect(placed, notifier, "", order_payload),
               notifications::InvalidName);
  EXPECT_EQ(placed.num_slots(), 0u);
}

// ---- Bus -> slot --------------------------------------------------------------------------------

struct Audit {
  std::vector<std::string> names;
  void on_event(const Event& event) { names.emplace_back(event.name()); }
};

EventSlot audit_slot(const std::shared_ptr<Audit>& audit) {
  Audit* raw = audit.get();  // the slot owns no reference: tracking decides its life
  return EventSlot([raw](const Event& event) { raw->on_event(event); }).track_foreign(audit);
}

TEST(Signals2Subscribe, SlotReceivesMatchingEvents) {
  Notifier notifier;
  auto audit = std::make_shared<Audit>();
  const Subscription subscription =
      notifications::signals2::subscribe(notifier, "order.*", audit_slot(audit));
  notifier.instrument("order.placed");
  notifier.instrument("user.created");
  notifier.instrument("order.shipped");
  EXPECT_EQ(audit->names, (std::vector<std::string>{"order.placed", "order.shipped"}));
  EXPECT_TRUE(subscription.active());
}

TEST(Signals2Subscribe, TrackForeignExpiryEndsTheSubscriptionOnTheNextEvent) {
  Notifier notifier;
  auto audit = std::make_shared<Audit>();
  std::weak_ptr<Audit> watch = audit;
  auto calls = std::make_shared<int>(0);
  Audit* raw = audit.get();
  const Subscription subscription = notifications::signals2::subscribe(
      notifier, "order.placed", EventSlot([raw, calls](const Event& event) {
                                  ++*calls;
                                  raw->on_event(event);
                                }).track_foreign(audit));
  notifier.instrument("order.placed");
  EXPECT_EQ(*calls, 1);
  EXPECT_EQ(notifier.stats().subscriptions, 1u);

  audit.reset();
  ASSERT_TRUE(watch.expired());
  // As documented: still registered until an event reaches it.
  EXPECT_TRUE(notifier.listening("order.placed"));
  notifier.instrument("order.placed");
  EXPECT_EQ(*calls, 1);  // not called after the expiry
  EXPECT_FALSE(notifier.listening("order.placed"));
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
  EXPECT_FALSE(subscription.active());
}

TEST(Signals2Subscribe, TrackOfABoostSharedPtrEndsTheSubscriptionToo) {
  Notifier notifier;
  auto owner = boost::make_shared<int>(0);
  int* raw = owner.get();
  const Subscription subscription = notifications::signals2::subscribe(
      notifier, "tick", EventSlot([raw](const Event&) { ++*raw; }).track(owner));
  notifier.instrument("tick");
  EXPECT_EQ(*owner, 1);
  owner.reset();
  notifier.instrument("tick");
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
  EXPECT_FALSE(subscription.active());
}

TEST(Signals2Subscribe, TrackedObjectsStayAliveForTheWholeCall) {
  Notifier notifier;
  struct Probe {
    explicit Probe(std::atomic<bool>* flag) : destroyed(flag) {}
    ~Probe() { destroyed->store(true); }
    std::atomic<bool>* destroyed;
  };
  std::atomic<bool> destroyed{false};
  auto probe = std::make_shared<Probe>(&destroyed);
  bool alive_after_owner_reset = false;
  const Subscription subscription = notifications::signals2::subscribe(
      notifier, "tick", EventSlot([&](const Event&) {
                          probe.reset();  // the only owner lets go during the call
                          alive_after_owner_reset = !destroyed.load();
                        }).track_foreign(probe));
  notifier.instrument("tick");
  EXPECT_TRUE(alive_after_owner_reset);  // the slot's lock held it
  EXPECT_TRUE(destroyed.load());         // and released it after the call
  notifier.instrument("tick");
  EXPECT_FALSE(subscription.active());
}

TEST(Signals2Subscribe, AlreadyExpiredSlotSubscribesNothing) {
  Notifier notifier;
  auto audit = std::make_shared<Audit>();
  EventSlot slot = audit_slot(audit);
  audit.reset();
  const Subscription subscription = notifications::signals2::subscribe(notifier, "tick", slot);
  EXPECT_FALSE(subscription.active());
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
}

TEST(Signals2Subscribe, UnsubscribeStopsAnUntrackedSlot) {
  Notifier notifier;
  int calls = 0;
  Subscription subscription =
      notifications::signals2::subscribe(notifier, "tick", EventSlot([&](const Event&) { ++calls; }));
  notifier.instrument("tick");
  subscription.unsubscribe();
  notifier.instrument("tick");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
}

TEST(Signals2Subscribe, SlotExceptionGoesToTheErrorHandler) {
  std::atomic<int> handled{0};
  notifications::NotifierOptions options;
  options.error_handler = [&](const notifications::SubscriberFailure&) { handled.fetch_add(1); };
  Notifier notifier(options);
  auto audit = std::make_shared<Audit>();
  const Subscription failing = notifications::signals2::subscribe(
      notifier, "tick", EventSlot([](const Event&) { throw std::runtime_error("slot failed"); }));
  const Subscription other = notifications::signals2::subscribe(notifier, "tick", audit_slot(audit));
  EXPECT_NO_THROW(notifier.instrument("tick"));
  EXPECT_EQ(handled.load(), 1);
  EXPECT_EQ(audit->names.size(), 1u);
  EXPECT_TRUE(failing.active());
}

// Objects reset on one thread while two others dispatch to their slots: a slot never runs on a
// destroyed object (the destructor checks that no call is in progress; ASan sees a use after
// free, TSan a race), and every expired subscription is gone after one more event.
TEST(Signals2Subscribe, ExpiryRacesWithDispatch) {
  Notifier notifier;
  struct Target {
    std::atomic<int> in_call{0};
    std::atomic<long> hits{0};
    std::atomic<int>* destroyed_during_call;
    explicit Target(std::atomic<int>* flag) : destroyed_during_call(flag) {}
    ~Target() {
      if (in_call.load() != 0) destroyed_during_call->fetch_add(1);
    }
  };
  std::atomic<int> destroyed_during_call{0};
  std::atomic<bool> stop{false};
  std::atomic<int> dispatchers_done{0};
  const long max_events_per_thread = 2'000'000 / test_support::kScale;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  auto dispatch = [&] {
    for (long i = 0; i < max_events_per_thread && !stop.load(); ++i) {
      notifier.instrument("stress.tick");
      if (std::chrono::steady_clock::now() > deadline) break;
    }
    dispatchers_done.fetch_add(1);
  };
  std::thread first(dispatch);
  std::thread second(dispatch);

  const int rounds = 400 / test_support::kScale;
  std::vector<Subscription> subscriptions;
  int rounds_hit = 0;
  for (int round = 0; round < rounds && dispatchers_done.load() == 0 &&
                      std::chrono::steady_clock::now() < deadline;
       ++round) {
    auto target = std::make_shared<Target>(&destroyed_during_call);
    Target* raw = target.get();
    subscriptions.push_back(notifications::signals2::subscribe(
        notifier, "stress.tick", EventSlot([raw](const Event&) {
                                   raw->in_call.fetch_add(1);
                                   raw->hits.fetch_add(1);
                                   raw->in_call.fetch_sub(1);
                                 }).track_foreign(target)));
    // Let the dispatchers reach it (bounded), then drop the only owner while they dispatch.
    test_support::wait_until([&] { return raw->hits.load() > 0 || dispatchers_done.load() > 0; },
                             std::chrono::milliseconds(500));
    if (raw->hits.load() > 0) ++rounds_hit;
    target.reset();
  }
  stop.store(true);
  first.join();
  second.join();

  notifier.instrument("stress.tick");  // the event after the expiry of any not yet removed
  EXPECT_EQ(destroyed_during_call.load(), 0);
  EXPECT_GT(rounds_hit, 0);
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
  for (const auto& subscription : subscriptions) EXPECT_FALSE(subscription.active());
}

}  // namespace
