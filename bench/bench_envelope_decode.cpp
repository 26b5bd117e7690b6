// What a receiver pays to decode one envelope, by decoder: the project's own one-pass decoder
// (remote/envelope_plain.hpp), building the payload at once or only validating it (a Bridge
// builds it on the first read, PayloadReadGuess), the general decoder (nlohmann's parser, then
// field checks), and simdjson 3.0.1's two validating parsers doing the same work:
//
//   BM_Own_BuildPayload          decode_envelope(): fields checked, payload built
//   BM_Own_ValidatePayload       decode_envelope_deferring_payload(): fields checked, payload only
//                                validated (what a listener that does not read it costs)
//   BM_Own_ValidateThenBuild     the same, then the payload built from its span (a listener reads it)
//   BM_General                   nlohmann::json::parse of the body, then the same field checks
//   BM_SimdjsonDom_Validate      simdjson::dom::parser::parse (validates the whole body: UTF-8,
//                                structure, numbers, depth), then the same field checks; payload
//                                not built
//   BM_SimdjsonDom_ValidateThenBuild   the same, then the payload built as nlohmann::json from the DOM
//   BM_SimdjsonOnDemand_Validate simdjson::ondemand: the same field checks, and every value of the
//                                payload visited (On-Demand validates only what is visited)
//
// Every case applies the own fast decoder's rules: known top-level keys only, each once, the
// required ones present, the project's value checks (is_uuid, envelope_time, is_traceparent, the
// 2^53 - 1 bound on duration_us and sequence, object context and tags, the exception's shape) and
// nesting at most 64 deep, so the difference between cases is the parsing. The simdjson cases get their input already padded
// (SIMDJSON_PADDING bytes of slack): a receiver would copy each body into such a buffer, which
// BM_CopyIntoPaddedBuffer measures on its own.
//
// Each runs on two bodies: "order" (the bench_nats event: 4 members, about 300 bytes in all) and
// "large" (a payload of about 2 KB: nested objects, arrays of numbers, strings with escapes and
// non-ASCII UTF-8). Every case checks once, before timing, that it accepts the body and (where it
// builds the payload) that it built the same value as the general decoder.
//
// Run: build/bench/bench/bench_envelope_decode [--benchmark_repetitions=5 ...]; see
// docs/benchmarks.md.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>
#include <simdjson.h>

#include "notifications/envelope.hpp"
#include "notifications/event.hpp"
#include "remote/envelope_plain.hpp"
#include "remote/envelope_rules.hpp"

namespace {

namespace n = notifications;
namespace nd = notifications::detail;
using nlohmann::json;
// On-Demand is compiled into its caller for the instruction set the compiler targets: built for
// Debian's baseline x86-64 it runs simdjson's portable "fallback" kernel; bench/CMakeLists.txt
// also builds this file with -march=haswell (bench_envelope_decode_haswell), which gets the AVX2
// kernel. The DOM parser chooses its kernel at run time in libsimdjson, so it is the same in both.
namespace ondemand = simdjson::ondemand;
#define BENCH_NAME_OF(x) #x
#define BENCH_NAME(x) BENCH_NAME_OF(x)
// The kernel On-Demand was compiled with in this file (simdjson::builtin_implementation() would
// name the shared library's, built for the baseline).
constexpr const char* kOnDemandKernel = BENCH_NAME(SIMDJSON_BUILTIN_IMPLEMENTATION);

std::string order_body() {
  const json payload = {{"order_id", 12345}, {"customer", "ada"}, {"total_cents", 4200}, {"items", {"mug", "hoodie"}}};
  n::Envelope e = n::envelope_from_event(n::Event("order.placed", payload), "a", "00000000-0000-4000-8000-000000000000");
  e.sequence = 7;
  return n::encode_envelope(e);
}

std::string large_body() {
  json lines = json::array();
  for (int i = 0; i < 12; ++i) {
    lines.push_back({{"sku", "SKU-" + std::to_string(1000 + i)},
                     {"title", "Caf\xc3\xa9 mug \xe2\x84\x96" + std::to_string(i) + " \"deluxe\"\n"},
                     {"qty", i % 3 + 1},
                     {"price", 12.5 + i},
                     {"tags", {"kitchen", "gift", nullptr, true}}});
  }
  const json payload = {{"order_id", 9876543210}, {"customer", {{"name", "Ada L\xc3\xb6vel\xc3\xa4"}, {"tier", "gold"}}},
                        {"lines", lines}, {"scores", {1, -2, 3.25, 4e10, 0}}, {"note", "\xe2\x9c\x93 tab\there"}};
  n::Envelope e = n::envelope_from_event(n::Event("order.placed", payload), "a", "00000000-0000-4000-8000-000000000000");
  e.sequence = 7;
  e.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  return n::encode_envelope(e);
}

const std::string& body_for(const benchmark::State& state) {
  static const std::string order = order_body();
  static const std::string large = large_body();
  return state.range(0) == 0 ? order : large;
}

void label(benchmark::State& state) {
  state.SetLabel(state.range(0) == 0 ? "order" : "large");
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(body_for(state).size()));
}

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("bench_envelope_decode: " + what); }

