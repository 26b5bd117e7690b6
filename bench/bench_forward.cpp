// Forwarding through the in-memory transport in queued mode, end to end: one JSON line per
// measurement, so runs can be compared.
//
//   {"bench":"forward_memory","events":N,"rate":R,"events_per_s":...,"instrument_p50_ns":...,
//    "instrument_p90_ns":...,"instrument_p99_ns":...,"instrument_p999_ns":...,
//    "instrument_max_ns":...,"bytes_per_queued_event":...}
//
// events_per_s: from the first instrument() on service A to the last event received by service
// B's listener. Instrument latency: each instrument() call on A's thread, timed with the
// monotonic clock (the two clock reads of the timing itself are included). Bytes per queued
// event: heap growth (mallinfo2: arena bytes in use plus mmapped blocks, where large buffers such
// as the queue's storage live) while the sender is stalled on a disconnected mock transport,
// divided by the events queued.
//
// Usage: bench_forward [events]   (default 200000)
// Environment: RATE=<events/s> paces the instrumenting thread (busy-waiting, so pacing itself
// never sleeps); unset or 0 instruments at full speed. INLINE=1 uses the memory transport's
// inline mode instead of the queued one. OBSERVER=1 gives both bridges a BridgeObserver
// (notifications/metrics.hpp) that counts and sums what it is told, to measure what the hook
// costs with the clock reads it brings (the JSON line then says "observer":true).
// REDACT=<comma-separated rules> gives the sender those BridgeConfig::redact rules (the payload's
// keys are order_id, customer, total_cents, items: REDACT=password scans without a match,
// REDACT=customer redacts one value); the JSON line then says "redact":"<rules>".
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/mock.hpp"

namespace n = notifications;
using Clock = std::chrono::steady_clock;

namespace {

nlohmann::json payload() {
  return {{"order_id", 12345}, {"customer", "ada"}, {"total_cents", 4200}, {"items", {"mug", "hoodie"}}};
}

n::BridgeConfig config(const std::string& app, std::vector<std::string> forward,
                       std::vector<std::string> subscribe, std::size_t capacity) {
  n::BridgeConfig c;
  c.app = app;
  c.prefix = "bench";
  c.forward = std::move(forward);
  c.subscribe = std::move(subscribe);
  c.queue_capacity = capacity;
  c.overflow = n::OverflowPolicy::block;
  c.block_timeout = std::chrono::seconds(10);
  return c;
}

// Counts and sums the latencies: the hook's own cost, without a metrics library's.
struct SummingObserver final : n::BridgeObserver {
  std::atomic<std::uint64_t> count{0};
  std::atomic<std::int64_t> sum_ns{0};
  void published(std::chrono::nanoseconds latency) override { note(latency); }
  void delivered(std::string_view, std::chrono::nanoseconds latency, bool) override { note(latency); }
  void handled(std::string_view, std::chrono::nanoseconds latency, bool) override { note(latency); }
  void note(std::chrono::nanoseconds latency) {
    count.fetch_add(1, std::memory_order_relaxed);
    sum_ns.fetch_add(latency.count(), std::memory_order_relaxed);
  }
};

std::int64_t percentile(std::vector<std::int64_t>& sorted, double p) {
  const auto index = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1));
  return sorted[index];
}

