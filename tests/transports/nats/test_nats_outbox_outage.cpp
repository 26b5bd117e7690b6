// The broker-down case of the durable outbox (issue 13): a sender Bridge with durability async
// (a SQLite outbox in a temp folder) and a receiver Bridge on another Notifier, both on nats://
// to one nats-server. The server is stopped while events are instrumented throughout the outage,
// then started again on the same port. Every event the sender accepted reaches the receiver at
// least once (duplicates allowed: the outbox sends again what a flush did not confirm), except
// those the receiver counts as lost in flight, which is expected to be 0: the server was down,
// not dying with messages it had accepted.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "nats_server.hpp"
#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "scale.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test_support::NatsServer;
using test_support::wait_until;

// A private folder for the outbox file, removed with everything in it.
struct TempDir {
  std::string path;
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "outbox-outage-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

std::uint64_t counter(const nlohmann::json& health, const char* name) {
  return health["counters"][name].get<std::uint64_t>();
}

// Reconnects for as long as the outage lasts (max_reconnect -1: forever; cnats waits
// reconnect_wait before each attempt, the first one included, with one server), with a reconnect
// buffer that holds what is published meanwhile.
nlohmann::json nats_options(std::chrono::milliseconds reconnect_wait) {
  return {{"max_reconnect", -1},
          {"reconnect_wait_ms", reconnect_wait.count()},
          {"reconnect_jitter_ms", 10},
          {"reconnect_buffer_bytes", 8 * 1024 * 1024},
          {"connect_timeout_ms", 2000}};
}

TEST(NatsOutboxOutage, EveryAcceptedEventArrivesAfterTheServerWasDown) {
  // The full case in the normal build; a shorter outage with fewer events under sanitizers.
  const auto outage = test_support::kScale == 1 ? 10s : 3s;
  const int during = 50'000 / test_support::kScale;  // instrumented while the server is down
  const int before = 1'000 / test_support::kScale;   // before: the receiver's sequence has a start
  const int after = 1'000 / test_support::kScale;    // after: a gap at the end is counted as lost
  const int total = before + during + after;

  NatsServer server;
  TempDir dir;

  // The receiver: remote "outage.>" events, counted by the number in their payload.
  n::Notifier receiving;
  std::vector<std::atomic<std::uint32_t>> seen(static_cast<std::size_t>(total));
  std::atomic<std::uint64_t> deliveries{0};
  std::atomic<std::uint64_t> out_of_range{0};
  std::mutex arrivals_mutex;
  std::vector<int> arrivals;  // the numbers in the order they arrived, for a failure's message
  auto listener = receiving.subscribe("outage.>", [&](const n::Event& e) {
    if (!e.remote()) return;
    deliveries.fetch_add(1);
    const auto number = e.payload().value("n", -1);
    if (number < 0 || number >= total) {
      out_of_range.fetch_add(1);
      return;
    }
    seen[static_cast<std::size_t>(number)].fetch_add(1);
    std::lock_guard lock(arrivals_mutex);
    arrivals.push_back(number);
  });
  n::BridgeConfig receiver_config;
  receiver_config.name = "receiver";
  receiver_config.url = server.url();
  receiver_config.app = "receiver";
  receiver_config.prefix = "oo";
  receiver_config.forward = {};
  receiver_config.subscribe = {"outage.>"};
  // Back within about 20 ms of the server.
  receiver_config.transport = nats_options(20ms);
  auto receiver = n::make_bridge(receiving, receiver_config);
  receiver->start();

  // The sender: durability async, its outbox in the temp folder.
  n::Notifier sending;
  n::BridgeConfig sender_config;
  sender_config.name = "sender";
  sender_config.url = server.url();
  sender_config.app = "sender";
  sender_config.prefix = "oo";
  sender_config.forward = {"outage.>"};
  sender_config.subscribe = {};
  sender_config.durability = n::Durability::async;
  sender_config.outbox.path = dir.path + "/outbox.db";
  sender_config.retry.max = 1000ms;  // back soon after the server is
  // The receiver is connected throughout; with one server the closest order is a receiver
  // that is back before the sender: the sender's first reconnect attempt comes 2 s after the
  // outage ends. (Core NATS drops what reaches the server before a receiver's subscription is
  // back, and no publisher can tell: when the sender came back 15 ms before the receiver, its
  // reconnect buffer was flushed to nobody and the receiver counted 257 events lost. No outbox
  // can fix that over nats://; a persistent transport can.)
  sender_config.transport = nats_options(std::chrono::duration_cast<std::chrono::milliseconds>(outage) + 2000ms);
  auto sender = n::make_bridge(sending, sender_config);
  sender->start();

  const auto distinct = [&] {
    int count = 0;
    for (const auto& s : seen) count += s.load() > 0 ? 1 : 0;
    return count;
  };

  int number = 0;
  for (; number < before; ++number) sending.instrument("outage.tick", {{"n", number}});
  ASSERT_TRUE(sender->flush(30s)) << sender->health().dump();
  ASSERT_TRUE(wait_until([&] { return distinct() == before; }, 30s))
      << distinct() << " of " << before << "\n" << receiver->health().dump();

  // The outage: events instrumented evenly over it (the n-th at n/during of the outage).
  server.stop();
  const auto down = Clock::now();
  for (int i = 0; i < during; ++i, ++number) {
    const auto due = down + outage * i / during;
    if (Clock::now() < due) std::this_thread::sleep_until(due);
    sending.instrument("outage.tick", {{"n", number}});
  }
  std::this_thread::sleep_until(down + outage);
  const auto sender_during = sender->health();
  server.start();

  for (; number < total; ++number) sending.instrument("outage.tick", {{"n", number}});

  // Bounded: everything accepted arrives, or is counted lost by the receiver.
  const std::uint64_t accepted = counter(sender->health(), "accepted");
  const auto settled = [&] {
    return static_cast<std::uint64_t>(distinct()) + counter(receiver->health(), "lost") >= accepted;
  };
  const bool all_arrived = wait_until(settled, 120s);
  const bool flushed = sender->flush(30s);
  receiver->wait_delivered(10s);

  const auto sender_health = sender->health();
  const auto receiver_health = receiver->health();
  const int got = distinct();
  const std::uint64_t lost = counter(receiver_health, "lost");
  const std::uint64_t duplicates = deliveries.load() - static_cast<std::uint64_t>(got) - out_of_range.load();
  std::vector<int> missing;
  for (int i = 0; i < total && missing.size() < 20; ++i) {
    if (seen[static_cast<std::size_t>(i)].load() == 0) missing.push_back(i);
  }
  std::string missing_text;
  for (const int m : missing) missing_text += std::to_string(m) + " ";
  std::printf(
      "outage %lld ms: instrumented %d, accepted %llu, received distinct %d, deliveries %llu, duplicates %llu, "
      "lost (receiver) %llu, sender failed %llu, retried %llu\n",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(outage).count()), total,
      static_cast<unsigned long long>(accepted), got, static_cast<unsigned long long>(deliveries.load()),
      static_cast<unsigned long long>(duplicates), static_cast<unsigned long long>(lost),
      static_cast<unsigned long long>(counter(sender_health, "failed")),
      static_cast<unsigned long long>(counter(sender_health, "retried")));

