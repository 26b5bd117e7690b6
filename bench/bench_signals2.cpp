// The cost of a boost::signals2 signal connected to the bus (notifications::signals2::connect)
// against the same signal with a plain slot, in the same run. See docs/benchmarks.md.
//
// Every case emits signal(42, customer) on one thread; the slots and listeners do the same trivial
// work (add to a per-thread counter), so that differences are the cost of the machinery:
//   BM_Signals2_NoSlot                 the emission alone (Signals2's own floor)
//   BM_Signals2_PlainSlot              one plain slot: the raw reference
//   BM_Signals2_PlainSlotBuildsPayload one plain slot that also builds the payload json
//   BM_Signals2_Bus_NobodyListens      connected to the bus; a listener of another name only
//   BM_Signals2_Bus_OneListener        connected to the bus; one listener of the event
#include <cstdint>
#include <string>

#include <benchmark/benchmark.h>
#include <boost/signals2/signal.hpp>
#include <nlohmann/json.hpp>

#include "notifications/event.hpp"
#include "notifications/notifier.hpp"
#include "notifications/signals2.hpp"
#include "notifications/subscription.hpp"

namespace {

using notifications::Event;
using notifications::Notifier;
using notifications::Subscription;
using OrderPlaced = boost::signals2::signal<void(int, const std::string&)>;

constexpr const char* kName = "order.placed";

thread_local std::uint64_t t_counter = 0;

inline void work(std::size_t amount) {
  t_counter += amount;
  benchmark::DoNotOptimize(t_counter);
}

nlohmann::json make_payload(int id, const std::string& customer) {
  return nlohmann::json{{"id", id}, {"customer", customer}};
}

const std::string& customer() {
  static const std::string name = "customer-0042";
  return name;
}

void BM_Signals2_NoSlot(benchmark::State& state) {
  OrderPlaced signal;
  for (auto _ : state) signal(42, customer());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Signals2_NoSlot);

void BM_Signals2_PlainSlot(benchmark::State& state) {
  OrderPlaced signal;
  signal.connect([](int id, const std::string& name) { work(static_cast<std::size_t>(id) + name.size()); });
  for (auto _ : state) signal(42, customer());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Signals2_PlainSlot);

void BM_Signals2_PlainSlotBuildsPayload(benchmark::State& state) {
  OrderPlaced signal;
  signal.connect([](int id, const std::string& name) {
    const nlohmann::json payload = make_payload(id, name);
    work(payload.size());
  });
  for (auto _ : state) signal(42, customer());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Signals2_PlainSlotBuildsPayload);

void BM_Signals2_Bus_NobodyListens(benchmark::State& state) {
  Notifier notifier;
  const Subscription other = notifier.subscribe("order.shipped", [](const Event& e) { work(e.name().size()); });
  OrderPlaced signal;
  const boost::signals2::scoped_connection connection =
      notifications::signals2::connect(signal, notifier, kName, make_payload);
  if (notifier.listening(kName)) {
    state.SkipWithError("setup: someone listens to order.placed");
    return;
  }
  for (auto _ : state) signal(42, customer());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Signals2_Bus_NobodyListens);

void BM_Signals2_Bus_OneListener(benchmark::State& state) {
  Notifier notifier;
  const Subscription listener = notifier.subscribe(kName, [](const Event& e) { work(e.payload().size()); });
  OrderPlaced signal;
  const boost::signals2::scoped_connection connection =
      notifications::signals2::connect(signal, notifier, kName, make_payload);
  for (auto _ : state) signal(42, customer());
  if (t_counter == 0) state.SkipWithError("setup: the listener was never called");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Signals2_Bus_OneListener);

}  // namespace

BENCHMARK_MAIN();
