#include "notifications/envelope.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <new>
#include <string>
#include <utility>

#include "remote/envelope_plain.hpp"
#include "remote/envelope_rules.hpp"
#include "remote/json_writer.hpp"
#include "local/event_access.hpp"
#include "process/ids.hpp"
#include "remote/outgoing_event.hpp"

namespace notifications {

namespace {

using nlohmann::json;
using Clock = std::chrono::system_clock;
using namespace detail;  // the field rules (envelope_rules.hpp)

// Values quoted in decode errors are cut after this many bytes.
constexpr std::size_t kQuoteLimit = 64;

constexpr std::string_view kTimeExample = "2026-11-25T12:00:00.000000Z";
constexpr std::string_view kUuidExample = "0190c3c5-7d0e-8000-8000-000000000001";
constexpr std::string_view kTraceparentExample =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ---- text helpers

std::string dump(const json& value, bool ensure_ascii) {
  return value.dump(-1, ' ', ensure_ascii, json::error_handler_t::replace);
}

// A JSON value as a decode error shows it: strings quoted, other values with their type; ASCII
// only, cut after kQuoteLimit bytes.
std::string describe(const json& value) {
  if (value.is_string()) {
    const auto& text = value.get_ref<const std::string&>();
    if (text.size() <= kQuoteLimit) return dump(value, true);
    std::size_t cut = kQuoteLimit;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    std::string shown = dump(json(text.substr(0, cut)), true);
    shown.insert(shown.size() - 1, "...");
    return shown + " (" + std::to_string(text.size()) + " bytes)";
  }
  if (value.is_null()) return "null";
  std::string shown = dump(value, true);
  if (shown.size() > kQuoteLimit) shown = shown.substr(0, kQuoteLimit) + "...";
  std::string type = value.type_name();
  return type + " " + shown;
}

// ---- decoding

class Decoder {
 public:
  Decoder(json& object, std::string& error) : object_(object), error_(error) {}

  bool fail(std::string_view field, const std::string& what) {
    error_ = "field \"";
    error_.append(field).append("\": ").append(what);
    return false;
  }

  json* find(json& object, const char* key) {
    const auto it = object.find(key);
    return it == object.end() ? nullptr : &*it;
  }

  bool required(const char* field, json*& value) {
    value = find(object_, field);
    return value != nullptr || fail(field, "missing");
  }

  // A string member; non-empty unless allow_empty.
  bool string(json& object, const char* key, std::string_view field, bool allow_empty,
              std::string& out) {
    json* value = find(object, key);
    if (value == nullptr) return fail(field, "missing");
    if (!value->is_string()) return fail(field, "expected a string, got " + describe(*value));
    auto& text = value->get_ref<std::string&>();
    if (text.empty() && !allow_empty) return fail(field, "empty (expected a non-empty string)");
    out = std::move(text);
    return true;
  }

  bool schema_version(int& out) {
    json* value = nullptr;
    if (!required("schema_version", value)) return false;
    if (!value->is_number_integer()) {
      return fail("schema_version", "expected an integer, got " + describe(*value));
    }
    const bool one = value->is_number_unsigned() ? value->get<std::uint64_t>() == 1
                                                 : value->get<std::int64_t>() == 1;
    if (!one) {
      return fail("schema_version", "unsupported version " + dump(*value, true) +
                                        " (this build reads " +
                                        std::to_string(Envelope::kSchemaVersion) + ")");
    }
    out = Envelope::kSchemaVersion;
    return true;
  }

  bool id(std::string& out) {
    if (!string(object_, "id", "id", false, out)) return false;
    if (!is_uuid(out)) {
      return fail("id", "expected a UUID like " + std::string(kUuidExample) + ", got " +
                            describe(json(out)));
    }
    return true;
  }

