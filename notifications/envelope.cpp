#include "notifications/envelope.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <new>
#include <string>
#include <utility>

#include "notifications/event_access.hpp"

namespace notifications {

namespace {

using nlohmann::json;
using Clock = std::chrono::system_clock;

// Values quoted in decode errors are cut after this many bytes.
constexpr std::size_t kQuoteLimit = 64;
// Arrays and objects nest at most this deep in a body; the envelope object is level 1.
constexpr std::size_t kMaxDepth = 64;
// The largest duration_us and sequence accepted: 2^53 - 1, the largest integer every JSON reader holds exactly.
constexpr std::int64_t kMaxExactInteger = (std::int64_t{1} << 53) - 1;

constexpr std::string_view kTimeExample = "2026-11-25T12:00:00.000000Z";
constexpr std::string_view kUuidExample = "0190c3c5-7d0e-8000-8000-000000000001";
constexpr std::string_view kTraceparentExample =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ---- text helpers

std::string dump(const json& value, bool ensure_ascii) {
  return value.dump(-1, ' ', ensure_ascii, json::error_handler_t::replace);
}

void append_json_string(std::string& out, std::string_view text) { out += dump(json(text), false); }

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

bool is_hex(char c, bool lower_only) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (!lower_only && c >= 'A' && c <= 'F');
}

// 8-4-4-4-12 hex digits, either case, any version and variant.
bool is_uuid(std::string_view text) {
  if (text.size() != 36) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-' : !is_hex(text[i], false)) return false;
  }
  return true;
}

// W3C Trace Context: version-traceid-parentid-flags in lowercase hex; version ff and all-zero
// ids are invalid.
bool is_traceparent(std::string_view text) {
  if (text.size() != 55) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool dash = i == 2 || i == 35 || i == 52;
    if (dash ? text[i] != '-' : !is_hex(text[i], true)) return false;
  }
  if (text.substr(0, 2) == "ff") return false;
  if (text.substr(3, 32).find_first_not_of('0') == std::string_view::npos) return false;
  if (text.substr(36, 16).find_first_not_of('0') == std::string_view::npos) return false;
  return true;
}

// ---- RFC 3339

enum class TimeProblem { none, malformed, no_such_date, out_of_range };

// `count` decimal digits at text[pos...], or -1.
int digits(std::string_view text, std::size_t pos, std::size_t count) {
  int value = 0;
  for (std::size_t i = pos; i < pos + count; ++i) {
    if (text[i] < '0' || text[i] > '9') return -1;
    value = value * 10 + (text[i] - '0');
  }
  return value;
}