// The top-level keys of an envelope as the own fast decoder takes them: known ones only, each
// once, the required ones all present.
class FieldSet {
 public:
  bool take(std::string_view key) {
    static constexpr std::string_view kKeys[] = {"schema_version", "id", "name", "time", "duration_us", "producer",
                                                 "producer_instance", "payload", "traceparent", "sequence",
                                                 "exception", "context", "tags"};
    for (unsigned i = 0; i < std::size(kKeys); ++i) {
      if (kKeys[i] == key) {
        if ((seen_ & (1u << i)) != 0) return false;
        seen_ |= 1u << i;
        return true;
      }
    }
    return false;
  }
  bool complete() const { return (seen_ & 0xFFu) == 0xFFu; }  // the first eight are required

 private:
  unsigned seen_ = 0;
};

// ---- simdjson: the envelope's fields with the project's checks ---------------------------------

// One envelope field from a DOM element, as the general decoder accepts it; false when not.
bool dom_field(std::string_view key, simdjson::dom::element value, n::Envelope& out) {
  std::string_view text;
  std::uint64_t number = 0;
  if (key == "schema_version") return !value.get_uint64().get(number) && number == 1;
  if (key == "id") return !value.get_string().get(text) && nd::is_uuid(text) && (out.id.assign(text), true);
  if (key == "name") return !value.get_string().get(text) && !text.empty() && (out.name.assign(text), true);
  if (key == "time") {
    if (value.get_string().get(text)) return false;
    const auto time = nd::envelope_time(text);
    return time && (out.time = *time, true);
  }
  if (key == "duration_us") {
    return !value.get_uint64().get(number) && number <= static_cast<std::uint64_t>(nd::kMaxExactInteger) &&
           (out.duration = std::chrono::microseconds(static_cast<std::int64_t>(number)), true);
  }
  if (key == "producer") return !value.get_string().get(text) && !text.empty() && (out.producer.assign(text), true);
  if (key == "producer_instance") {
    return !value.get_string().get(text) && !text.empty() && (out.producer_instance.assign(text), true);
  }
  if (key == "traceparent") return !value.get_string().get(text) && nd::is_traceparent(text) && (out.traceparent.assign(text), true);
  if (key == "sequence") {
    return !value.get_uint64().get(number) && number >= 1 && number <= static_cast<std::uint64_t>(nd::kMaxExactInteger) &&
           (out.sequence = number, true);
  }
  if (key == "context" || key == "tags") return value.is_object();
  if (key == "exception") {
    simdjson::dom::object exception;
    std::string_view type, message;
    return !value.get_object().get(exception) && exception.size() == 2 && !exception["type"].get_string().get(type) &&
           !type.empty() && !exception["message"].get_string().get(message);
  }
  return true;  // payload: validated by the parse, built by the caller when asked
}

