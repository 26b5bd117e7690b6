// What an outage and a shutdown cost the application: one JSON line per measurement.
//
//   {"bench":"outage_instrument", ...}  instrument() latency (p50, p99, max) and the calls that
//                                       waited, while the transport refuses everything for a
//                                       while, per overflow policy; the same bridge with a working
//                                       transport is the same-run baseline
//   {"bench":"shutdown_overrun", ...}   how far shutdown(deadline) overran its deadline, with a
//                                       retry backoff of 5 s in progress, and with a listener of
//                                       remote events that blocks for 3 s
//   {"bench":"outage_nats", ...}        what a nats-server outage loses end to end, with
//                                       durability none and async (the SQLite outbox), in the
//                                       same run: a sender instruments at a steady rate, the
//                                       server is stopped (SIGTERM, then SIGKILL) for outage_ms
//                                       and started again on the same port; a receiver counts
//                                       the distinct events that arrived; the receiver reconnects
//                                       like the sender (250 ms) or sooner (20 ms, back first)
//                                       (built with NATS only)
//
// Usage: bench_outage [--outage-seconds N] [--only mock|nats] [--outage-ms MS] [--rate EVENTS_PER_S]
//                     [--receiver-wait-ms MS] [--stop term|kill] [--repeat N]
//   --outage-seconds: the mock outage (default 3); the NATS lines: --outage-ms (default 500 and
//   1000), --rate (default 20000 events a second), --receiver-wait-ms (default 250 and 20),
//   --stop (default both), --repeat: each pair of lines N times (default 1). Missing numbers go
//   to stderr as ranges.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"

#ifdef BENCH_OUTAGE_NATS
#include <filesystem>
#include <stdexcept>
#include <unistd.h>

#include "nats_server.hpp"
#endif

namespace n = notifications;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::string broker(const char* base) {
  static int counter = 0;
  return std::string(base) + "-" + std::to_string(counter++);
}

double percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<std::size_t>(p * static_cast<double>(values.size())))];
}

void outage(n::OverflowPolicy policy, bool refuse, std::chrono::seconds duration) {
  n::Notifier notifier;
  n::MockOptions options;
  options.broker = broker("outage");
  auto transport = std::make_shared<n::MockTransport>(options);
  n::BridgeConfig config;
  config.queue_capacity = 1024;
  config.overflow = policy;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  if (refuse) transport->disconnect();
  std::vector<double> micros;
  const auto end = Clock::now() + duration;
  while (Clock::now() < end && micros.size() < 50'000'000) {
    const auto start = Clock::now();
    notifier.instrument("order.placed", {{"n", micros.size()}});
    micros.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    std::this_thread::sleep_for(10us);  // a request thread, not a tight loop
  }
  const auto health = bridge.health();
  const auto waited = health["counters"]["blocked"].get<std::uint64_t>();
  const auto calls = micros.size();
  const double max = *std::max_element(micros.begin(), micros.end());
  const double p50 = percentile(micros, 0.50);
  const double p99 = percentile(micros, 0.99);
  std::printf(
      "{\"bench\":\"outage_instrument\",\"policy\":\"%s\",\"transport\":\"%s\",\"seconds\":%lld,\"calls\":%zu,"
      "\"waited\":%llu,\"p50_us\":%.2f,\"p99_us\":%.2f,\"max_us\":%.1f}\n",
      n::to_string(policy).c_str(), refuse ? "refusing" : "working", static_cast<long long>(duration.count()), calls,
      static_cast<unsigned long long>(waited), p50, p99, max);
  if (refuse) transport->reconnect();
  bridge.shutdown(1s);
}

void shutdown_during_backoff(std::chrono::milliseconds deadline) {
  n::Notifier notifier;
  n::MockOptions options;
  options.broker = broker("backoff");
  auto transport = std::make_shared<n::MockTransport>(options);
  n::BridgeConfig config;
  config.retry.initial = 5000ms;
  config.retry.max = 5000ms;
  config.retry.jitter = 0;
  n::Bridge bridge(notifier, transport, config);
  bridge.start();
  transport->fail_next_publishes(1'000'000, true);
  notifier.instrument("order.placed");
  for (int i = 0; i < 1000 && bridge.health()["counters"]["failed"] == 0; ++i) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(20ms);
  const auto start = Clock::now();
  bridge.shutdown(deadline);
  const auto took = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::printf("{\"bench\":\"shutdown_overrun\",\"case\":\"retry_backoff_5s\",\"deadline_ms\":%lld,\"took_ms\":%.1f}\n",
              static_cast<long long>(deadline.count()), took);
}

