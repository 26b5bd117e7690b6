// What an outage and a shutdown cost the application: one JSON line per measurement.
//
//   {"bench":"outage_instrument", ...}  instrument() latency (p50, p99, max) and the calls that
//                                       waited, while the transport refuses everything for a
//                                       while, per overflow policy; the same bridge with a working
//                                       transport is the same-run baseline
//   {"bench":"shutdown_overrun", ...}   how far shutdown(deadline) overran its deadline, with a
//                                       retry backoff of 5 s in progress, and with a listener of
//                                       remote events that blocks for 3 s
//
// Usage: bench_outage [--outage-seconds N]   (default 3)
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

}  // namespace

int main(int argc, char** argv) {
  std::chrono::seconds outage_seconds{3};
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--outage-seconds") == 0) outage_seconds = std::chrono::seconds(std::atoi(argv[i + 1]));
  }
  spdlog::set_level(spdlog::level::err);  // the drops are logged at warn: not what is measured
  for (const auto policy : {n::OverflowPolicy::block, n::OverflowPolicy::drop_newest}) {
    outage(policy, false, outage_seconds);
    outage(policy, true, outage_seconds);
  }
  for (const auto deadline : {100ms, 500ms, 2000ms}) shutdown_during_backoff(deadline);
  for (const auto deadline : {100ms, 500ms, 2000ms}) shutdown_with_blocked_listener(deadline);
  return 0;
}
