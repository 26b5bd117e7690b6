// The receiving Bridge's payloads (docs/bridge.md, promise 7): validated before any listener runs,
// built when a listener first reads one, or built at once while recent listeners read nearly
// every payload (PayloadReadGuess in remote/bridge_inbound.hpp). Whichever way, a listener and
// every copy of an event it keeps see the payload that was sent, and a malformed payload never
// reaches a listener. Every wait is bounded; nothing here asserts speed.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bridge_test_support.hpp"
#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/mock.hpp"
#include "remote/bridge_inbound.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::config_for;
using test_support::counter;
using test_support::unique_broker;

namespace {

using Guess = n::bridge_internal::PayloadReadGuess;

// Feeds `count` observations of `read` to `guess`, each after asking defer_next() as the Bridge
// does (only deferred events are observed); returns how many were deferred.
int feed(Guess& guess, int count, bool read) {
  int deferred = 0;
  for (int i = 0; i < count; ++i) {
    if (guess.defer_next()) {
      ++deferred;
      guess.observed(read);
    }
  }
  return deferred;
}

}  // namespace

TEST(PayloadReadGuess, DefersUntilListenersReadNearlyEveryPayloadThenProbes) {
  Guess guess;
  EXPECT_FALSE(guess.building_at_once());
  EXPECT_EQ(feed(guess, 100, false), 100) << "payloads no one reads are always deferred";
  EXPECT_EQ(feed(guess, Guess::kAtOnceFrom, true), Guess::kAtOnceFrom);
  EXPECT_TRUE(guess.building_at_once()) << "after " << Guess::kAtOnceFrom << " reads in a row";
  EXPECT_EQ(feed(guess, 10 * Guess::kProbeEvery, true), 10) << "one probe in kProbeEvery while building at once";
}

// Asks defer_next() until it says to defer (at most 100 times); returns how many times it asked.
int until_deferred(Guess& guess) {
  for (int asked = 1; asked <= 100; ++asked) {
    if (guess.defer_next()) return asked;
  }
  return -1;
}

TEST(PayloadReadGuess, ListenersThatStopReadingAreNoticedWithinAFewProbes) {
  Guess guess;
  feed(guess, 40 * Guess::kProbeEvery, true);  // the score is at its maximum
  ASSERT_TRUE(guess.building_at_once());
  ASSERT_GT(until_deferred(guess), 0);
  guess.observed(true);  // a probe cycle starts here
  // From the maximum, each unread probe lowers the score by kUnreadPenalty: 16, 12, 8 still build
  // at once, the third unread probe (4) defers again.
  const int probes_needed = (Guess::kMaxScore - Guess::kAtOnceFrom) / Guess::kUnreadPenalty + 1;
  for (int probe = 1; probe <= probes_needed; ++probe) {
    EXPECT_EQ(until_deferred(guess), Guess::kProbeEvery) << "probe " << probe;
    guess.observed(false);
    EXPECT_EQ(guess.building_at_once(), probe < probes_needed) << "after " << probe << " unread probe(s)";
  }
  EXPECT_EQ(until_deferred(guess), 1) << "deferring every payload again";
}

TEST(PayloadReadGuess, AProbeThatWasNotObservedIsTakenByTheNextEvent) {
  Guess guess;
  feed(guess, 40 * Guess::kProbeEvery, true);
  ASSERT_GT(until_deferred(guess), 0);
  guess.observed(true);
  EXPECT_EQ(until_deferred(guess), Guess::kProbeEvery);  // say its message was malformed: not observed
  EXPECT_TRUE(guess.defer_next()) << "the next event probes instead";
  guess.observed(true);
  EXPECT_FALSE(guess.defer_next());
}

TEST(PayloadReadGuess, HalfTheListenersReadingKeepsPayloadsDeferred) {
  Guess guess;
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(guess.defer_next()) << "event " << i;
    guess.observed(i % 2 == 0);
  }
  EXPECT_FALSE(guess.building_at_once());
}

namespace {

// A receiving Bridge on a mock broker and a raw peer that publishes envelopes to it.
struct Receiver {
  Receiver() {
    n::MockOptions options;
    options.broker = unique_broker("payload");
    peer = std::make_shared<n::MockTransport>(options);
    transport = std::make_shared<n::MockTransport>(options);
    subscription = notifier.subscribe("order.placed", [this](const n::Event& event) {
      std::lock_guard lock(mutex);
      if (reading) seen.push_back(event.payload());
      kept.push_back(event);  // copies, read later on another thread
      kept_twice.push_back(event);
    });
    bridge = std::make_unique<n::Bridge>(notifier, transport, config_for("receiver"));
    bridge->start();
    peer->start();
  }
  ~Receiver() {
    bridge->shutdown(5s);
    peer->stop(std::chrono::steady_clock::now() + 5s);
  }