json to_nlohmann(simdjson::dom::element element) {
  switch (element.type()) {
    case simdjson::dom::element_type::OBJECT: {
      json out = json::object();
      const simdjson::dom::object object = element.get_object().value_unsafe();
      for (auto [key, value] : object) out[std::string(key)] = to_nlohmann(value);
      return out;
    }
    case simdjson::dom::element_type::ARRAY: {
      json out = json::array();
      const simdjson::dom::array array = element.get_array().value_unsafe();
      for (simdjson::dom::element value : array) out.push_back(to_nlohmann(value));
      return out;
    }
    case simdjson::dom::element_type::STRING:
      return std::string(element.get_string().value_unsafe());
    case simdjson::dom::element_type::INT64: {  // nlohmann keeps non-negative integers unsigned
      const std::int64_t value = element.get_int64().value_unsafe();
      return value >= 0 ? json(static_cast<std::uint64_t>(value)) : json(value);
    }
    case simdjson::dom::element_type::UINT64:
      return element.get_uint64().value_unsafe();
    case simdjson::dom::element_type::DOUBLE:
      return element.get_double().value_unsafe();
    case simdjson::dom::element_type::BOOL:
      return element.get_bool().value_unsafe();
    case simdjson::dom::element_type::NULL_VALUE:
      return nullptr;
  }
  return nullptr;
}

// The DOM way: parse (validating everything), then the fields; `build`: the payload too.
bool dom_decode(simdjson::dom::parser& parser, const simdjson::padded_string_view input, n::Envelope& out, bool build) {
  simdjson::dom::element root;
  if (parser.parse(input.data(), input.length(), false).get(root)) return false;
  simdjson::dom::object object;
  if (root.get_object().get(object)) return false;
  FieldSet fields;
  for (auto [key, value] : object) {
    if (!fields.take(key) || !dom_field(key, value, out)) return false;
    if (build && key == "payload") out.payload = to_nlohmann(value);
  }
  return fields.complete();
}

// A DOM parser with the envelope's nesting limit.
simdjson::dom::parser dom_parser() {
  simdjson::dom::parser parser;
  if (parser.allocate(1 << 16, nd::kMaxDepth)) fail("simdjson: cannot allocate a parser");
  return parser;
}

// Every value under `value` visited, so that On-Demand validates it; nesting at most `depth`.
bool visit(ondemand::value value, std::size_t depth) {
  ondemand::json_type type;
  if (value.type().get(type)) return false;
  switch (type) {
    case ondemand::json_type::object: {
      if (depth == 0) return false;
      ondemand::object object;
      if (value.get_object().get(object)) return false;
      for (auto field : object) {
        std::string_view key;
        ondemand::value inner;
        if (field.unescaped_key().get(key) || field.value().get(inner) || !visit(inner, depth - 1)) return false;
      }
      return true;
    }
    case ondemand::json_type::array: {
      if (depth == 0) return false;
      ondemand::array array;
      if (value.get_array().get(array)) return false;
      for (auto element : array) {
        ondemand::value inner;
        if (element.get(inner) || !visit(inner, depth - 1)) return false;
      }
      return true;
    }
    case ondemand::json_type::string: {
      std::string_view text;
      return !value.get_string().get(text);
    }
    case ondemand::json_type::number: {
      ondemand::number number;
      return !value.get_number().get(number);
    }
    case ondemand::json_type::boolean: {
      bool b = false;
      return !value.get_bool().get(b);
    }
    case ondemand::json_type::null: {
      bool null = false;
      return !value.is_null().get(null) && null;
    }
  }
  return false;
}