void shutdown_with_blocked_listener(std::chrono::milliseconds deadline) {
  const std::string name = broker("blocked");
  n::Notifier sender_notifier;
  n::Notifier receiver_notifier;
  n::Bridge sender(sender_notifier, n::make_memory_transport({.broker = name, .inline_delivery = false}), {});
  auto receiver = std::make_unique<n::Bridge>(
      receiver_notifier, n::make_memory_transport({.broker = name, .inline_delivery = false}), n::BridgeConfig{});
  std::atomic<int> entered{0};
  std::atomic<int> returned{0};
  auto sub = receiver_notifier.subscribe("slow.>", [&](const n::Event&) {
    entered.fetch_add(1);
    std::this_thread::sleep_for(3s);
    returned.fetch_add(1);
  });
  sender.start();
  receiver->start();
  sender_notifier.instrument("slow.event");
  sender.flush(5s);
  for (int i = 0; i < 5000 && entered.load() == 0; ++i) std::this_thread::sleep_for(1ms);
  const auto start = Clock::now();
  receiver->shutdown(deadline);
  const auto took = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::printf("{\"bench\":\"shutdown_overrun\",\"case\":\"listener_blocked_3s\",\"deadline_ms\":%lld,\"took_ms\":%.1f}\n",
              static_cast<long long>(deadline.count()), took);
  for (int i = 0; i < 5000 && returned.load() != entered.load(); ++i) std::this_thread::sleep_for(1ms);
}