  bool time(Clock::time_point& out) {
    json* value = nullptr;
    if (!required("time", value)) return false;
    const std::string expected =
        "expected RFC 3339 UTC like " + std::string(kTimeExample) + ", got ";
    if (!value->is_string()) return fail("time", expected + describe(*value));
    TimeProblem problem = TimeProblem::none;
    auto parsed = parse_time(value->get_ref<const std::string&>(), problem);
    // Times are kept to the microsecond: the range is that of the clock, rounded inwards.
    const auto lowest = kEarliestEnvelopeTime;
    const auto highest = kLatestEnvelopeTime;
    if (parsed && *parsed < lowest) {
      parsed.reset();
      problem = TimeProblem::out_of_range;
    }
    if (!parsed) {
      std::string why = expected + describe(*value);
      if (problem == TimeProblem::no_such_date) why += " (no such date or time of day)";
      if (problem == TimeProblem::out_of_range) {
        why += " (outside this build's range " + format_rfc3339(lowest) + " to " +
               format_rfc3339(highest) + ")";
      }
      return fail("time", why);
    }
    out = std::chrono::floor<std::chrono::microseconds>(*parsed);
    return true;
  }

  // An integer from `lowest` to kMaxExactInteger.
  bool exact_integer(const json& value, const char* field, std::int64_t lowest, std::uint64_t& out) {
    const std::string expected = "expected an integer from " + std::to_string(lowest) + " to " +
                                 std::to_string(kMaxExactInteger) + ", got ";
    if (!value.is_number_integer()) return fail(field, expected + describe(value));
    const bool in_range = value.is_number_unsigned()
                              ? value.get<std::uint64_t>() >= static_cast<std::uint64_t>(lowest) &&
                                    value.get<std::uint64_t>() <= std::uint64_t{kMaxExactInteger}
                              : value.get<std::int64_t>() >= lowest && value.get<std::int64_t>() <= kMaxExactInteger;
    if (!in_range) return fail(field, expected + describe(value));
    out = value.get<std::uint64_t>();
    return true;
  }

  bool sequence(std::uint64_t& out) {
    const json* value = find(object_, "sequence");
    return value == nullptr || exact_integer(*value, "sequence", 1, out);  // optional
  }

  bool duration(std::chrono::microseconds& out) {
    json* value = nullptr;
    std::uint64_t micros = 0;
    if (!required("duration_us", value) || !exact_integer(*value, "duration_us", 0, micros)) return false;
    out = std::chrono::microseconds(static_cast<std::int64_t>(micros));
    return true;
  }

  bool traceparent(std::string& out) {
    json* value = find(object_, "traceparent");
    if (value == nullptr) return true;
    const std::string expected =
        "expected a W3C traceparent like " + std::string(kTraceparentExample) + ", got ";
    if (!value->is_string() || !is_traceparent(value->get_ref<const std::string&>())) {
      return fail("traceparent", expected + describe(*value));
    }
    out = std::move(value->get_ref<std::string&>());
    return true;
  }

  // An optional member that must be an object when present.
  bool object(const char* field, nlohmann::json& out) {
    json* value = find(object_, field);
    if (value == nullptr) return true;
    // The value is not quoted: a context may hold what a route's redaction rules would hide.
    if (!value->is_object()) return fail(field, std::string("expected an object, got ") + value->type_name());
    out = std::move(*value);
    return true;
  }

  bool exception(std::optional<std::string>& type, std::optional<std::string>& message) {
    json* value = find(object_, "exception");
    if (value == nullptr) return true;
    if (!value->is_object()) {
      return fail("exception",
                  "expected an object {\"type\": ..., \"message\": ...}, got " + describe(*value));
    }
    std::string t;
    std::string m;
    if (!string(*value, "type", "exception.type", false, t)) return false;
    if (!string(*value, "message", "exception.message", true, m)) return false;
    type = std::move(t);
    message = std::move(m);
    return true;
  }

