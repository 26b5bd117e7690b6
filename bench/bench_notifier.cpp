// Micro-benchmarks of Notifier::instrument against a raw Boost.Signals2 signal.
//
// Every benchmark does the same trivial work per iteration, so that the difference between two
// benchmarks is the cost of the dispatch machinery only:
//   - the "block" (the instrumented code) adds 1 to a per-thread counter;
//   - every listener (Notifier subscriber or Signals2 slot) adds event.name().size() to it.
// The raw Signals2 benchmarks run the block's work inline and then invoke the signal with an
// Event built once before the loop; the Notifier benchmarks build a real event (clocks read,
// ids drawn) on every iteration, because that is what instrument() promises its subscribers.
//
// The names are stable: scripts/bench.sh computes its ratios from them. Run through
// scripts/bench.sh; see docs/benchmarks.md for what each benchmark measures.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>
#include <boost/signals2/signal.hpp>
#include <nlohmann/json.hpp>

#include "notifications/event.hpp"
#include "notifications/notifier.hpp"
#include "notifications/subscription.hpp"

namespace {

using notifications::Event;
using notifications::Notifier;
using notifications::Subscription;
using Signal = boost::signals2::signal<void(const Event&)>;

constexpr const char* kName = "sql.query";
constexpr const char* kOtherName = "other.event";

// Per thread, so that the threaded benchmarks do not measure false sharing of the counter.
thread_local std::uint64_t t_counter = 0;

// The trivial work shared by blocks and listeners; DoNotOptimize keeps the store.
inline void work(std::size_t amount) {
  t_counter += amount;
  benchmark::DoNotOptimize(t_counter);
}

inline void block_work() { work(1); }
inline void listener_work(const Event& event) { work(event.name().size()); }

nlohmann::json make_payload() {
  return nlohmann::json{{"sql", "SELECT * FROM users WHERE id = ?"}, {"name", "User Load"},
                        {"binds", nlohmann::json::array({42})}};
}

Subscription subscribe_listener(Notifier& notifier, const char* name) {
  return notifier.subscribe(name, [](const Event& event) { listener_work(event); });
}

// Makes a benchmark report an error instead of a misleading figure when its setup is wrong.
bool expect_listening(benchmark::State& state, Notifier& notifier, bool expected) {
  if (notifier.listening(kName) == expected) return true;
  state.SkipWithError(expected ? "setup: nobody listens to sql.query"
                               : "setup: someone listens to sql.query");
  return false;
}

// ---- Floor ---------------------------------------------------------------------------------------

// The block's work alone: the loop and the counter every other benchmark also pays.
void BM_Baseline_BlockOnly(benchmark::State& state) {
  for (auto _ : state) {
    block_work();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Baseline_BlockOnly);

// ---- Raw Boost.Signals2 (the reference) ---------------------------------------------------------

void BM_RawSignals2(benchmark::State& state) {
  Signal signal;
  for (int64_t i = 0; i < state.range(0); ++i) {
    signal.connect([](const Event& event) { listener_work(event); });
  }
  const Event event(kName, make_payload());
  for (auto _ : state) {
    block_work();
    signal(event);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RawSignals2)->Arg(0)->Arg(1)->Arg(10);

// Shared by the threads of one run; created and destroyed by thread 0 outside the timed loop
// (the library starts the loop on every thread only once all threads reached it, and lets no
// thread leave it before all finished).
std::unique_ptr<Signal> g_signal;
std::unique_ptr<Event> g_event;

void BM_RawSignals2_2Threads(benchmark::State& state) {
  if (state.thread_index() == 0) {
    g_signal = std::make_unique<Signal>();
    g_signal->connect([](const Event& event) { listener_work(event); });
    g_event = std::make_unique<Event>(kName, make_payload());
  }
  for (auto _ : state) {
    block_work();
    (*g_signal)(*g_event);
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    g_signal.reset();
    g_event.reset();
  }
}
BENCHMARK(BM_RawSignals2_2Threads)->Threads(2)->UseRealTime();

// ---- Notifier: nobody listens ----------------------------------------------------------------

// Someone listens to another name, so instrument() must look "sql.query" up (per-thread cache:
// hash and compare); the "no subscription at all" shortcut does not apply.
void BM_Instrument_NoSubscriber(benchmark::State& state) {
  Notifier notifier;
  const Subscription other = subscribe_listener(notifier, kOtherName);
  if (!expect_listening(state, notifier, false)) return;
  for (auto _ : state) {
    notifier.instrument(kName, [&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Instrument_NoSubscriber);

// Nobody subscribed to anything: the subscriber-count shortcut, no lookup.
void BM_Instrument_NoSubscriberAtAll(benchmark::State& state) {
  Notifier notifier;
  if (!expect_listening(state, notifier, false)) return;
  for (auto _ : state) {
    notifier.instrument(kName, [&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Instrument_NoSubscriberAtAll);

// A pre-resolved Handle; same setup as BM_Instrument_NoSubscriber (one unrelated subscriber).
void BM_Instrument_NoSubscriber_Handle(benchmark::State& state) {
  Notifier notifier;
  const Subscription other = subscribe_listener(notifier, kOtherName);
  if (!expect_listening(state, notifier, false)) return;
  const notifications::Handle handle = notifier.handle(kName);
  for (auto _ : state) {
    handle.instrument([&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Instrument_NoSubscriber_Handle);

// ---- Notifier: subscribers -------------------------------------------------------------------

// N exact-name Event subscribers; the payload is an lvalue the event borrows (no copy).
void BM_Instrument(benchmark::State& state) {
  Notifier notifier;
  std::vector<Subscription> subscriptions;
  for (int64_t i = 0; i < state.range(0); ++i) {
    subscriptions.push_back(subscribe_listener(notifier, kName));
  }
  if (!expect_listening(state, notifier, true)) return;
  nlohmann::json payload = make_payload();
  for (auto _ : state) {
    notifier.instrument(kName, payload, [&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Instrument)->Arg(1)->Arg(10);

std::unique_ptr<Notifier> g_notifier;
Subscription g_subscription;

// One name, one subscriber, one Notifier shared by two instrumenting threads. Each thread has
// its own payload (an event's payload belongs to the instrumenting call).
void BM_Instrument_2Threads(benchmark::State& state) {
  if (state.thread_index() == 0) {
    g_notifier = std::make_unique<Notifier>();
    g_subscription = subscribe_listener(*g_notifier, kName);
  }
  nlohmann::json payload = make_payload();
  for (auto _ : state) {
    g_notifier->instrument(kName, payload, [&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    g_subscription.unsubscribe();
    g_notifier.reset();
  }
}
BENCHMARK(BM_Instrument_2Threads)->Threads(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
