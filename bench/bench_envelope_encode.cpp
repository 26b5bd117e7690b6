// What a sending Bridge pays to encode one event, in its two halves:
//
//   BM_OutgoingFromEvent   the instrumenting thread's part: the payload (and context, tags)
//                          serialised into the outbox item (outgoing_from_event)
//   BM_EncodeOutgoing      the sender thread's part: the whole envelope written into a reused
//                          Message (encode_outgoing), as the sender does per event
//   BM_NlohmannDump        the baseline in the same run: nlohmann::json::dump() of the payload,
//                          what a program writing the envelope by hand pays for the payload alone
//
// Each runs on two events: "order" (the bench_nats payload: 4 members) and "large" (about 2 KB:
// nested objects, arrays of numbers, strings with escapes and non-ASCII UTF-8). Every event gets
// a time of its own (one microsecond apart), as a stream of events does.
//
// Run: build/bench/bench/bench_envelope_encode [--benchmark_repetitions=9 ...]; see
// docs/benchmarks.md.
#include <chrono>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "notifications/event.hpp"
#include "notifications/transport.hpp"
#include "remote/outgoing_event.hpp"

namespace {

namespace n = notifications;
namespace nd = notifications::detail;
using nlohmann::json;

json order_payload() {
  return {{"order_id", 12345}, {"customer", "ada"}, {"total_cents", 4200}, {"items", {"mug", "hoodie"}}};
}

json large_payload() {
  json items = json::array();
  for (int i = 0; i < 12; ++i) {
    items.push_back({{"sku", "SKU-" + std::to_string(1000 + i)},
                     {"title", "Caf\u00e9 mug \"large\" \u2615 #" + std::to_string(i)},
                     {"quantity", i % 4 + 1},
                     {"price_cents", 1299 + i * 17},
                     {"tags", {"kitchen", "gift", "ceramic"}}});
  }
  return {{"order_id", 9876543210ull}, {"customer", {{"name", "Ada Lovelace"}, {"email", "ada@example.com"}}},
          {"items", items}, {"note", "line one\nline two\t\"quoted\""}, {"express", true}, {"coupon", nullptr}};
}

json payload_for(int which) { return which == 0 ? order_payload() : large_payload(); }

void BM_OutgoingFromEvent(benchmark::State& state) {
  const n::Event event("order.placed", payload_for(static_cast<int>(state.range(0))));
  for (auto _ : state) {
    nd::OutgoingEvent outgoing = nd::outgoing_from_event(event);
    benchmark::DoNotOptimize(outgoing);
  }
}

void BM_EncodeOutgoing(benchmark::State& state) {
  const n::Event event("order.placed", payload_for(static_cast<int>(state.range(0))));
  // The same event with times one microsecond apart, as the sender meets a stream.
  constexpr std::size_t kEvents = 1024;
  std::vector<nd::OutgoingEvent> events;
  for (std::size_t i = 0; i < kEvents; ++i) {
    events.push_back(nd::outgoing_from_event(event));
    events.back().time += std::chrono::microseconds(i);
  }
  n::Message message;
  std::uint64_t sequence = 1;
  std::size_t i = 0;
  for (auto _ : state) {
    nd::encode_outgoing(events[i], "orders", "00000000-0000-4000-8000-000000000000", sequence++,
                        "bench.order.placed", message);
    benchmark::DoNotOptimize(message.body.data());
    i = (i + 1) % kEvents;
  }
}

void BM_NlohmannDump(benchmark::State& state) {
  const json payload = payload_for(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    std::string text = payload.dump();
    benchmark::DoNotOptimize(text.data());
  }
}

}  // namespace

BENCHMARK(BM_OutgoingFromEvent)->Arg(0)->Arg(1)->ArgName("large");
BENCHMARK(BM_EncodeOutgoing)->Arg(0)->Arg(1)->ArgName("large");
BENCHMARK(BM_NlohmannDump)->Arg(0)->Arg(1)->ArgName("large");

BENCHMARK_MAIN();