 private:
  json& object_;
  std::string& error_;
};

void decode_into(std::string_view body, DecodeResult& result) {
  std::string& error = result.error;
  if (const std::size_t at = too_deep_at(body, kMaxDepth); at != std::string_view::npos) {
    error = "body: nested deeper than " + std::to_string(kMaxDepth) + " levels (at byte " +
            std::to_string(at + 1) + ")";
    return;
  }
  json document;
  try {
    document = json::parse(body);
  } catch (const json::parse_error& e) {
    error = "body: not JSON (parse error at byte " + std::to_string(e.byte) + ")";
    return;
  } catch (const json::out_of_range&) {
    error = "body: not JSON (a number is out of range)";
    return;
  }
  if (!document.is_object()) {
    error = "body: expected a JSON object, got " + describe(document);
    return;
  }

  Envelope envelope;
  Decoder decoder(document, error);
  json* payload = nullptr;
  if (!decoder.schema_version(envelope.schema_version) || !decoder.id(envelope.id) ||
      !decoder.string(document, "name", "name", false, envelope.name) ||
      !decoder.time(envelope.time) || !decoder.duration(envelope.duration) ||
      !decoder.string(document, "producer", "producer", false, envelope.producer) ||
      !decoder.string(document, "producer_instance", "producer_instance", false,
                      envelope.producer_instance) ||
      !decoder.traceparent(envelope.traceparent) || !decoder.sequence(envelope.sequence) ||
      !decoder.exception(envelope.exception_type, envelope.exception_message) ||
      !decoder.object("context", envelope.context) || !decoder.object("tags", envelope.tags) ||
      !decoder.required("payload", payload)) {
    return;
  }
  envelope.payload = std::move(*payload);
  result.envelope = std::move(envelope);
}

// Sets `error` without letting an allocation failure escape.
void set_error(DecodeResult& result, const char* text) noexcept {
  result.envelope.reset();
  try {
    result.error = text;
  } catch (...) {
    result.error.clear();  // keeps its capacity: the short fallback below needs no allocation
    try {
      result.error = "out of memory";
    } catch (...) {
    }
  }
}

}  // namespace

namespace {

// One envelope's fields, borrowed: encoding copies nothing (the payload least of all).
struct EnvelopeFields {
  std::string_view id;
  std::string_view name;
  const nlohmann::json* payload;  // null: payload_json holds it, serialised
  std::string_view payload_json;
  std::chrono::system_clock::time_point time;
  std::chrono::microseconds duration;
  std::string_view producer;
  std::string_view producer_instance;
  int schema_version;
  std::string_view traceparent;
  std::uint64_t sequence;
  const std::string* exception_type;     // null: absent
  const std::string* exception_message;  // null: absent
  const nlohmann::json* context = nullptr;  // null or not a non-empty object: absent
  const nlohmann::json* tags = nullptr;
  // Or both, serialised: {"context":{...},"tags":{...}} (OutboxEvent::attributes()); empty: absent.
  std::string_view attributes_json = {};
};

bool present(const nlohmann::json* value) { return value != nullptr && value->is_object() && !value->empty(); }

// Appends the envelope object to `out`.
void encode_fields(const EnvelopeFields& f, std::string& out) {
  using namespace std::string_view_literals;  // literals appended without strlen
  out.reserve(out.size() + 224 + f.name.size() + f.producer.size() + f.payload_json.size());
  out += "{\"id\":"sv;
  append_json_string(out, f.id);
  out += ",\"name\":"sv;
  append_json_string(out, f.name);
  out += ",\"time\":\""sv;
  detail::append_rfc3339(out, f.time);
  out += "\",\"duration_us\":"sv;
  append_integer(out, f.duration.count());
  out += ",\"producer\":"sv;
  append_json_string(out, f.producer);
  out += ",\"producer_instance\":"sv;
  append_json_string(out, f.producer_instance);
  out += ",\"schema_version\":"sv;
  append_integer(out, f.schema_version);
  if (!f.traceparent.empty()) {
    out += ",\"traceparent\":"sv;
    append_json_string(out, f.traceparent);
  }
  if (f.sequence != 0) {
    out += ",\"sequence\":"sv;
    append_decimal(out, f.sequence);
  }
  if (f.exception_type != nullptr || f.exception_message != nullptr) {
    static const std::string kEmpty;
    out += ",\"exception\":{\"type\":"sv;
    append_json_string(out, f.exception_type != nullptr ? *f.exception_type : kEmpty);
    out += ",\"message\":"sv;
    append_json_string(out, f.exception_message != nullptr ? *f.exception_message : kEmpty);
    out += '}';
  }
  if (present(f.context)) {
    out += ",\"context\":"sv;
    append_json(out, *f.context);
  }
  if (present(f.tags)) {
    out += ",\"tags\":"sv;
    append_json(out, *f.tags);
  }
  if (f.attributes_json.size() > 2) {  // the members of the object, spliced in
    out += ',';
    out.append(f.attributes_json.substr(1, f.attributes_json.size() - 2));
  }
  out += ",\"payload\":"sv;
  if (f.payload != nullptr) {
    append_json(out, *f.payload);
  } else {
    out += f.payload_json;
  }
  out += '}';
}

std::string encode_fields(const EnvelopeFields& f) {
  std::string out;
  encode_fields(f, out);
  return out;
}

// The id goes in Message::id (each transport maps it to its own dedupe mechanism); the headers
// are Content-Type and, when present, traceparent.
void add_headers(Message& message, std::string id, std::string_view traceparent) {
  message.id = std::move(id);
  message.headers.reserve(2);
  message.headers.emplace_back("Content-Type", std::string(Envelope::kContentType));
  if (!traceparent.empty()) message.headers.emplace_back("traceparent", std::string(traceparent));
}

}  // namespace

std::string encode_envelope(const Envelope& envelope) {
  return encode_fields(EnvelopeFields{
      envelope.id, envelope.name, &envelope.payload, {}, envelope.time, envelope.duration, envelope.producer,
      envelope.producer_instance, envelope.schema_version, envelope.traceparent, envelope.sequence,
      envelope.exception_type ? &*envelope.exception_type : nullptr,
      envelope.exception_message ? &*envelope.exception_message : nullptr, &envelope.context, &envelope.tags});
}

namespace detail {

DecodeResult decode_general_envelope(std::string_view body) noexcept {
  DecodeResult result;
  try {
    decode_into(body, result);
    if (!result.envelope && result.error.empty()) set_error(result, "body: cannot decode");
  } catch (const std::bad_alloc&) {
    set_error(result, "body: out of memory while decoding");
  } catch (...) {
    set_error(result, "body: cannot decode (unexpected error)");
  }
  return result;
}

}  // namespace detail

DecodeResult decode_envelope(std::string_view body) noexcept {
  try {
    Envelope envelope;
    if (detail::decode_plain_envelope(body, envelope)) {
      DecodeResult result;
      result.envelope = std::move(envelope);
      return result;
    }
  } catch (...) {
    // Out of memory, most likely: the general decoder tries again and reports it.
  }
  return detail::decode_general_envelope(body);
}

namespace detail {

DecodeResult decode_envelope_deferring_payload(std::string_view body, std::optional<PayloadSpan>& payload) noexcept {
  payload.reset();
  try {
    Envelope envelope;
    PayloadSpan span;
    if (decode_plain_envelope_deferring_payload(body, envelope, span)) {
      DecodeResult result;
      result.envelope = std::move(envelope);
      payload = span;
      return result;
    }
  } catch (...) {
    // Out of memory, most likely: the general decoder tries again and reports it.
  }
  return decode_general_envelope(body);
}

void append_rfc3339(std::string& out, std::chrono::system_clock::time_point time) {
  using namespace std::chrono;
  // Microseconds first: the day boundary of the earliest nanosecond time points lies outside
  // the nanosecond range, but not outside the microsecond one.
  const auto micros = floor<microseconds>(time);
  const auto day = floor<days>(micros);
  const year_month_day date{day};
  const std::int64_t in_day = (micros - day).count();  // [0, 86'400'000'000)
  const std::int64_t second = in_day / 1'000'000;
  const int year = static_cast<int>(date.year());
  if (year < 0 || year > 9999) {  // outside RFC 3339's four digits: the general (slow) path
    char buffer[48];
    std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02uT%02d:%02d:%02d.%06dZ", year,
                  static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                  static_cast<int>(second / 3600), static_cast<int>(second / 60 % 60),
                  static_cast<int>(second % 60), static_cast<int>(in_day % 1'000'000));
    out += buffer;
    return;
  }
  const std::size_t at = out.size();
  out += "0000-00-00T00:00:00.000000Z";
  const auto put = [&out, at](std::size_t offset, std::int64_t value, int digits) {
    for (int i = digits - 1; i >= 0; --i) {
      out[at + offset + static_cast<std::size_t>(i)] = static_cast<char>('0' + value % 10);
      value /= 10;
    }
  };
  put(0, year, 4);
  put(5, static_cast<unsigned>(date.month()), 2);
  put(8, static_cast<unsigned>(date.day()), 2);
  put(11, second / 3600, 2);
  put(14, second / 60 % 60, 2);
  put(17, second % 60, 2);
  put(20, in_day % 1'000'000, 6);
}

}  // namespace detail

