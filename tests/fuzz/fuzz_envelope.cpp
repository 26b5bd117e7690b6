// libFuzzer target for envelope decoding. Contract checked on every input:
//   1. decode_envelope neither crashes nor throws, and sets exactly one of envelope and error;
//   2. an accepted envelope survives encode -> decode unchanged, and encodes to the same bytes
//      again;
//   3. it survives event_from_envelope -> envelope_from_event unchanged;
//   4. the fast decoder (envelope_plain.hpp) either declines or decodes exactly what the general
//      decoder decodes;
//   5. the encoder writes the payload byte for byte as nlohmann's dump() does;
//   6. the receiver's decoder that validates the payload without building it either declines or
//      decodes what the general decoder decodes, and the payload built later from its span is
//      the general decoder's payload (also through an Event and its copies).
// A broken promise prints what differed and aborts, which libFuzzer reports as a crash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "notifications/envelope.hpp"
#include "remote/envelope_plain.hpp"
#include "tests/same_json.hpp"

namespace {

using test_support::same_json;

using notifications::Envelope;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_envelope: %s\n%s\n", what, detail.c_str());
  std::abort();
}

// The first field in which a and b differ, or nullptr. `typed`: payload numbers must also have the
// same JSON type (a round trip may turn -0 into 0, an integer into an unsigned one).
const char* difference(const Envelope& a, const Envelope& b, bool typed = false) {
  if (a.id != b.id) return "id";
  if (a.name != b.name) return "name";
  if (typed ? !same_json(a.payload, b.payload) : a.payload != b.payload) return "payload";
  if (a.time != b.time) return "time";
  if (a.duration != b.duration) return "duration_us";
  if (a.producer != b.producer) return "producer";
  if (a.producer_instance != b.producer_instance) return "producer_instance";
  if (a.schema_version != b.schema_version) return "schema_version";
  if (a.traceparent != b.traceparent) return "traceparent";
  if (a.exception_type != b.exception_type) return "exception.type";
  if (a.exception_message != b.exception_message) return "exception.message";
  return nullptr;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  notifications::Envelope plain;
  if (notifications::detail::decode_plain_envelope(body, plain)) {
    const notifications::DecodeResult general = notifications::detail::decode_general_envelope(body);
    if (!general) fail("the fast decoder accepted what the general decoder rejects", general.error);
    const char* field = difference(plain, *general.envelope, true);
    if (field == nullptr && plain.sequence != general.envelope->sequence) field = "sequence";
    if (field != nullptr) {
      fail("the fast and the general decoder differ", std::string(field) + "\n" + std::string(body));
    }
  }
  notifications::Envelope deferred;
  notifications::detail::PayloadSpan span;
  if (notifications::detail::decode_plain_envelope_deferring_payload(body, deferred, span)) {
    const notifications::DecodeResult general = notifications::detail::decode_general_envelope(body);
    if (!general) fail("the deferring decoder accepted what the general decoder rejects", general.error + "\n" + std::string(body));
    if (span.offset > body.size() || span.size > body.size() - span.offset) fail("the payload span is outside the body", std::string(body));
    deferred.payload = notifications::detail::build_validated_payload(body.substr(span.offset, span.size));
    const char* field = difference(deferred, *general.envelope, true);
    if (field == nullptr && deferred.sequence != general.envelope->sequence) field = "sequence";
    if (field != nullptr) fail("the deferring and the general decoder differ", std::string(field) + "\n" + std::string(body));
    const notifications::Event event = notifications::detail::event_with_deferred_payload(
        *general.envelope, "fuzz", notifications::detail::deferred_payload(std::string(body), span));
    const notifications::Event copy = event;  // shares the text; each reads the one value
    if (!same_json(copy.payload(), general.envelope->payload) || !same_json(event.payload(), general.envelope->payload)) {
      fail("an event's deferred payload differs from the general decoder's", std::string(body));
    }
  }
  const notifications::DecodeResult first = notifications::decode_envelope(body);
  if (first.envelope.has_value() == !first.error.empty()) {
    fail("decode set both or neither of envelope and error", first.error);
  }
  if (!first) return 0;

  const std::string encoded = notifications::encode_envelope(*first.envelope);
  const notifications::DecodeResult second = notifications::decode_envelope(encoded);
  if (!second) fail("an encoded envelope did not decode", second.error + "\n" + encoded);
  const char* changed = difference(*first.envelope, *second.envelope);
  if (changed == nullptr && first.envelope->sequence != second.envelope->sequence) changed = "sequence";
  if (const char* field = changed) {
    fail("encode -> decode changed a field", std::string(field) + "\n" + encoded);
  }
  const std::string payload_text =
      "\"payload\":" + first.envelope->payload.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "}";
  if (encoded.size() < payload_text.size() ||
      encoded.compare(encoded.size() - payload_text.size(), payload_text.size(), payload_text) != 0) {
    fail("the payload is not written as nlohmann's dump() writes it", encoded + "\n" + payload_text);
  }
  const std::string again = notifications::encode_envelope(*second.envelope);
  if (again != encoded) fail("encoding is not stable", encoded + "\n" + again);

  const notifications::Event event = notifications::event_from_envelope(*first.envelope, "fuzz");
  const Envelope back = notifications::envelope_from_event(event, first.envelope->producer,
                                                           first.envelope->producer_instance);
  if (const char* field = difference(*first.envelope, back)) {
    fail("event_from_envelope -> envelope_from_event changed a field",
         std::string(field) + "\n" + encoded);
  }
  return 0;
}