  // The arrivals as runs of consecutive numbers ("[0..1255] [1000..1255] ..."), the first 40.
  std::string runs;
  {
    std::lock_guard lock(arrivals_mutex);
    int shown = 0;
    for (std::size_t i = 0; i < arrivals.size() && shown < 40; ++shown) {
      std::size_t j = i;
      while (j + 1 < arrivals.size() && arrivals[j + 1] == arrivals[j] + 1) ++j;
      runs += "[" + std::to_string(arrivals[i]) + ".." + std::to_string(arrivals[j]) + "] ";
      i = j + 1;
    }
  }
  EXPECT_TRUE(all_arrived) << "first missing: " << missing_text << "\narrived: " << runs << "\nsender during the outage: "
                           << sender_during.dump() << "\nsender: " << sender_health.dump()
                           << "\nreceiver: " << receiver_health.dump();
  EXPECT_TRUE(flushed) << sender_health.dump();
  EXPECT_EQ(accepted, static_cast<std::uint64_t>(total)) << sender_health.dump();  // nothing refused
  EXPECT_EQ(out_of_range.load(), 0u);
  EXPECT_GE(static_cast<std::uint64_t>(got) + lost, accepted) << "first missing: " << missing_text
                                                             << "\narrived: " << runs;
  EXPECT_EQ(lost, 0u) << "the receiver counted events lost in flight; first missing: " << missing_text
                      << "\narrived: " << runs << "\nreceiver: " << receiver_health.dump();

  const n::ShutdownReport sent = sender->shutdown(30s);
  EXPECT_TRUE(sent.clean) << sent.detail;
  EXPECT_EQ(sent.kept, 0u) << sent.detail;
  EXPECT_EQ(sent.undelivered, 0u) << sent.detail;
  receiver->shutdown(10s);
}

}  // namespace