std::string format_rfc3339(std::chrono::system_clock::time_point time) {
  std::string out;
  detail::append_rfc3339(out, time);
  return out;
}

std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text) {
  TimeProblem problem = TimeProblem::none;
  return parse_time(text, problem);
}

Envelope envelope_from_event(const Event& event, std::string_view producer,
                             std::string_view producer_instance) {
  Envelope envelope;
  envelope.id = event.id();
  envelope.name = std::string(event.name());
  envelope.payload = event.payload();
  envelope.time = event.time();
  envelope.duration = std::chrono::duration_cast<std::chrono::microseconds>(event.duration());
  envelope.producer = std::string(producer);
  envelope.producer_instance = std::string(producer_instance);
  // Only a well-formed traceparent travels: receivers reject envelopes with a malformed one, and
  // a string payload member "traceparent" can hold anything.
  if (std::string traceparent = event.traceparent(); is_traceparent(traceparent)) {
    envelope.traceparent = std::move(traceparent);
  }
  if (const auto& exception = event.exception()) {
    envelope.exception_type = exception->type;
    envelope.exception_message = exception->message;
  }
  if (!event.context().empty()) envelope.context = event.context();
  if (!event.tags().empty()) envelope.tags = event.tags();
  return envelope;
}

namespace {

// The rest of event_from_envelope() for `event`, made at `now` with the envelope's name and payload.
void set_remote_fields(Event& event, Envelope& envelope, std::string_view transport_kind, Event::mono_clock::time_point now) {
  using namespace std::chrono;
  // The event's monotonic end is now + duration: keep it inside the steady clock's range.
  const auto room = duration_cast<microseconds>(Event::mono_clock::time_point::max() - now) - hours(24);
  const microseconds duration =
      std::min(std::max(envelope.duration, microseconds(0)), std::max(room, microseconds(0)));
  detail::EventAccess::set_remote(
      event, std::move(envelope.id), envelope.time, duration_cast<nanoseconds>(duration),
      EventOrigin{std::move(envelope.producer), std::move(envelope.producer_instance),
                  std::string(transport_kind)},
      std::move(envelope.traceparent), now);
  if (envelope.exception_type || envelope.exception_message) {
    detail::EventAccess::set_exception(
        event, ExceptionInfo{envelope.exception_type.value_or(""),
                             envelope.exception_message.value_or(""), nullptr});
  }
  detail::EventAccess::set_context(event, detail::make_event_context(std::move(envelope.context), std::move(envelope.tags)));
}

}  // namespace