// YYYY-MM-DDTHH:MM:SS[.F]Z with 0 to 9 fraction digits, uppercase 'T' and 'Z' only.
std::optional<Clock::time_point> parse_time(std::string_view text, TimeProblem& problem) {
  using namespace std::chrono;
  static_assert(Clock::period::num == 1 && 1'000'000'000 % Clock::period::den == 0,
                "system_clock ticks must divide a nanosecond");
  constexpr std::int64_t kTicksPerSecond = Clock::period::den;

  problem = TimeProblem::malformed;
  if (text.size() < 20 || text.size() > 30) return std::nullopt;
  if (text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  const int y = digits(text, 0, 4);
  const int mo = digits(text, 5, 2);
  const int d = digits(text, 8, 2);
  const int h = digits(text, 11, 2);
  const int mi = digits(text, 14, 2);
  const int s = digits(text, 17, 2);
  if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || s < 0) return std::nullopt;

  std::size_t pos = 19;
  std::int64_t nanos = 0;
  if (text[pos] == '.') {
    ++pos;
    std::size_t count = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (++count > 9) return std::nullopt;
      nanos = nanos * 10 + (text[pos] - '0');
      ++pos;
    }
    if (count == 0) return std::nullopt;
    for (std::size_t i = count; i < 9; ++i) nanos *= 10;
  }
  if (pos + 1 != text.size() || text[pos] != 'Z') return std::nullopt;

  problem = TimeProblem::no_such_date;
  const year_month_day date{year{y}, month{static_cast<unsigned>(mo)},
                            day{static_cast<unsigned>(d)}};
  if (!date.ok() || h > 23 || mi > 59 || s > 59) return std::nullopt;

  problem = TimeProblem::out_of_range;
  const std::int64_t seconds =
      std::int64_t{sys_days{date}.time_since_epoch().count()} * 86400 + h * 3600 + mi * 60 + s;
  const std::int64_t fraction = nanos / (1'000'000'000 / kTicksPerSecond);
  // seconds * tps + fraction without intermediate overflow: for negative seconds the product
  // alone may leave the range while the sum does not, so it is formed from (seconds + 1).
  Clock::rep ticks = 0;
  if (seconds >= 0) {
    if (__builtin_mul_overflow(seconds, kTicksPerSecond, &ticks) ||
        __builtin_add_overflow(ticks, fraction, &ticks)) {
      return std::nullopt;
    }
  } else if (__builtin_mul_overflow(seconds + 1, kTicksPerSecond, &ticks) ||
             __builtin_add_overflow(ticks, fraction - kTicksPerSecond, &ticks)) {
    return std::nullopt;
  }
  problem = TimeProblem::none;
  return Clock::time_point(Clock::duration(ticks));
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
    const auto lowest = std::chrono::ceil<std::chrono::microseconds>(Clock::time_point::min());
    const auto highest = std::chrono::floor<std::chrono::microseconds>(Clock::time_point::max());
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

  bool sequence(std::uint64_t& out) {
    json* value = find(object_, "sequence");
    if (value == nullptr) return true;  // optional
    const std::string expected =
        "expected an integer from 1 to " + std::to_string(kMaxExactInteger) + ", got ";
    if (!value->is_number_integer()) return fail("sequence", expected + describe(*value));
    const bool in_range =
        value->is_number_unsigned()
            ? value->get<std::uint64_t>() >= 1 && value->get<std::uint64_t>() <= std::uint64_t{kMaxExactInteger}
            : value->get<std::int64_t>() >= 1 && value->get<std::int64_t>() <= kMaxExactInteger;
    if (!in_range) return fail("sequence", expected + describe(*value));
    out = value->get<std::uint64_t>();
    return true;
  }

  bool duration(std::chrono::microseconds& out) {
    json* value = nullptr;
    if (!required("duration_us", value)) return false;
    const std::string expected =
        "expected an integer from 0 to " + std::to_string(kMaxExactInteger) + ", got ";
    if (!value->is_number_integer()) return fail("duration_us", expected + describe(*value));
    const bool in_range =
        value->is_number_unsigned()
            ? value->get<std::uint64_t>() <= std::uint64_t{kMaxExactInteger}
            : value->get<std::int64_t>() >= 0 && value->get<std::int64_t>() <= kMaxExactInteger;
    if (!in_range) return fail("duration_us", expected + describe(*value));
    out = std::chrono::microseconds(value->get<std::int64_t>());
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

// The index of the bracket at which the nesting of arrays and objects first exceeds `limit`, or
// npos. Brackets inside strings do not count; malformed JSON is left to the parser.
std::size_t too_deep_at(std::string_view body, std::size_t limit) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

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
  const nlohmann::json& payload;
  std::chrono::system_clock::time_point time;
  std::chrono::microseconds duration;
  std::string_view producer;
  std::string_view producer_instance;
  int schema_version;
  std::string_view traceparent;
  std::uint64_t sequence;
  const std::string* exception_type;     // null: absent
  const std::string* exception_message;  // null: absent
};

std::string encode_fields(const EnvelopeFields& f) {
  std::string out;
  out.reserve(256 + f.name.size());
  out += "{\"id\":";
  append_json_string(out, f.id);
  out += ",\"name\":";
  append_json_string(out, f.name);
  out += ",\"time\":\"";
  out += format_rfc3339(f.time);
  out += "\",\"duration_us\":";
  out += std::to_string(f.duration.count());
  out += ",\"producer\":";
  append_json_string(out, f.producer);
  out += ",\"producer_instance\":";
  append_json_string(out, f.producer_instance);
  out += ",\"schema_version\":";
  out += std::to_string(f.schema_version);
  if (!f.traceparent.empty()) {
    out += ",\"traceparent\":";
    append_json_string(out, f.traceparent);
  }
  if (f.sequence != 0) {
    out += ",\"sequence\":";
    out += std::to_string(f.sequence);
  }
  if (f.exception_type != nullptr || f.exception_message != nullptr) {
    static const std::string kEmpty;
    out += ",\"exception\":{\"type\":";
    append_json_string(out, f.exception_type != nullptr ? *f.exception_type : kEmpty);
    out += ",\"message\":";
    append_json_string(out, f.exception_message != nullptr ? *f.exception_message : kEmpty);
    out += '}';
  }
  out += ",\"payload\":";
  out += dump(f.payload, false);
  out += '}';
  return out;
}

void add_headers(Message& message, std::string id, std::string_view traceparent) {
  message.headers.reserve(3);
  message.headers.emplace_back("Nats-Msg-Id", std::move(id));
  message.headers.emplace_back("Content-Type", std::string(Envelope::kContentType));
  if (!traceparent.empty()) message.headers.emplace_back("traceparent", std::string(traceparent));
}

}  // namespace