void forward_memory(std::size_t events) {
  n::Notifier a, b;
  const std::string broker = "bench-forward";
  const bool observed = getenv("OBSERVER") != nullptr && std::string(getenv("OBSERVER")) == "1";
  n::BridgeHooks hooks;
  if (observed) hooks.observer = std::make_shared<SummingObserver>();
  n::BridgeConfig sender_config = config("a", {"order.>"}, {}, 65536);
  const std::string redact = getenv("REDACT") != nullptr ? getenv("REDACT") : "";
  for (std::size_t begin = 0; !redact.empty() && begin <= redact.size();) {
    const std::size_t comma = std::min(redact.find(',', begin), redact.size());
    sender_config.redact.push_back(redact.substr(begin, comma - begin));
    begin = comma + 1;
  }
  n::Bridge sender(a, n::make_memory_transport({.broker = broker, .inline_delivery = getenv("INLINE") != nullptr}), sender_config, hooks);
  // Inbound has no back-pressure: room for the whole burst, in count and in bytes (with the
  // default 64 MiB bound, 200,000 events did not always fit and the run failed).
  n::BridgeConfig receiver_config = config("b", {}, {"order.>"}, std::max<std::size_t>(65536, events));
  receiver_config.queue_max_bytes = 0;
  n::Bridge receiver(b, n::make_memory_transport({.broker = broker, .inline_delivery = getenv("INLINE") != nullptr}),
                     receiver_config, hooks);
  std::atomic<std::size_t> received{0};
  Clock::time_point last_received;
  auto count = b.subscribe("order.placed", [&](const n::Event&) {
    if (received.fetch_add(1) + 1 == events) last_received = Clock::now();
  });
  sender.start();
  receiver.start();

  nlohmann::json body = payload();
  std::vector<std::int64_t> latencies(events);
  const auto first = Clock::now();
  const double rate = getenv("RATE") ? std::atof(getenv("RATE")) : 0;
  for (std::size_t i = 0; i < events; ++i) {
    if (rate > 0) {
      const auto due = first + std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 * static_cast<double>(i) / rate));
      while (Clock::now() < due) {
      }
    }
    const auto t0 = Clock::now();
    a.instrument("order.placed", body, [] {});
    latencies[i] = (Clock::now() - t0).count();
  }
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (received.load() < events && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (received.load() < events) {
    std::fprintf(stderr, "forward_memory: only %zu of %zu events arrived in 60 s\n", received.load(), events);
    std::exit(1);
  }
  const double seconds = std::chrono::duration<double>(last_received - first).count();
  std::sort(latencies.begin(), latencies.end());

  // Bytes per queued event: stall the sender on a disconnected mock and fill its queue.
  const std::size_t queued = std::min<std::size_t>(events, 100000);
  n::Notifier c;
  auto mock = std::make_shared<n::MockTransport>(n::MockOptions{.broker = "bench-stalled"});
  auto stalled_config = config("c", {"order.>"}, {}, queued + 16);
  stalled_config.retry.initial = std::chrono::milliseconds(1000);
  stalled_config.retry.max = std::chrono::milliseconds(1000);
  n::Bridge stalled(c, mock, stalled_config);
  stalled.start();
  mock->disconnect();
  c.instrument("order.placed", body, [] {});  // the sender takes this one and starts retrying
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto heap = [] {
    const struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
  };
  const auto before = heap();
  for (std::size_t i = 0; i < queued; ++i) c.instrument("order.placed", body, [] {});
  const auto after = heap();
  const std::size_t depth = stalled.health()["queue"]["depth"].get<std::size_t>();
  const double bytes_per_event = depth > 0 ? static_cast<double>(after - before) / static_cast<double>(depth) : 0;
  mock->reconnect();
  stalled.shutdown(std::chrono::seconds(30));

  std::printf(
      "{\"bench\":\"forward_memory\",\"events\":%zu,\"rate\":%.0f,\"events_per_s\":%.0f,\"instrument_p50_ns\":%lld,"
      "\"instrument_p90_ns\":%lld,\"instrument_p99_ns\":%lld,\"instrument_p999_ns\":%lld,\"instrument_max_ns\":%lld,\"bytes_per_queued_event\":%.0f,"
      "\"queued_for_memory_measure\":%zu,\"observer\":%s,\"redact\":\"%s\"}\n",
      events, rate, static_cast<double>(events) / seconds, static_cast<long long>(percentile(latencies, 0.50)),
      static_cast<long long>(percentile(latencies, 0.90)), static_cast<long long>(percentile(latencies, 0.99)),
      static_cast<long long>(percentile(latencies, 0.999)), static_cast<long long>(latencies.back()),
      bytes_per_event, depth, observed ? "true" : "false", redact.c_str());
  sender.shutdown(std::chrono::seconds(30));
  receiver.shutdown(std::chrono::seconds(30));
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);  // keep stdout to the JSON lines
  const std::size_t events = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200000;
  if (events == 0) {
    std::fprintf(stderr, "usage: bench_forward [events > 0]\n");
    return 2;
  }
  forward_memory(events);
  return 0;
}