#ifdef BENCH_OUTAGE_NATS
// One outage_nats line: a sender and a receiver Bridge on nats:// to one server, the sender with
// `durability`; events numbered in the payload are instrumented at `rate` a second for 1 s, during
// the outage and 1 s after it; the server is stopped for `outage` and started again. Then waits
// (bounded) until the receiver has had nothing new for 2 s.
// The sender reconnects with the defaults (reconnect_wait 250 ms, jitter 100 ms); the receiver
// with `receiver_wait` (250 ms and the same jitter: either may be back first; 20 ms without
// jitter: the receiver is back first). `kill`: SIGKILL instead of SIGTERM.
void outage_nats(n::Durability durability, std::chrono::milliseconds outage, int rate,
                 std::chrono::milliseconds receiver_wait, bool kill) {
  test_support::NatsServer server;
  std::string dir = (std::filesystem::temp_directory_path() / "bench-outage-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  const nlohmann::json nats_options = {{"max_reconnect", -1}, {"reconnect_wait_ms", 250}, {"reconnect_jitter_ms", 100}};
  nlohmann::json receiver_options = nats_options;
  receiver_options["reconnect_wait_ms"] = receiver_wait.count();
  if (receiver_wait < 250ms) receiver_options["reconnect_jitter_ms"] = 0;  // back first: no jitter either
  const auto lead = std::chrono::milliseconds(1000);
  const auto tail = std::chrono::milliseconds(1000);
  const auto span = lead + outage + tail;
  const auto events = static_cast<std::size_t>(static_cast<double>(rate) * std::chrono::duration<double>(span).count());

  n::Notifier receiving;
  std::vector<std::atomic<std::uint32_t>> seen(events);
  std::atomic<std::uint64_t> deliveries{0};
  auto listener = receiving.subscribe("outage.>", [&](const n::Event& e) {
    if (!e.remote()) return;
    deliveries.fetch_add(1, std::memory_order_relaxed);
    const auto number = e.payload().value("n", std::int64_t{-1});
    if (number >= 0 && static_cast<std::size_t>(number) < seen.size()) seen[static_cast<std::size_t>(number)].fetch_add(1);
  });
  n::BridgeConfig receiver_config;
  receiver_config.url = server.url();
  receiver_config.app = "receiver";
  receiver_config.prefix = "bo";
  receiver_config.forward = {};
  receiver_config.subscribe = {"outage.>"};
  receiver_config.transport = receiver_options;
  auto receiver = n::make_bridge(receiving, receiver_config);
  receiver->start();

  n::Notifier sending;
  n::BridgeConfig sender_config;
  sender_config.url = server.url();
  sender_config.app = "sender";
  sender_config.prefix = "bo";
  sender_config.forward = {"outage.>"};
  sender_config.subscribe = {};
  sender_config.durability = durability;
  if (durability != n::Durability::none) sender_config.outbox.path = dir + "/outbox.db";
  sender_config.transport = nats_options;
  auto sender = n::make_bridge(sending, sender_config);
  sender->start();

  std::thread producer([&] {
    const auto start = Clock::now();
    for (std::size_t i = 0; i < events; ++i) {
      const auto due = start + std::chrono::duration_cast<Clock::duration>(span * static_cast<double>(i) /
                                                                           static_cast<double>(events));
      if (Clock::now() < due) std::this_thread::sleep_until(due);
      sending.instrument("outage.tick", {{"n", i}});
    }
  });
  std::this_thread::sleep_for(lead);
  if (kill) {
    server.kill_hard();
  } else {
    server.stop();
  }
  std::this_thread::sleep_for(outage);
  server.start();
  producer.join();

  const auto distinct = [&] {
    std::uint64_t count = 0;
    for (const auto& s : seen) count += s.load(std::memory_order_relaxed) > 0 ? 1 : 0;
    return count;
  };
  const auto accepted = sender->health()["counters"]["accepted"].get<std::uint64_t>();
  // Settled: everything accepted arrived, or nothing new for 2 s (bounded: 60 s).
  std::uint64_t last = distinct();
  auto last_change = Clock::now();
  const auto give_up = Clock::now() + 60s;
  while (last < accepted && Clock::now() - last_change < 2s && Clock::now() < give_up) {
    std::this_thread::sleep_for(50ms);
    const std::uint64_t now = distinct();
    if (now != last) {
      last = now;
      last_change = Clock::now();
    }
  }
  sender->flush(5s);
  receiver->wait_delivered(5s);
  const std::uint64_t received = distinct();
  const auto sender_health = sender->health();
  const auto receiver_health = receiver->health();
  const auto dropped = [&] {
    std::uint64_t total = 0;
    for (const auto& [reason, count] : sender_health["counters"]["dropped"].items()) total += count.get<std::uint64_t>();
    return total;
  }();
  const std::uint64_t missing = accepted > received ? accepted - received : 0;
  {  // which numbers are missing, as ranges on stderr (the first 8)
    std::string ranges;
    int shown = 0;
    for (std::size_t i = 0; i < seen.size() && shown < 8; ++i) {
      if (seen[i].load() != 0) continue;
      std::size_t j = i;
      while (j + 1 < seen.size() && seen[j + 1].load() == 0) ++j;
      ranges += "[" + std::to_string(i) + ".." + std::to_string(j) + "] ";
      ++shown;
      i = j;
    }
    std::fprintf(stderr, "missing (of %zu; the outage spans %zu..%zu): %s\n", events,
                 static_cast<std::size_t>(static_cast<double>(rate) * std::chrono::duration<double>(lead).count()),
                 static_cast<std::size_t>(static_cast<double>(rate) * std::chrono::duration<double>(lead + outage).count()),
                 ranges.c_str());
  }
  std::printf(
      "{\"bench\":\"outage_nats\",\"outage_ms\":%lld,\"durability\":\"%s\",\"stop\":\"%s\","
      "\"receiver_reconnect_wait_ms\":%lld,\"rate\":%d,\"instrumented\":%zu,"
      "\"accepted\":%llu,\"received_distinct\":%llu,\"duplicates\":%llu,\"lost_pct\":%.2f,"
      "\"receiver_lost\":%llu,\"sender_dropped\":%llu}\n",
      static_cast<long long>(outage.count()), n::to_string(durability).c_str(), kill ? "sigkill" : "sigterm",
      static_cast<long long>(receiver_wait.count()), rate, events,
      static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(received),
      static_cast<unsigned long long>(deliveries.load() - received), accepted == 0 ? 0.0 : 100.0 * static_cast<double>(missing) / static_cast<double>(accepted),
      static_cast<unsigned long long>(receiver_health["counters"]["lost"].get<std::uint64_t>()),
      static_cast<unsigned long long>(dropped));
  std::fflush(stdout);
  sender->shutdown(5s);
  receiver->shutdown(5s);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::chrono::seconds outage_seconds{3};
  std::string only;
  std::vector<std::chrono::milliseconds> nats_outages{500ms, 1000ms};
  int rate = 20'000;
  std::vector<std::chrono::milliseconds> receiver_waits{250ms, 20ms};
  std::vector<bool> stops{false, true};  // SIGTERM, SIGKILL
  int repeat = 1;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--outage-seconds") == 0) outage_seconds = std::chrono::seconds(std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--only") == 0) only = argv[i + 1];
    if (std::strcmp(argv[i], "--outage-ms") == 0) nats_outages = {std::chrono::milliseconds(std::atoi(argv[i + 1]))};
    if (std::strcmp(argv[i], "--rate") == 0) rate = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--receiver-wait-ms") == 0) receiver_waits = {std::chrono::milliseconds(std::atoi(argv[i + 1]))};
    if (std::strcmp(argv[i], "--stop") == 0) stops = {std::strcmp(argv[i + 1], "kill") == 0};
    if (std::strcmp(argv[i], "--repeat") == 0) repeat = std::max(1, std::atoi(argv[i + 1]));
  }
  spdlog::set_level(spdlog::level::err);  // the drops are logged at warn: not what is measured
  if (only.empty() || only == "mock") {
    for (const auto policy : {n::OverflowPolicy::block, n::OverflowPolicy::drop_newest}) {
      outage(policy, false, outage_seconds);
      outage(policy, true, outage_seconds);
    }
    for (const auto deadline : {100ms, 500ms, 2000ms}) shutdown_during_backoff(deadline);
    for (const auto deadline : {100ms, 500ms, 2000ms}) shutdown_with_blocked_listener(deadline);
  }
#ifdef BENCH_OUTAGE_NATS
  if (only.empty() || only == "nats") {
    for (const bool kill : stops) {
      for (const auto receiver_wait : receiver_waits) {
        for (const auto outage : nats_outages) {
          for (int r = 0; r < repeat; ++r) {
            for (const auto durability : {n::Durability::none, n::Durability::async}) {
              outage_nats(durability, outage, rate, receiver_wait, kill);
            }
          }
        }
      }
    }
  }
#else
  (void)rate;
  (void)repeat;
  if (only == "nats") std::fprintf(stderr, "bench_outage: built without NATS; no outage_nats lines\n");
#endif
  return 0;
}