std::string encode_envelope(const Envelope& envelope) {
  return encode_fields(EnvelopeFields{
      envelope.id, envelope.name, envelope.payload, envelope.time, envelope.duration, envelope.producer,
      envelope.producer_instance, envelope.schema_version, envelope.traceparent, envelope.sequence,
      envelope.exception_type ? &*envelope.exception_type : nullptr,
      envelope.exception_message ? &*envelope.exception_message : nullptr});
}

DecodeResult decode_envelope(std::string_view body) noexcept {
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

std::string format_rfc3339(std::chrono::system_clock::time_point time) {
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
    return buffer;
  }
  std::string out = "0000-00-00T00:00:00.000000Z";
  const auto put = [&out](std::size_t at, std::int64_t value, int digits) {
    for (int i = digits - 1; i >= 0; --i) {
      out[at + static_cast<std::size_t>(i)] = static_cast<char>('0' + value % 10);
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
  return envelope;
}

Event event_from_envelope(Envelope envelope, std::string_view transport_kind) {
  using namespace std::chrono;
  Event event(std::move(envelope.name), std::move(envelope.payload));
  // The event's monotonic end is now + duration: keep it inside the steady clock's range.
  const auto room =
      duration_cast<microseconds>(Event::mono_clock::time_point::max() - Event::mono_clock::now()) -
      hours(24);
  const microseconds duration =
      std::min(std::max(envelope.duration, microseconds(0)), std::max(room, microseconds(0)));
  detail::EventAccess::set_remote(
      event, std::move(envelope.id), envelope.time, duration_cast<nanoseconds>(duration),
      EventOrigin{std::move(envelope.producer), std::move(envelope.producer_instance),
                  std::string(transport_kind)},
      std::move(envelope.traceparent));
  if (envelope.exception_type || envelope.exception_message) {
    detail::EventAccess::set_exception(
        event, ExceptionInfo{envelope.exception_type.value_or(""),
                             envelope.exception_message.value_or(""), nullptr});
  }
  return event;
}

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
      id, event.name(), event.payload(), event.time(),
      std::chrono::duration_cast<std::chrono::microseconds>(event.duration()), producer, producer_instance,
      Envelope::kSchemaVersion, traceparent, sequence, exception ? &exception->type : nullptr,
      exception ? &exception->message : nullptr});
  add_headers(message, std::move(id), traceparent);
  return message;
}

}  // namespace notifications