Event event_from_envelope(Envelope envelope, std::string_view transport_kind) {
  const auto now = Event::mono_clock::now();  // one clock read for the whole event
  Event event = detail::EventAccess::make(std::move(envelope.name), std::move(envelope.payload), now);
  set_remote_fields(event, envelope, transport_kind, now);
  return event;
}

namespace detail {

std::shared_ptr<const DeferredPayload> deferred_payload(std::string body, PayloadSpan payload) {
  return std::make_shared<const DeferredPayload>(std::move(body), payload.offset, payload.size, &build_validated_payload);
}

Event event_with_deferred_payload(Envelope envelope, std::string_view transport_kind,
                                  std::shared_ptr<const DeferredPayload> payload) {
  const auto now = Event::mono_clock::now();
  Event event = EventAccess::make_deferred(std::move(envelope.name), std::move(payload), now);
  set_remote_fields(event, envelope, transport_kind, now);
  return event;
}

}  // namespace detail

Message message_from_envelope(const Envelope& envelope, std::string subject) {
  Message message;
  message.subject = std::move(subject);
  message.body = encode_envelope(envelope);
  add_headers(message, envelope.id, envelope.traceparent);
  return message;
}

Message message_from_event(const Event& event, std::string_view producer, std::string_view producer_instance,
                           std::uint64_t sequence, std::string subject) {
  std::string id = event.id();
  std::string traceparent = event.traceparent();
  if (!is_traceparent(traceparent)) traceparent.clear();  // as envelope_from_event
  const auto& exception = event.exception();
  Message message;
  message.subject = std::move(subject);
  message.body = encode_fields(EnvelopeFields{
      id, event.name(), &event.payload(), {}, event.time(),
      std::chrono::duration_cast<std::chrono::microseconds>(event.duration()), producer, producer_instance,
      Envelope::kSchemaVersion, traceparent, sequence, exception ? &exception->type : nullptr,
      exception ? &exception->message : nullptr, &event.context(), &event.tags()});
  add_headers(message, std::move(id), traceparent);
  return message;
}

