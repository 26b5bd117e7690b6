// A durable handler that does nothing, through the inbox (the SQLite store: a claim and a done
// mark per event, two write transactions), against the same subscription without the inbox, in
// the same run (issue 15). One process: a producer Bridge and a consumer Bridge over one
// sqlite:// file, the consumer with one durable handler "bench" on "order.placed".
//
//   {"bench":"durable_handler","transport":"sqlite","events_per_s":...,"p50_ms":...,"p99_ms":...,
//    "no_inbox_events_per_s":...,"no_inbox_p50_ms":...,"no_inbox_p99_ms":...,"ratio":...}
//
// events_per_s: N events instrumented as fast as the producer can, from the first instrument() to
//   the N-th handler call. p50_ms, p99_ms: instrument() to handler call (the payload carries the
//   send time, steady_clock ns) for a steady stream at --rate events/s (default 500; one event
//   per tick), below both variants' flat-out rate, so the figure is the pipeline's delay, not a
//   backlog. ratio: events_per_s / no_inbox_events_per_s. Medians over --repetitions (default 3);
//   each repetition alternates the two variants on fresh files. Each run's figures go to stderr.
//
// Everything is bounded: a run that does not see every event within --timeout-s (default 60)
// fails (exit status 1). Files live in a mkdtemp directory under /tmp, removed at the end.
//
// Usage: bench_durable [--events N] [--paced-events M] [--rate R] [--repetitions K]
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/notifier.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/sqlite.hpp"

namespace n = notifications;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

struct Args {
  int events = 5000;
  int paced_events = 1000;
  int rate = 500;
  int repetitions = 3;
  int timeout_s = 60;
};

struct Figures {
  double events_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
};

std::int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<std::size_t>(p * static_cast<double>(values.size())))];
}

double median(std::vector<double> values) { return percentile(std::move(values), 0.5); }

std::shared_ptr<n::Transport> transport_at(const std::string& path) {
  n::SqliteTransportOptions options;
  options.path = path;
  return n::make_sqlite_transport(options);
}