bool ondemand_decode(ondemand::parser& parser, const simdjson::padded_string_view input, n::Envelope& out) {
  ondemand::document document;
  if (parser.iterate(input).get(document)) return false;
  ondemand::object object;
  if (document.get_object().get(object)) return false;
  FieldSet fields;
  for (auto field : object) {
    std::string_view key;
    if (field.unescaped_key().get(key) || !fields.take(key)) return false;
    ondemand::value value;
    if (field.value().get(value)) return false;
    std::string_view text;
    std::uint64_t number = 0;
    if (key == "payload") {
      if (!visit(value, nd::kMaxDepth - 1)) return false;
    } else if (key == "schema_version") {
      if (value.get_uint64().get(number) || number != 1) return false;
    } else if (key == "id") {
      if (value.get_string().get(text) || !nd::is_uuid(text)) return false;
      out.id.assign(text);
    } else if (key == "name") {
      if (value.get_string().get(text) || text.empty()) return false;
      out.name.assign(text);
    } else if (key == "time") {
      if (value.get_string().get(text)) return false;
      const auto time = nd::envelope_time(text);
      if (!time) return false;
      out.time = *time;
    } else if (key == "duration_us") {
      if (value.get_uint64().get(number) || number > static_cast<std::uint64_t>(nd::kMaxExactInteger)) return false;
      out.duration = std::chrono::microseconds(static_cast<std::int64_t>(number));
    } else if (key == "producer") {
      if (value.get_string().get(text) || text.empty()) return false;
      out.producer.assign(text);
    } else if (key == "producer_instance") {
      if (value.get_string().get(text) || text.empty()) return false;
      out.producer_instance.assign(text);
    } else if (key == "traceparent") {
      if (value.get_string().get(text) || !nd::is_traceparent(text)) return false;
      out.traceparent.assign(text);
    } else if (key == "sequence") {
      if (value.get_uint64().get(number) || number == 0 || number > static_cast<std::uint64_t>(nd::kMaxExactInteger)) {
        return false;
      }
      out.sequence = number;
    } else if (key == "context" || key == "tags") {
      ondemand::json_type type;
      if (value.type().get(type) || type != ondemand::json_type::object || !visit(value, nd::kMaxDepth - 1)) return false;
    } else if (key == "exception") {
      ondemand::object exception;
      if (value.get_object().get(exception)) return false;
      std::string_view type, message;
      if (exception["type"].get_string().get(type) || type.empty() || exception["message"].get_string().get(message)) {
        return false;
      }
    }
  }
  return fields.complete();  // trailing text goes unseen: simdjson 3.0.1's document has no public at_end()
}

// The body with simdjson's padding after it, as a receiver would hold it.
struct Padded {
  explicit Padded(const std::string& body) : text(body) { text.reserve(body.size() + simdjson::SIMDJSON_PADDING); }
  simdjson::padded_string_view view() const { return simdjson::padded_string_view(text.data(), text.size(), text.capacity()); }
  std::string text;
};

// ---- the cases ---------------------------------------------------------------------------------

void BM_Own_BuildPayload(benchmark::State& state) {
  const std::string& body = body_for(state);
  n::Envelope fast;  // the fast path, not the general fallback, is what is timed
  if (!nd::decode_plain_envelope(body, fast) || fast.payload != nd::decode_general_envelope(body).envelope->payload) {
    fail("the fast decoder declined the body or built another payload");
  }
  for (auto _ : state) {
    n::DecodeResult result = n::decode_envelope(body);
    benchmark::DoNotOptimize(result);
  }
  label(state);
}

void BM_Own_ValidatePayload(benchmark::State& state) {
  const std::string& body = body_for(state);
  n::Envelope check;
  nd::PayloadSpan span;
  if (!nd::decode_plain_envelope_deferring_payload(body, check, span)) fail("the deferring decoder declined the body");
  for (auto _ : state) {
    std::optional<nd::PayloadSpan> payload;
    n::DecodeResult result = nd::decode_envelope_deferring_payload(body, payload);
    benchmark::DoNotOptimize(result);
  }
  label(state);
}

void BM_Own_ValidateThenBuild(benchmark::State& state) {
  const std::string& body = body_for(state);
  const json expected = nd::decode_general_envelope(body).envelope->payload;
  n::Envelope check;
  nd::PayloadSpan span;
  if (!nd::decode_plain_envelope_deferring_payload(body, check, span) ||
      nd::build_validated_payload(std::string_view(body).substr(span.offset, span.size)) != expected) {
    fail("the deferring decoder declined the body or built another payload");
  }
  for (auto _ : state) {
    std::optional<nd::PayloadSpan> payload;
    n::DecodeResult result = nd::decode_envelope_deferring_payload(body, payload);
    result.envelope->payload = nd::build_validated_payload(std::string_view(body).substr(payload->offset, payload->size));
    benchmark::DoNotOptimize(result);
  }
  label(state);
}