void OutboxEvent::set_text(std::string_view name, std::string_view payload, std::string_view traceparent,
                           std::string_view attributes) {
  constexpr std::size_t kMax = std::numeric_limits<std::uint32_t>::max();
  if (name.size() > kMax || payload.size() > kMax || traceparent.size() > kMax || attributes.size() > kMax) {
    throw std::length_error("event text over 4 GiB");
  }
  const std::size_t total = name.size() + payload.size() + traceparent.size() + attributes.size();
  std::unique_ptr<char[]> heap = total > kInlineBytes ? std::make_unique_for_overwrite<char[]>(total) : nullptr;
  char* out = heap ? heap.get() : inline_;
  for (const std::string_view part : {name, payload, traceparent, attributes}) {
    if (!part.empty()) std::memcpy(out, part.data(), part.size());
    out += part.size();
  }
  heap_ = std::move(heap);
  name_size_ = static_cast<std::uint32_t>(name.size());
  payload_size_ = static_cast<std::uint32_t>(payload.size());
  traceparent_size_ = static_cast<std::uint32_t>(traceparent.size());
  attributes_size_ = static_cast<std::uint32_t>(attributes.size());
}

std::uint64_t OutboxEvent::this_process_id_salt() noexcept { return detail::event_id_salt(); }

void OutboxEvent::take(OutboxEvent& other) noexcept {
  heap_ = std::move(other.heap_);
  name_size_ = std::exchange(other.name_size_, 0);
  payload_size_ = std::exchange(other.payload_size_, 0);
  traceparent_size_ = std::exchange(other.traceparent_size_, 0);
  attributes_size_ = std::exchange(other.attributes_size_, 0);
  if (!heap_ && text_size() > 0) std::memcpy(inline_, other.inline_, text_size());
  id_sequence = other.id_sequence;
  id_salt = other.id_salt;
  sequence = other.sequence;
  time = other.time;
  duration = other.duration;
  exception = std::move(other.exception);
}