// One run: flat out, then paced, on fresh files in `dir`.
bool run(const Args& args, const std::string& dir, bool inbox, Figures& out) {
  const std::string events_db = dir + (inbox ? "/inbox-events.db" : "/plain-events.db");
  const std::string store_db = dir + (inbox ? "/inbox-store.db" : "/plain-store.db");
  n::Notifier producer_notifier;
  n::Notifier consumer_notifier;
  n::BridgeConfig pc;
  pc.app = "producer";
  pc.subscribe = {};
  n::BridgeConfig cc;
  cc.app = "consumer";
  cc.forward = {};
  cc.subscribe = {};
  n::Bridge consumer(consumer_notifier, transport_at(events_db), cc);
  n::Bridge producer(producer_notifier, transport_at(events_db), pc);
  std::atomic<int> handled{0};
  std::mutex mutex;
  std::vector<double> latencies;
  std::atomic<bool> record{false};
  n::DurableOptions options;
  options.inbox = inbox;
  options.store = n::make_sqlite_durable_store(store_db);
  options.max_queued = 65536;
  consumer.subscribe_durable("bench", "order.placed", [&](const n::Event& event, n::DurableContext&) {
    if (record.load(std::memory_order_relaxed)) {
      const double ms = static_cast<double>(now_ns() - event.payload()["sent_ns"].get<std::int64_t>()) / 1e6;
      std::lock_guard<std::mutex> lock(mutex);
      latencies.push_back(ms);
    }
    handled.fetch_add(1, std::memory_order_relaxed);
  }, options);
  consumer.start();
  producer.start();
  const auto wait_for = [&](int count) {
    const auto until = Clock::now() + std::chrono::seconds(args.timeout_s);
    while (handled.load() < count) {
      if (Clock::now() > until) return false;
      std::this_thread::sleep_for(200us);
    }
    return true;
  };
  // Flat out.
  const auto started = Clock::now();
  for (int i = 0; i < args.events; ++i) producer_notifier.instrument("order.placed", {{"i", i}, {"sent_ns", now_ns()}});
  if (!wait_for(args.events)) {
    std::fprintf(stderr, "bench_durable: %s flat out: %d of %d handled in %d s\n", inbox ? "inbox" : "no inbox",
                 handled.load(), args.events, args.timeout_s);
    return false;
  }
  out.events_per_s = args.events / std::chrono::duration<double>(Clock::now() - started).count();
  // Paced.
  record = true;
  const auto tick = std::chrono::nanoseconds(1'000'000'000LL / std::max(args.rate, 1));
  auto next = Clock::now();
  for (int i = 0; i < args.paced_events; ++i) {
    std::this_thread::sleep_until(next);
    next += tick;
    producer_notifier.instrument("order.placed", {{"i", i}, {"sent_ns", now_ns()}});
  }
  if (!wait_for(args.events + args.paced_events)) {
    std::fprintf(stderr, "bench_durable: %s paced: %d of %d handled\n", inbox ? "inbox" : "no inbox",
                 handled.load() - args.events, args.paced_events);
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    out.p50_ms = percentile(latencies, 0.5);
    out.p99_ms = percentile(latencies, 0.99);
  }
  producer.shutdown(10s);
  consumer.shutdown(10s);
  return true;
}

// The store alone: claim + complete per event on one thread, no transport, no threads between.
double store_only(const std::string& path, int events) {
  auto store = n::make_sqlite_durable_store(path);
  const std::string owner = n::durable_owner();
  const auto started = Clock::now();
  for (int i = 0; i < events; ++i) {
    const std::string id = "event-" + std::to_string(i);
    store->claim("bench", id, owner, std::chrono::minutes(1));
    store->work("bench", id, owner)->complete();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  n::release_durable_owner(owner);
  return events / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (key == "--events") args.events = value;
    else if (key == "--paced-events") args.paced_events = value;
    else if (key == "--rate") args.rate = value;
    else if (key == "--repetitions") args.repetitions = value;
    else if (key == "--timeout-s") args.timeout_s = value;
    else {
      std::fprintf(stderr, "bench_durable: unknown option %s\n", key.c_str());
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  char pattern[] = "/tmp/bench-durable-XXXXXX";
  const char* dir = ::mkdtemp(pattern);
  if (dir == nullptr) {
    std::perror("bench_durable: mkdtemp");
    return 1;
  }
  std::vector<double> rate, p50, p99, plain_rate, plain_p50, plain_p99;
  bool ok = true;
  for (int r = 0; r < args.repetitions && ok; ++r) {
    const std::string run_dir = std::string(dir) + "/run" + std::to_string(r);
    std::filesystem::create_directories(run_dir);
    Figures with;
    Figures without;
    // Alternate which variant goes first, so neither always runs on a warmer machine.
    ok = r % 2 == 0 ? run(args, run_dir, true, with) && run(args, run_dir, false, without)
                    : run(args, run_dir, false, without) && run(args, run_dir, true, with);
    if (!ok) break;
    std::fprintf(stderr, "run %d: inbox %.0f/s p50 %.3f p99 %.3f ms; no inbox %.0f/s p50 %.3f p99 %.3f ms\n", r,
                 with.events_per_s, with.p50_ms, with.p99_ms, without.events_per_s, without.p50_ms, without.p99_ms);
    rate.push_back(with.events_per_s);
    p50.push_back(with.p50_ms);
    p99.push_back(with.p99_ms);
    plain_rate.push_back(without.events_per_s);
    plain_p50.push_back(without.p50_ms);
    plain_p99.push_back(without.p99_ms);
  }
  const double store_rate = ok ? store_only(std::string(dir) + "/store-only.db", args.events) : 0.0;
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  if (!ok) return 1;
  const double with_rate = median(rate);
  const double without_rate = median(plain_rate);
  nlohmann::json line = {{"bench", "durable_handler"},
                         {"transport", "sqlite"},
                         {"events_per_s", std::round(with_rate)},
                         {"p50_ms", median(p50)},
                         {"p99_ms", median(p99)},
                         {"no_inbox_events_per_s", std::round(without_rate)},
                         {"no_inbox_p50_ms", median(plain_p50)},
                         {"no_inbox_p99_ms", median(plain_p99)},
                         {"ratio", without_rate > 0 ? with_rate / without_rate : 0.0},
                         {"store_only_events_per_s", std::round(store_rate)},
                         {"events", args.events},
                         {"paced_events", args.paced_events},
                         {"rate", args.rate},
                         {"repetitions", args.repetitions}};
  std::printf("%s\n", line.dump().c_str());
  return 0;
}