  static n::Message message(int sequence, const json& payload) {
    n::Envelope envelope;
    envelope.name = "order.placed";
    envelope.producer = "peer";
    envelope.producer_instance = "peer-instance";
    envelope.id = "00000000-0000-4000-8000-" + std::string(12 - std::to_string(sequence).size(), '0') +
                  std::to_string(sequence);
    envelope.time = std::chrono::system_clock::now();
    envelope.sequence = static_cast<std::uint64_t>(sequence);
    envelope.payload = payload;
    return n::message_from_envelope(envelope, "test.order.placed");
  }
  static json payload_of(int i) {
    return {{"i", i}, {"note", "caf\xc3\xa9 \"q\" \\ \xf0\x9f\x98\x80"}, {"items", {1.5, nullptr, true, "mug"}}};
  }
  void send(const n::Message& m) { ASSERT_EQ(peer->publish(std::vector<n::Message>{m}).published, 1u); }
  bool settled(std::size_t deliveries) { return transport->wait_for_delivered(deliveries, 10s) && bridge->wait_delivered(10s); }

  n::Notifier notifier;
  std::shared_ptr<n::MockTransport> peer;
  std::shared_ptr<n::MockTransport> transport;
  n::Subscription subscription;
  std::unique_ptr<n::Bridge> bridge;
  std::mutex mutex;
  bool reading = true;
  std::vector<json> seen;
  std::vector<n::Event> kept;
  std::vector<n::Event> kept_twice;
  // Whether event i's payload was deferred: copies of such an event share one built value, while
  // copies of an event built at once each own theirs.
  bool deferred(std::size_t i) const { return &kept[i].payload() == &kept_twice[i].payload(); }
};

}  // namespace

// Phases of listeners that read, that do not, and that read again move the Bridge between
// building payloads at once and deferring them; a malformed payload is sent in each phase.
TEST(BridgePayload, EveryListenerAndEveryKeptCopySeeTheSentPayloadAndMalformedOnesNeverArrive) {
  Receiver r;
  int sequence = 0;
  std::size_t deliveries = 0;
  const auto phase = [&](bool reading, int count) {
    {
      std::lock_guard lock(r.mutex);
      r.reading = reading;
    }
    for (int i = 0; i < count; ++i) {
      ++sequence;
      r.send(Receiver::message(sequence, Receiver::payload_of(sequence)));
      ++deliveries;
    }
    // Invalid UTF-8 in the payload: the general decoder's error, whichever decoder ran first.
    std::string body = n::encode_envelope([&] {
      n::Envelope e;
      e.name = "order.placed";
      e.producer = "peer";
      e.producer_instance = "peer-instance";
      e.id = "10000000-0000-4000-8000-000000000000";
      e.time = std::chrono::system_clock::now();
      e.payload = {{"bad", "XX"}};
      return e;
    }());
    body.replace(body.find("XX"), 2, "\xc0\xaf");
    n::Message bad;
    bad.subject = "test.order.placed";
    bad.body = body;
    r.send(bad);
    ++deliveries;
    ASSERT_TRUE(r.settled(deliveries));
  };
  phase(true, 40);
  phase(false, 60);
  phase(true, 40);

  const json health = r.bridge->health();
  EXPECT_EQ(counter(health, "malformed"), 3u);
  EXPECT_EQ(counter(health, "received"), 140u);
  std::lock_guard lock(r.mutex);
  ASSERT_EQ(r.kept.size(), 140u);
  ASSERT_EQ(r.seen.size(), 80u);
  for (std::size_t i = 0; i < r.kept.size(); ++i) {
    EXPECT_EQ(r.kept[i].payload(), Receiver::payload_of(static_cast<int>(i) + 1)) << "event " << i + 1;
  }
  for (std::size_t i = 0; i < 40; ++i) EXPECT_EQ(r.seen[i], Receiver::payload_of(static_cast<int>(i) + 1));
  for (std::size_t i = 40; i < 80; ++i) EXPECT_EQ(r.seen[i], Receiver::payload_of(static_cast<int>(i) + 61));

  // The guess moved: payloads read by nearly every listener were built at once but for the probes
  // (one in kProbeEvery); unread ones were deferred once a few probes had shown it.
  const auto deferred_among = [&](std::size_t from, std::size_t to) {
    std::size_t count = 0;
    for (std::size_t i = from; i < to; ++i) count += r.deferred(i) ? 1 : 0;
    return count;
  };
  EXPECT_EQ(deferred_among(0, Guess::kAtOnceFrom), static_cast<std::size_t>(Guess::kAtOnceFrom)) << "deferred at first";
  EXPECT_LE(deferred_among(Guess::kAtOnceFrom, 40), 3u) << "reading: built at once but for the probes";
  EXPECT_EQ(deferred_among(70, 100), 30u) << "not reading: deferred";
  EXPECT_LE(deferred_among(110, 140), 2u) << "reading again: built at once but for the probes";
}