namespace detail {

namespace {

// The per-thread buffer outgoing_from_event() writes payloads into. The flag is trivially
// destructible, so it stays readable after the buffer is destroyed at thread or program exit,
// when a destructor may still instrument an event.
thread_local bool payload_scratch_gone = false;
struct PayloadScratch {
  ByteBuffer text;
  ~PayloadScratch() { payload_scratch_gone = true; }
};
thread_local PayloadScratch payload_scratch;

}  // namespace

OutgoingEvent outgoing_from_event(const Event& event) {
  return outgoing_from_event(event, event.payload(), event.context(), event.tags());
}

OutgoingEvent outgoing_from_event(const Event& event, const nlohmann::json& event_payload, const json& context,
                                  const json& tags) {
  // The payload is written into the per-thread buffer first (no allocation per event), then
  // copied next to the name; a local buffer once the thread's buffer is gone.
  ByteBuffer local;
  ByteBuffer& payload = payload_scratch_gone ? local : payload_scratch.text;
  constexpr std::size_t kKeptPayloadBytes = 64 * 1024;
  payload.clear();
  append_json(payload, event_payload);
  OutgoingEvent out;
  // A local event's traceparent is its payload's "traceparent" member (Event::traceparent()),
  // read from the payload that travels: once a route's rules redacted it, none travels.
  std::string traceparent;
  if (const auto it = event_payload.find("traceparent"); it != event_payload.end() && it->is_string()) {
    traceparent = it->get<std::string>();
  }
  // The context and tags after the payload in the same buffer: {"context":...,"tags":...}.
  const std::size_t payload_size = payload.size();
  if (!context.empty() || !tags.empty()) {
    payload += '{';
    if (!context.empty()) {
      payload += "\"context\":";
      append_json(payload, context);
    }
    if (!tags.empty()) {
      if (!context.empty()) payload += ',';
      payload += "\"tags\":";
      append_json(payload, tags);
    }
    payload += '}';
  }
  const std::string_view text = payload.view();
  out.set_text(event.name(), text.substr(0, payload_size),
               is_traceparent(traceparent) ? std::string_view(traceparent) : std::string_view(), text.substr(payload_size));
  payload.shrink_if_above(kKeptPayloadBytes);  // after a rare large payload
  out.id_sequence = EventAccess::id_sequence(event);
  out.time = event.time();
  out.duration = std::chrono::duration_cast<std::chrono::microseconds>(event.duration());
  if (const auto& exception = event.exception()) {
    out.exception = std::make_unique<std::pair<std::string, std::string>>(exception->type, exception->message);
  }
  return out;
}

void encode_outgoing(const OutgoingEvent& event, std::string_view producer, std::string_view producer_instance,
                     std::uint64_t sequence, std::string_view subject, Message& message) {
  message.subject.assign(subject);
  const std::size_t header_count = event.traceparent().empty() ? 1 : 2;
  message.headers.resize(header_count);
  std::string& id = message.id;
  assign_event_id(id, event.id_sequence, event.id_salt);
  message.headers[0].first.assign("Content-Type");
  message.headers[0].second.assign(Envelope::kContentType);
  if (header_count == 2) {
    message.headers[1].first.assign("traceparent");
    message.headers[1].second.assign(event.traceparent());
  }
  message.body.clear();
  encode_fields(EnvelopeFields{id, event.name(), nullptr, event.payload(), event.time, event.duration, producer,
                               producer_instance, Envelope::kSchemaVersion, event.traceparent(), sequence,
                               event.exception ? &event.exception->first : nullptr,
                               event.exception ? &event.exception->second : nullptr, nullptr, nullptr,
                               event.attributes()},
                message.body);
}

}  // namespace detail

}  // namespace notifications
