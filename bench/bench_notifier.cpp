// Micro-benchmarks of Notifier::instrument against a raw Boost.Signals2 signal and against an
// in-repo floor: a std::vector of std::function listeners called with an event built per call.
//
// Every benchmark does the same trivial work per iteration, so that the difference between two
// benchmarks is the cost of the dispatch machinery only:
//   - the "block" (the instrumented code) adds 1 to a per-thread counter;
//   - every listener (Notifier subscriber or Signals2 slot) adds event.name().size() to it.
// The raw Signals2 benchmarks run the block's work inline and then invoke the signal with an
// Event built once before the loop; the Notifier benchmarks build a real event (clocks read,
// ids drawn) on every iteration, because that is what instrument() promises its subscribers.
//
// The floor benchmarks (BM_Floor_Built, BM_Clocks) build per call what instrument() builds: the
// same two monotonic clock reads, the wall time derived from the first with a per-thread offset,
// a sequence number from a per-thread block and the thread's transaction number.
//
// The names are stable: scripts/bench.sh computes its ratios from them. Run through
// scripts/bench.sh; see docs/benchmarks.md for what each benchmark measures.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>
#include <boost/signals2/signal.hpp>
#include <nlohmann/json.hpp>

#include "notifications/context.hpp"
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

// The fields instrument() fills for an event that borrows its name and payload.
struct FloorEvent {
  std::string_view name;
  nlohmann::json* payload = nullptr;
  std::chrono::system_clock::time_point time;
  std::chrono::steady_clock::time_point start;
  std::chrono::steady_clock::time_point end;
  std::uint64_t sequence = 0;
  std::uint64_t transaction = 0;
};

std::atomic<std::uint64_t> g_floor_sequence_block{1};
std::atomic<std::uint64_t> g_floor_transaction{1};

// Per thread, as the library keeps them: a block of sequence numbers, the transaction number and
// the offset between the wall clock and the monotonic clock (refreshed once a second).
struct FloorThread {
  std::uint64_t next_sequence = 0;
  std::uint64_t sequence_end = 0;
  std::uint64_t transaction = g_floor_transaction.fetch_add(1, std::memory_order_relaxed);
  std::chrono::steady_clock::time_point synced{};
  std::chrono::system_clock::duration offset{};
  bool valid = false;
};
thread_local FloorThread t_floor;

// Fills `event` at the start of the block: one monotonic clock read.
inline void floor_begin(FloorEvent& event, std::string_view name, nlohmann::json& payload) {
  FloorThread& thread = t_floor;
  event.name = name;
  event.payload = &payload;
  event.start = event.end = std::chrono::steady_clock::now();
  if (!thread.valid || event.start - thread.synced > std::chrono::seconds(1)) {
    thread.offset = std::chrono::system_clock::now().time_since_epoch() -
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(
                        event.start.time_since_epoch());
    thread.synced = event.start;
    thread.valid = true;
  }
  event.time = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          event.start.time_since_epoch()) +
      thread.offset);
  if (thread.next_sequence == thread.sequence_end) {
    thread.next_sequence = g_floor_sequence_block.fetch_add(1024, std::memory_order_relaxed);
    thread.sequence_end = thread.next_sequence + 1024;
  }
  event.sequence = thread.next_sequence++;
  event.transaction = thread.transaction;
}

// The two clock reads alone (with the block's work between them, as in every benchmark).
void BM_Clocks(benchmark::State& state) {
  for (auto _ : state) {
    auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(start);
    block_work();
    auto end = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(end);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Clocks);

// The in-repo floor of a dispatcher that builds a full event: N std::function listeners in a
// std::vector, called after the block with an event built as above (second clock read at the end).
void BM_Floor_Built(benchmark::State& state) {
  std::vector<std::function<void(const FloorEvent&)>> listeners;
  for (int64_t i = 0; i < state.range(0); ++i) {
    listeners.emplace_back([](const FloorEvent& event) { work(event.name.size()); });
  }
  nlohmann::json payload = make_payload();
  for (auto _ : state) {
    FloorEvent event;
    floor_begin(event, kName, payload);
    block_work();
    event.end = std::chrono::steady_clock::now();
    for (const auto& listener : listeners) listener(event);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Floor_Built)->Arg(1)->Arg(10);

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

// BM_Instrument through a Handle resolved before the loop.
void BM_Instrument_Handle(benchmark::State& state) {
  Notifier notifier;
  std::vector<Subscription> subscriptions;
  for (int64_t i = 0; i < state.range(0); ++i) {
    subscriptions.push_back(subscribe_listener(notifier, kName));
  }
  if (!expect_listening(state, notifier, true)) return;
  const notifications::Handle handle = notifier.handle(kName);
  nlohmann::json payload = make_payload();
  for (auto _ : state) {
    handle.instrument(payload, [&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Instrument_Handle)->Arg(1)->Arg(10);

// BM_Instrument with a context of two keys and two nested tags set on the instrumenting thread:
// what an event pays to capture them (one shared pointer copied per event).
void BM_Instrument_Context(benchmark::State& state) {
  Notifier notifier;
  std::vector<Subscription> subscriptions;
  for (int64_t i = 0; i < state.range(0); ++i) {
    subscriptions.push_back(subscribe_listener(notifier, kName));
  }
  if (!expect_listening(state, notifier, true)) return;
  const notifications::ContextScope context({{"request_id", "r-42"}, {"tenant", "acme"}});
  const notifications::TagScope outer("checkout");
  const notifications::TagScope inner({{"section", "admin"}});
  nlohmann::json payload = make_payload();
  for (auto _ : state) {
    notifier.instrument(kName, payload, [&] { block_work(); });
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Instrument_Context)->Arg(1)->Arg(10);

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