void BM_General(benchmark::State& state) {
  const std::string& body = body_for(state);
  if (!nd::decode_general_envelope(body)) fail("the general decoder rejected the body");
  for (auto _ : state) {
    n::DecodeResult result = nd::decode_general_envelope(body);
    benchmark::DoNotOptimize(result);
  }
  label(state);
}

void BM_SimdjsonDom_Validate(benchmark::State& state) {
  const Padded padded(body_for(state));
  simdjson::dom::parser parser = dom_parser();
  n::Envelope check;
  if (!dom_decode(parser, padded.view(), check, false)) fail("simdjson DOM rejected the body");
  for (auto _ : state) {
    n::Envelope out;
    benchmark::DoNotOptimize(dom_decode(parser, padded.view(), out, false));
    benchmark::DoNotOptimize(out);
  }
  label(state);
}

void BM_SimdjsonDom_ValidateThenBuild(benchmark::State& state) {
  const Padded padded(body_for(state));
  simdjson::dom::parser parser = dom_parser();
  n::Envelope check;
  if (!dom_decode(parser, padded.view(), check, true)) fail("simdjson DOM rejected the body");
  if (check.payload != nd::decode_general_envelope(padded.text).envelope->payload) {
    fail("simdjson DOM built another payload than the general decoder");
  }
  for (auto _ : state) {
    n::Envelope out;
    benchmark::DoNotOptimize(dom_decode(parser, padded.view(), out, true));
    benchmark::DoNotOptimize(out);
  }
  label(state);
}

void BM_SimdjsonOnDemand_Validate(benchmark::State& state) {
  const Padded padded(body_for(state));
  ondemand::parser parser;
  n::Envelope check;
  if (!ondemand_decode(parser, padded.view(), check)) fail("simdjson On-Demand rejected the body");
  for (auto _ : state) {
    n::Envelope out;
    benchmark::DoNotOptimize(ondemand_decode(parser, padded.view(), out));
    benchmark::DoNotOptimize(out);
  }
  label(state);
  state.SetLabel(std::string(state.range(0) == 0 ? "order" : "large") + ", On-Demand kernel " + kOnDemandKernel);
}

void BM_CopyIntoPaddedBuffer(benchmark::State& state) {
  const std::string& body = body_for(state);
  for (auto _ : state) {
    simdjson::padded_string copy(body);
    benchmark::DoNotOptimize(copy.data());
  }
  label(state);
}

BENCHMARK(BM_Own_BuildPayload)->Arg(0)->Arg(1);
BENCHMARK(BM_Own_ValidatePayload)->Arg(0)->Arg(1);
BENCHMARK(BM_Own_ValidateThenBuild)->Arg(0)->Arg(1);
BENCHMARK(BM_General)->Arg(0)->Arg(1);
BENCHMARK(BM_SimdjsonDom_Validate)->Arg(0)->Arg(1);
BENCHMARK(BM_SimdjsonDom_ValidateThenBuild)->Arg(0)->Arg(1);
BENCHMARK(BM_SimdjsonOnDemand_Validate)->Arg(0)->Arg(1);
BENCHMARK(BM_CopyIntoPaddedBuffer)->Arg(0)->Arg(1);

}  // namespace

int main(int argc, char** argv) {
#if defined(__AVX2__)
  if (!__builtin_cpu_supports("avx2")) {
    std::fprintf(stderr, "bench_envelope_decode: built for AVX2, which this CPU lacks\n");
    return 2;
  }
#endif
  std::printf("simdjson %d.%d.%d: DOM kernel %s (chosen at run time), On-Demand kernel %s (chosen at build time)\n",
              int(simdjson::SIMDJSON_VERSION_MAJOR), int(simdjson::SIMDJSON_VERSION_MINOR),
              int(simdjson::SIMDJSON_VERSION_REVISION), simdjson::get_active_implementation()->name().c_str(),
              kOnDemandKernel);
  std::printf("bodies: order %zu bytes, large %zu bytes\n", order_body().size(), large_body().size());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
