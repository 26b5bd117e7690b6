#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "notifications/context.hpp"
#include "notifications/envelope.hpp"
#include "remote/envelope_plain.hpp"
#include "tests/same_json.hpp"
#include "local/event_access.hpp"
#include "remote/outgoing_event.hpp"

using namespace std::chrono;
using nlohmann::json;
using notifications::decode_envelope;
using notifications::encode_envelope;
using notifications::Envelope;
using notifications::Event;
using notifications::format_rfc3339;
using notifications::parse_rfc3339;

namespace {

using test_support::same_json;

constexpr const char* kId = "0190c3c5-7d0e-8000-8000-000000000001";
constexpr const char* kTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

system_clock::time_point utc(int y, unsigned m, unsigned d, int hh = 0, int mm = 0, int ss = 0,
                             microseconds us = microseconds(0)) {
  return sys_days{year{y} / month{m} / day{d}} + hours(hh) + minutes(mm) + seconds(ss) + us;
}

Envelope full_envelope() {
  Envelope e;
  e.id = kId;
  e.name = "order.placed";
  e.payload = {{"order", {{"id", 42}, {"lines", json::array({1, 2.5, "x", nullptr, true})}}},
               {"note", "caf\xc3\xa9 \"quoted\"\n"}};
  e.time = utc(2026, 11, 25, 12, 0, 0, microseconds(123456));
  e.duration = microseconds(1500);
  e.producer = "shop";
  e.producer_instance = "5b0f7c7e-2a4e-4f0e-9f59-2f1f1f1f1f1f";
  e.traceparent = kTrace;
  e.exception_type = "std::runtime_error";
  e.exception_message = "out of stock";
  e.context = {{"request_id", "r-1"}, {"tenant", {{"id", 3}}}};
  e.tags = {{"checkout", true}, {"section", "admin"}};
  return e;
}

Envelope minimal_envelope() {
  Envelope e;
  e.id = kId;
  e.name = "ping";
  e.payload = nullptr;
  e.time = utc(2026, 1, 1);
  e.producer = "p";
  e.producer_instance = "i";
  return e;
}

void expect_same(const Envelope& a, const Envelope& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.payload, b.payload);
  EXPECT_EQ(a.time, b.time);
  EXPECT_EQ(a.duration, b.duration);
  EXPECT_EQ(a.producer, b.producer);
  EXPECT_EQ(a.producer_instance, b.producer_instance);
  EXPECT_EQ(a.schema_version, b.schema_version);
  EXPECT_EQ(a.traceparent, b.traceparent);
  EXPECT_EQ(a.exception_type, b.exception_type);
  EXPECT_EQ(a.exception_message, b.exception_message);
  EXPECT_EQ(a.context, b.context);
  EXPECT_EQ(a.tags, b.tags);
}

// A valid envelope body as JSON, for tests that change one field.
json valid_body() { return json::parse(encode_envelope(full_envelope())); }

std::string error_for(const json& body) {
  const auto result = decode_envelope(body.dump());
  EXPECT_FALSE(result) << body.dump();
  EXPECT_FALSE(result.envelope.has_value());
  return result.error;
}

std::string error_without(const char* field) {
  json body = valid_body();
  body.erase(field);
  return error_for(body);
}

std::string error_with(const char* field, json value) {
  json body = valid_body();
  body[field] = std::move(value);
  return error_for(body);
}

// ---- encoding and round trips

TEST(Envelope, EncodesOneCompactObjectInFieldOrder) {
  Envelope e = minimal_envelope();
  e.payload = {{"b", 1}, {"a", "x"}};
  e.duration = microseconds(7);
  EXPECT_EQ(encode_envelope(e),
            "{\"id\":\"0190c3c5-7d0e-8000-8000-000000000001\",\"name\":\"ping\","
            "\"time\":\"2026-01-01T00:00:00.000000Z\",\"duration_us\":7,\"producer\":\"p\","
            "\"producer_instance\":\"i\",\"schema_version\":1,\"payload\":{\"a\":\"x\",\"b\":1}}");
}

TEST(Envelope, OptionalFieldsAreWrittenOnlyWhenSet) {
  const std::string full = encode_envelope(full_envelope());
  EXPECT_NE(full.find(std::string("\"traceparent\":\"") + kTrace + "\""), std::string::npos);
  EXPECT_NE(
      full.find("\"exception\":{\"type\":\"std::runtime_error\",\"message\":\"out of stock\"}"),
      std::string::npos);
  const std::string minimal = encode_envelope(minimal_envelope());
  EXPECT_EQ(minimal.find("traceparent"), std::string::npos);
  EXPECT_EQ(minimal.find("exception"), std::string::npos);
}

TEST(Envelope, RoundTripsEveryField) {
  for (const Envelope& original : {full_envelope(), minimal_envelope()}) {
    const auto result = decode_envelope(encode_envelope(original));
    ASSERT_TRUE(result) << result.error;
    EXPECT_EQ(result.error, "");
    expect_same(*result.envelope, original);
  }
}

TEST(Envelope, RoundTripsPayloadShapes) {
  for (const json& payload :
       {json(nullptr), json(true), json(-5), json(18446744073709551615ull), json(0.1),
        json(-1.5e300), json("text"), json::array(), json::object(),
        json::parse(R"({"a":{"b":{"c":[[[{"d":"\u0000\u001f\u2028"}]]]}}})")}) {
    Envelope e = minimal_envelope();
    e.payload = payload;
    const auto result = decode_envelope(encode_envelope(e));
    ASSERT_TRUE(result) << result.error;
    EXPECT_EQ(result.envelope->payload, payload) << payload.dump();
  }
}

TEST(Envelope, RoundTripsExceptionWithEmptyMessage) {
  Envelope e = minimal_envelope();
  e.exception_type = "unknown";
  e.exception_message = "";
  const auto result = decode_envelope(encode_envelope(e));
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->exception_type, "unknown");
  EXPECT_EQ(result.envelope->exception_message, "");
}

TEST(Envelope, EncodeReplacesInvalidUtf8) {
  Envelope e = minimal_envelope();
  e.name = "bad\xff";
  e.payload = {{"k", "v\xc3"}};
  const auto result = decode_envelope(encode_envelope(e));
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->name, "bad\xef\xbf\xbd");
  EXPECT_EQ(result.envelope->payload["k"], "v\xef\xbf\xbd");
}

TEST(Envelope, TimeIsKeptToTheMicrosecond) {
  Envelope e = minimal_envelope();
  e.time = utc(2024, 2, 29, 23, 59, 59) + nanoseconds(999'999'999);
  const std::string body = encode_envelope(e);
  EXPECT_NE(body.find("\"time\":\"2024-02-29T23:59:59.999999Z\""), std::string::npos);
  const auto result = decode_envelope(body);
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->time, utc(2024, 2, 29, 23, 59, 59, microseconds(999'999)));
}

TEST(Envelope, UnknownFieldsAreIgnored) {
  json body = valid_body();
  body["future_field"] = {{"anything", 1}};
  body["priority"] = 5;
  body["exception"]["stack"] = json::array({"frame"});
  const auto result = decode_envelope(body.dump());
  ASSERT_TRUE(result) << result.error;
  expect_same(*result.envelope, full_envelope());
}

TEST(Envelope, FieldOrderDoesNotMatter) {
  const std::string body =
      R"({"payload":{"k":[1]},"schema_version":1,"producer_instance":"i","producer":"p",)"
      R"("duration_us":3,"time":"2026-01-01T00:00:00.000000Z","name":"ping",)"
      R"("id":"0190c3c5-7d0e-8000-8000-000000000001"})";
  const auto result = decode_envelope(body);
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->payload, json::parse(R"({"k":[1]})"));
  EXPECT_EQ(result.envelope->duration, microseconds(3));
}

TEST(Envelope, AcceptsWhitespaceAndUppercaseUuid) {
  json body = valid_body();
  body["id"] = "0190C3C5-7D0E-8000-8000-00000000000A";
  const auto result = decode_envelope("\n  " + body.dump(2) + "\n");
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->id, "0190C3C5-7D0E-8000-8000-00000000000A");
}

TEST(Envelope, AcceptsOtherFractionLengthsAndKeepsMicroseconds) {
  const std::pair<const char*, system_clock::time_point> cases[] = {
      {"2026-11-25T12:00:00Z", utc(2026, 11, 25, 12)},
      {"2026-11-25T12:00:00.5Z", utc(2026, 11, 25, 12, 0, 0, microseconds(500'000))},
      {"2026-11-25T12:00:00.123Z", utc(2026, 11, 25, 12, 0, 0, microseconds(123'000))},
      {"2026-11-25T12:00:00.123456789Z", utc(2026, 11, 25, 12, 0, 0, microseconds(123'456))},
      {"1969-12-31T23:59:59.9999999Z", utc(1969, 12, 31, 23, 59, 59, microseconds(999'999))},
  };
  for (const auto& [text, expected] : cases) {
    const auto result = decode_envelope(json{
        {"id", kId},
        {"name", "n"},
        {"payload", 1},
        {"time", text},
        {"duration_us", 0},
        {"producer", "p"},
        {"producer_instance", "i"},
        {"schema_version", 1}}.dump());
    ASSERT_TRUE(result) << text << ": " << result.error;
    EXPECT_EQ(result.envelope->time, expected) << text;
  }
}

// ---- decode errors: every one names the field

TEST(EnvelopeErrors, MissingRequiredFields) {
  for (const char* field : {"id", "name", "payload", "time", "duration_us", "producer",
                            "producer_instance", "schema_version"}) {
    EXPECT_EQ(error_without(field), std::string("field \"") + field + "\": missing");
  }
}

TEST(EnvelopeErrors, OptionalFieldsMayBeMissing) {
  json body = valid_body();
  body.erase("traceparent");
  body.erase("exception");
  const auto result = decode_envelope(body.dump());
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->traceparent, "");
  EXPECT_FALSE(result.envelope->exception_type.has_value());
  EXPECT_FALSE(result.envelope->exception_message.has_value());
}

TEST(EnvelopeErrors, Body) {
  EXPECT_EQ(decode_envelope("").error, "body: not JSON (parse error at byte 1)");
  EXPECT_EQ(decode_envelope("{\"id\": \"x\", oops}").error,
            "body: not JSON (parse error at byte 13)");
  EXPECT_EQ(decode_envelope("{} trailing").error, "body: not JSON (parse error at byte 6)");
  EXPECT_EQ(decode_envelope("[1,2]").error, "body: expected a JSON object, got array [1,2]");
  EXPECT_EQ(decode_envelope("\"envelope\"").error,
            "body: expected a JSON object, got \"envelope\"");
  EXPECT_EQ(decode_envelope("null").error, "body: expected a JSON object, got null");
  EXPECT_EQ(decode_envelope("{\"payload\": 1e999}").error,
            "body: not JSON (a number is out of range)");
  EXPECT_EQ(decode_envelope("{\"name\": \"\xff\"}").error,
            "body: not JSON (parse error at byte 11)");
}

TEST(EnvelopeErrors, NestingIsLimited) {
  json body = valid_body();
  json deep = 1;
  for (int i = 0; i < 63; ++i) deep = json::array({deep});
  body["payload"] = deep;  // 63 levels in the payload, 64 with the envelope object
  EXPECT_TRUE(decode_envelope(body.dump())) << decode_envelope(body.dump()).error;
  body["payload"] = json::array({deep});
  const std::string error = decode_envelope(body.dump()).error;
  EXPECT_EQ(error.rfind("body: nested deeper than 64 levels (at byte ", 0), 0u) << error;
  // Brackets inside strings do not count.
  body["payload"] = std::string(1000, '[');
  EXPECT_TRUE(decode_envelope(body.dump()));
  // A huge depth is refused before parsing.
  EXPECT_EQ(decode_envelope(std::string(1'000'000, '[')).error,
            "body: nested deeper than 64 levels (at byte 65)");
}

TEST(EnvelopeErrors, SchemaVersion) {
  EXPECT_EQ(error_with("schema_version", 2),
            "field \"schema_version\": unsupported version 2 (this build reads 1)");
  EXPECT_EQ(error_with("schema_version", 0),
            "field \"schema_version\": unsupported version 0 (this build reads 1)");
  EXPECT_EQ(error_with("schema_version", -1),
            "field \"schema_version\": unsupported version -1 (this build reads 1)");
  EXPECT_EQ(error_with("schema_version", 18446744073709551615ull),
            "field \"schema_version\": unsupported version 18446744073709551615 (this build "
            "reads 1)");
  EXPECT_EQ(error_with("schema_version", "1"),
            "field \"schema_version\": expected an integer, got \"1\"");
  EXPECT_EQ(error_with("schema_version", 1.0),
            "field \"schema_version\": expected an integer, got number 1.0");
}

TEST(EnvelopeErrors, SchemaVersionIsCheckedFirst) {
  // A future version may have other fields: report the version, not a missing field.
  const json body = {{"schema_version", 2}, {"envelope_id", "x"}};
  EXPECT_EQ(error_for(body),
            "field \"schema_version\": unsupported version 2 (this build reads 1)");
}

TEST(EnvelopeErrors, Id) {
  EXPECT_EQ(error_with("id", 5), "field \"id\": expected a string, got number 5");
  EXPECT_EQ(error_with("id", ""), "field \"id\": empty (expected a non-empty string)");
  EXPECT_EQ(error_with("id", "order-1"),
            "field \"id\": expected a UUID like 0190c3c5-7d0e-8000-8000-000000000001, got "
            "\"order-1\"");
  for (const char* bad :
       {"0190c3c5-7d0e-8000-8000-00000000000", "0190c3c5-7d0e-8000-8000-0000000000001",
        "0190c3c5x7d0e-8000-8000-000000000001", "0190c3c5-7d0e-8000-8000-00000000000g",
        "{0190c3c5-7d0e-8000-8000-000000000001}"}) {
    EXPECT_EQ(error_with("id", bad).rfind("field \"id\": expected a UUID like", 0), 0u) << bad;
  }
}

TEST(EnvelopeErrors, Name) {
  EXPECT_EQ(error_with("name", ""), "field \"name\": empty (expected a non-empty string)");
  EXPECT_EQ(error_with("name", nullptr), "field \"name\": expected a string, got null");
  EXPECT_EQ(error_with("name", json::array({"a"})),
            "field \"name\": expected a string, got array [\"a\"]");
}

TEST(EnvelopeErrors, Time) {
  const std::string expected =
      "field \"time\": expected RFC 3339 UTC like 2026-11-25T12:00:00.000000Z, got ";
  EXPECT_EQ(error_with("time", "yesterday"), expected + "\"yesterday\"");
  EXPECT_EQ(error_with("time", 1764072000), expected + "number 1764072000");
  EXPECT_EQ(error_with("time", "2026-11-25T12:00:00.000000+00:00"),
            expected + "\"2026-11-25T12:00:00.000000+00:00\"");
  EXPECT_EQ(error_with("time", "2025-02-29T12:00:00.000000Z"),
            expected + "\"2025-02-29T12:00:00.000000Z\" (no such date or time of day)");
  EXPECT_EQ(error_with("time", "1000-01-01T00:00:00.000000Z"),
            expected +
                "\"1000-01-01T00:00:00.000000Z\" (outside this build's range "
                "1677-09-21T00:12:43.145225Z to 2262-04-11T23:47:16.854775Z)");
  // Kept to the microsecond, the earliest nanoseconds of the clock would leave its range.
  EXPECT_EQ(error_with("time", "1677-09-21T00:12:43.145224192Z"),
            expected +
                "\"1677-09-21T00:12:43.145224192Z\" (outside this build's range "
                "1677-09-21T00:12:43.145225Z to 2262-04-11T23:47:16.854775Z)");
  for (const char* edge : {"1677-09-21T00:12:43.145225Z", "2262-04-11T23:47:16.854775807Z"}) {
    json body = valid_body();
    body["time"] = edge;
    const auto result = decode_envelope(body.dump());
    ASSERT_TRUE(result) << edge << ": " << result.error;
    EXPECT_EQ(format_rfc3339(result.envelope->time).substr(0, 26), std::string(edge).substr(0, 26));
  }
}

TEST(EnvelopeErrors, Duration) {
  const std::string expected =
      "field \"duration_us\": expected an integer from 0 to 9007199254740991, got ";
  EXPECT_EQ(error_with("duration_us", -1), expected + "number -1");
  EXPECT_EQ(error_with("duration_us", 1.5), expected + "number 1.5");
  EXPECT_EQ(error_with("duration_us", 2.0), expected + "number 2.0");
  EXPECT_EQ(error_with("duration_us", "15"), expected + "\"15\"");
  EXPECT_EQ(error_with("duration_us", 9007199254740992ll), expected + "number 9007199254740992");
  EXPECT_EQ(error_with("duration_us", 18446744073709551615ull),
            expected + "number 18446744073709551615");
  json body = valid_body();
  body["duration_us"] = 9007199254740991ll;
  const auto result = decode_envelope(body.dump());
  ASSERT_TRUE(result) << result.error;
  EXPECT_EQ(result.envelope->duration, microseconds(9007199254740991ll));
}

TEST(EnvelopeErrors, ProducerAndInstance) {
  EXPECT_EQ(error_with("producer", ""), "field \"producer\": empty (expected a non-empty string)");
  EXPECT_EQ(error_with("producer", false),
            "field \"producer\": expected a string, got boolean false");
  EXPECT_EQ(error_with("producer_instance", ""),
            "field \"producer_instance\": empty (expected a non-empty string)");
  EXPECT_EQ(error_with("producer_instance", json::object()),
            "field \"producer_instance\": expected a string, got object {}");
}

TEST(EnvelopeErrors, Traceparent) {
  const std::string expected =
      "field \"traceparent\": expected a W3C traceparent like "
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01, got ";
  EXPECT_EQ(error_with("traceparent", ""), expected + "\"\"");
  EXPECT_EQ(error_with("traceparent", nullptr), expected + "null");
  EXPECT_EQ(error_with("traceparent", "abc"), expected + "\"abc\"");
  for (const char* bad : {"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  // uppercase
                          "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
                          "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                          "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) {
    EXPECT_EQ(error_with("traceparent", bad), expected + json(bad).dump()) << bad;
  }
}

TEST(EnvelopeErrors, Exception) {
  EXPECT_EQ(error_with("exception", "boom"),
            "field \"exception\": expected an object {\"type\": ..., \"message\": ...}, got "
            "\"boom\"");
  EXPECT_EQ(error_with("exception", nullptr),
            "field \"exception\": expected an object {\"type\": ..., \"message\": ...}, got null");
  EXPECT_EQ(error_with("exception", {{"message", "m"}}), "field \"exception.type\": missing");
  EXPECT_EQ(error_with("exception", {{"type", ""}, {"message", "m"}}),
            "field \"exception.type\": empty (expected a non-empty string)");
  EXPECT_EQ(error_with("exception", {{"type", "E"}}), "field \"exception.message\": missing");
  EXPECT_EQ(error_with("exception", {{"type", "E"}, {"message", 3}}),
            "field \"exception.message\": expected a string, got number 3");
}

TEST(EnvelopeErrors, QuotedValuesAreTruncated) {
  const std::string long_text(500, 'y');
  EXPECT_EQ(error_with("time", long_text),
            "field \"time\": expected RFC 3339 UTC like 2026-11-25T12:00:00.000000Z, got \"" +
                std::string(64, 'y') + "...\" (500 bytes)");
  // Cut on a character boundary; non-ASCII and control characters are escaped.
  const std::string split = "\n" + std::string(62, 'a') + "\xc3\xa9\xc3\xa9";
  EXPECT_EQ(error_with("id", split),
            "field \"id\": expected a UUID like 0190c3c5-7d0e-8000-8000-000000000001, got "
            "\"\\n" +
                std::string(62, 'a') + "...\" (67 bytes)");
  const std::string whole = "\n" + std::string(61, 'a') + "\xc3\xa9\xc3\xa9";
  EXPECT_EQ(error_with("id", whole),
            "field \"id\": expected a UUID like 0190c3c5-7d0e-8000-8000-000000000001, got "
            "\"\\n" +
                std::string(61, 'a') + "\\u00e9...\" (66 bytes)");
  json big = json::array();
  for (int i = 0; i < 100; ++i) big.push_back(i);
  const std::string error = error_with("name", big);
  EXPECT_EQ(error,
            "field \"name\": expected a string, got array " + big.dump().substr(0, 64) + "...");
}

TEST(EnvelopeErrors, DecodeNeverThrowsOnGarbage) {
  std::mt19937 random(12345);
  const std::string valid = encode_envelope(full_envelope());
  for (int i = 0; i < 2000; ++i) {
    std::string body = valid;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int k = 0; k < edits; ++k) {
      body[random() % body.size()] = static_cast<char>(random() % 256);
    }
    const auto result = decode_envelope(body);
    EXPECT_EQ(result.envelope.has_value(), result.error.empty()) << body;
  }
}

// ---- RFC 3339

TEST(Rfc3339, FormatsWithSixFractionDigits) {
  EXPECT_EQ(format_rfc3339(system_clock::time_point{}), "1970-01-01T00:00:00.000000Z");
  EXPECT_EQ(format_rfc3339(utc(2026, 11, 25, 12, 0, 0, microseconds(123456))),
            "2026-11-25T12:00:00.123456Z");
  EXPECT_EQ(format_rfc3339(utc(2000, 2, 29, 1, 2, 3, microseconds(4))),
            "2000-02-29T01:02:03.000004Z");
  EXPECT_EQ(format_rfc3339(utc(1999, 12, 31, 23, 59, 59, microseconds(999999))),
            "1999-12-31T23:59:59.999999Z");
}

// The date and time to the second are kept from one call to the next on a thread: times that go
// back and forth across a second, a day and a year boundary are each written as they are.
TEST(Rfc3339, ConsecutiveTimesAcrossBoundariesRoundTrip) {
  const auto before_new_year = utc(2026, 12, 31, 23, 59, 59, microseconds(999998));
  const std::vector<system_clock::time_point> times = {
      before_new_year, before_new_year + microseconds(1), before_new_year + microseconds(2),
      before_new_year + microseconds(1), before_new_year + microseconds(3), before_new_year - seconds(1),
      before_new_year + hours(24), before_new_year, system_clock::time_point{} - microseconds(1),
      system_clock::time_point{}, before_new_year + microseconds(2)};
  for (const auto time : times) {
    const std::string text = format_rfc3339(time);
    EXPECT_EQ(parse_rfc3339(text), time) << text;
  }
  EXPECT_EQ(format_rfc3339(before_new_year + microseconds(2)), "2027-01-01T00:00:00.000000Z");
  EXPECT_EQ(format_rfc3339(before_new_year), "2026-12-31T23:59:59.999998Z");
}

TEST(Rfc3339, FormatTruncatesBelowMicroseconds) {
  EXPECT_EQ(format_rfc3339(system_clock::time_point{} + nanoseconds(999)),
            "1970-01-01T00:00:00.000000Z");
  // Before 1970 the value is floored, not rounded towards 1970.
  EXPECT_EQ(format_rfc3339(system_clock::time_point{} - nanoseconds(1)),
            "1969-12-31T23:59:59.999999Z");
}

TEST(Rfc3339, Before1970) {
  EXPECT_EQ(format_rfc3339(utc(1969, 7, 20, 20, 17, 40)), "1969-07-20T20:17:40.000000Z");
  EXPECT_EQ(parse_rfc3339("1969-07-20T20:17:40.000000Z"), utc(1969, 7, 20, 20, 17, 40));
  EXPECT_EQ(parse_rfc3339("1900-01-01T00:00:00.000001Z"),
            utc(1900, 1, 1, 0, 0, 0, microseconds(1)));
}

TEST(Rfc3339, LeapYears) {
  EXPECT_EQ(parse_rfc3339("2024-02-29T00:00:00.000000Z"), utc(2024, 2, 29));
  EXPECT_EQ(parse_rfc3339("2000-02-29T00:00:00.000000Z"), utc(2000, 2, 29));
  EXPECT_EQ(parse_rfc3339("2023-02-29T00:00:00.000000Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("1900-02-29T00:00:00.000000Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("2100-02-29T00:00:00.000000Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("2024-12-31T23:59:59.999999Z"),
            utc(2024, 12, 31, 23, 59, 59, microseconds(999999)));
  EXPECT_EQ(parse_rfc3339("2024-04-31T00:00:00.000000Z"), std::nullopt);
}

TEST(Rfc3339, RejectsEverythingButTheStrictUtcForm) {
  for (const char* bad : {"",
                          "2026-11-25",
                          "2026-11-25T12:00:00",
                          "2026-11-25T12:00:00.000000",
                          "2026-11-25t12:00:00.000000Z",
                          "2026-11-25T12:00:00.000000z",
                          "2026-11-25 12:00:00.000000Z",
                          "2026-11-25T12:00:00.000000+00:00",
                          "2026-11-25T12:00:00.000000-05:00",
                          "2026-11-25T12:00:00.Z",
                          "2026-11-25T12:00:00.0000000000Z",
                          "2026-11-25T12:00:00,000000Z",
                          "2026-11-25T24:00:00.000000Z",
                          "2026-11-25T23:60:00.000000Z",
                          "2026-11-25T23:59:60.000000Z",
                          "2026-13-01T00:00:00.000000Z",
                          "2026-00-01T00:00:00.000000Z",
                          "2026-11-00T00:00:00.000000Z",
                          "+2026-11-25T12:00:00Z",
                          "2026-1-25T12:00:00.000000Z",
                          " 2026-11-25T12:00:00Z",
                          "2026-11-25T12:00:00Z ",
                          "2026-11-25T12:00:00.00000aZ",
                          "20261125T120000Z",
                          "-001-01-01T00:00:00Z",
                          "2026-11-25T12:00:00.000000ZZ"}) {
    EXPECT_EQ(parse_rfc3339(bad), std::nullopt) << bad;
  }
}

TEST(Rfc3339, ParsesZeroToNineFractionDigits) {
  EXPECT_EQ(parse_rfc3339("2026-11-25T12:00:00Z"), utc(2026, 11, 25, 12));
  EXPECT_EQ(parse_rfc3339("2026-11-25T12:00:00.1Z"),
            utc(2026, 11, 25, 12, 0, 0, microseconds(100000)));
  EXPECT_EQ(parse_rfc3339("2026-11-25T12:00:00.123456789Z"),
            utc(2026, 11, 25, 12) + nanoseconds(123456789));
}

TEST(Rfc3339, RangeOfTheClock) {
  const auto min = system_clock::time_point::min();
  const auto max = system_clock::time_point::max();
  EXPECT_EQ(format_rfc3339(min), "1677-09-21T00:12:43.145224Z");
  EXPECT_EQ(format_rfc3339(max), "2262-04-11T23:47:16.854775Z");
  EXPECT_EQ(parse_rfc3339("1677-09-21T00:12:43.145224192Z"), min);
  EXPECT_EQ(parse_rfc3339("2262-04-11T23:47:16.854775807Z"), max);
  EXPECT_EQ(parse_rfc3339("1677-09-21T00:12:43.145224191Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("2262-04-11T23:47:16.854775808Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("1677-09-21T00:12:43Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("2262-04-11T23:47:17Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("0000-01-01T00:00:00Z"), std::nullopt);
  EXPECT_EQ(parse_rfc3339("9999-12-31T23:59:59.999999Z"), std::nullopt);
}

TEST(Rfc3339, ParseInvertsFormatToTheMicrosecond) {
  std::mt19937_64 random(7);
  const auto span = system_clock::time_point::max().time_since_epoch().count();
  for (int i = 0; i < 20000; ++i) {
    const auto ticks = static_cast<system_clock::rep>(random() % static_cast<std::uint64_t>(span));
    const system_clock::time_point time{system_clock::duration(i % 2 == 0 ? ticks : -ticks)};
    const std::string text = format_rfc3339(time);
    ASSERT_EQ(parse_rfc3339(text), floor<microseconds>(time)) << text;
  }
}

// ---- events, envelopes and messages

TEST(EnvelopeFromEvent, CopiesTheEvent) {
  Event event("order.placed", {{"id", 7}, {"traceparent", kTrace}});
  notifications::detail::EventAccess::set_exception(
      event, notifications::ExceptionInfo{"std::runtime_error", "boom", nullptr});
  const Envelope e = notifications::envelope_from_event(event, "shop", "instance-1");
  EXPECT_EQ(e.id, event.id());
  EXPECT_EQ(e.name, "order.placed");
  EXPECT_EQ(e.payload, event.payload());
  EXPECT_EQ(e.time, event.time());
  EXPECT_EQ(e.duration, duration_cast<microseconds>(event.duration()));
  EXPECT_EQ(e.producer, "shop");
  EXPECT_EQ(e.producer_instance, "instance-1");
  EXPECT_EQ(e.schema_version, 1);
  EXPECT_EQ(e.traceparent, kTrace);
  EXPECT_EQ(e.exception_type, "std::runtime_error");
  EXPECT_EQ(e.exception_message, "boom");
  const auto result = decode_envelope(encode_envelope(e));
  ASSERT_TRUE(result) << result.error;
}

TEST(EnvelopeFromEvent, WithoutExceptionOrTraceparent) {
  const Event event("ping", json::object());
  const Envelope e = notifications::envelope_from_event(event, "p", "i");
  EXPECT_EQ(e.traceparent, "");
  EXPECT_FALSE(e.exception_type.has_value());
  EXPECT_FALSE(e.exception_message.has_value());
}

TEST(EnvelopeFromEvent, MalformedTraceparentFromPayloadIsNotSent) {
  const Event event("ping", {{"traceparent", "not-a-trace"}});
  const Envelope e = notifications::envelope_from_event(event, "p", "i");
  EXPECT_EQ(e.traceparent, "");
  EXPECT_EQ(e.payload["traceparent"], "not-a-trace");
  EXPECT_TRUE(decode_envelope(encode_envelope(e)));
}

TEST(EventFromEnvelope, BuildsARemoteEvent) {
  const Envelope e = full_envelope();
  const Event event = notifications::event_from_envelope(e, "nats");
  EXPECT_EQ(event.name(), "order.placed");
  EXPECT_EQ(event.payload(), e.payload);
  EXPECT_EQ(event.id(), kId);
  EXPECT_EQ(event.time(), e.time);
  EXPECT_EQ(event.duration(), microseconds(1500));
  EXPECT_TRUE(event.remote());
  ASSERT_TRUE(event.origin().has_value());
  EXPECT_EQ(event.origin()->producer, "shop");
  EXPECT_EQ(event.origin()->producer_instance, "5b0f7c7e-2a4e-4f0e-9f59-2f1f1f1f1f1f");
  EXPECT_EQ(event.origin()->transport, "nats");
  EXPECT_EQ(event.traceparent(), kTrace);
  ASSERT_TRUE(event.exception().has_value());
  EXPECT_EQ(event.exception()->type, "std::runtime_error");
  EXPECT_EQ(event.exception()->message, "out of stock");
  EXPECT_EQ(event.exception()->object, nullptr);
}

TEST(EventFromEnvelope, WithoutOptionalFields) {
  const Event event = notifications::event_from_envelope(minimal_envelope(), "memory");
  EXPECT_TRUE(event.remote());
  EXPECT_FALSE(event.exception().has_value());
  EXPECT_EQ(event.traceparent(), "");
  EXPECT_EQ(event.duration(), nanoseconds(0));
}

TEST(EventFromEnvelope, LargestDurationStaysInsideTheMonotonicClock) {
  Envelope e = minimal_envelope();
  e.duration = microseconds(9007199254740991ll);
  const Event event = notifications::event_from_envelope(e, "memory");
  EXPECT_GT(event.duration(), hours(24 * 365));
  EXPECT_GE(event.end(), event.start());
}

TEST(EventFromEnvelope, EventToEnvelopeToEventKeepsIdentity) {
  Event local("sql.query", {{"sql", "SELECT 1"}});
  const Envelope sent = notifications::envelope_from_event(local, "app", "inst");
  const auto received = decode_envelope(encode_envelope(sent));
  ASSERT_TRUE(received) << received.error;
  const Event remote = notifications::event_from_envelope(*received.envelope, "mock");
  EXPECT_EQ(remote.id(), local.id());
  EXPECT_EQ(remote.name(), local.name());
  EXPECT_EQ(remote.payload(), local.payload());
  EXPECT_EQ(remote.time(), floor<microseconds>(local.time()));
}

TEST(MessageFromEnvelope, BodyAndHeaders) {
  const Envelope e = full_envelope();
  const notifications::Message m =
      notifications::message_from_envelope(e, "notifications.order.placed");
  EXPECT_EQ(m.subject, "notifications.order.placed");
  EXPECT_EQ(m.body, encode_envelope(e));
  // The id is Message::id; the core writes no transport-specific header for it.
  EXPECT_EQ(m.id, kId);
  EXPECT_EQ(m.header("Nats-Msg-Id"), "");
  EXPECT_EQ(m.header("Content-Type"), "application/vnd.notifications.envelope.v1+json");
  EXPECT_EQ(m.header("traceparent"), kTrace);
  EXPECT_EQ(m.headers.size(), 2u);

  const notifications::Message plain =
      notifications::message_from_envelope(minimal_envelope(), "s");
  EXPECT_EQ(plain.headers.size(), 1u);
  EXPECT_EQ(plain.header("traceparent"), "");
}

// ---- the fast decoder (envelope_plain.hpp) and the queued-event encoder (outgoing_event.hpp)

// What the fast decoder made of `body`, checked against the general decoder: it may decline,
// but what it accepts must be decoded identically. Returns whether it accepted.
bool plain_agrees(const std::string& body) {
  Envelope plain;
  if (!notifications::detail::decode_plain_envelope(body, plain)) return false;
  const auto general = notifications::detail::decode_general_envelope(body);
  EXPECT_TRUE(general) << body << ": the fast decoder accepted what the general one rejects: " << general.error;
  if (general) {
    expect_same(plain, *general.envelope);
    EXPECT_TRUE(same_json(plain.payload, general.envelope->payload))
        << body << "\nfast: " << plain.payload.dump() << "\ngeneral: " << general.envelope->payload.dump();
    EXPECT_EQ(plain.sequence, general.envelope->sequence) << body;
  }
  return true;
}

TEST(PlainDecoder, TakesEverythingTheEncoderWrites) {
  Envelope with_sequence = full_envelope();
  with_sequence.sequence = 9'007'199'254'740'991;  // 2^53 - 1
  Envelope empty_message = minimal_envelope();
  empty_message.exception_type = "E";
  empty_message.exception_message = "";
  Envelope unicode = minimal_envelope();
  unicode.name = "caf\xc3\xa9.\xe2\x9c\x93";
  unicode.producer = "tab\there \"q\" \\ /";
  unicode.payload = json::array({json::object(), json::array(), "", 0, -1, 1.5e300, false});
  for (const Envelope& e : {full_envelope(), minimal_envelope(), with_sequence, empty_message, unicode}) {
    EXPECT_TRUE(plain_agrees(encode_envelope(e))) << encode_envelope(e);
  }
}

TEST(PlainDecoder, TakesOtherKeyOrdersAndWhitespace) {
  const std::string sorted = valid_body().dump();  // keys in alphabetical order
  EXPECT_TRUE(plain_agrees(sorted)) << sorted;
  const std::string spaced = valid_body().dump(2);  // newlines and indentation everywhere
  EXPECT_TRUE(plain_agrees(spaced)) << spaced;
  EXPECT_TRUE(plain_agrees(" \t\r\n" + sorted + " \n"));
}

TEST(PlainDecoder, DeclinesWhatTheGeneralDecoderMustJudge) {
  const std::string body = encode_envelope(full_envelope());
  const std::string head = body.substr(0, body.size() - 1);  // without the closing brace
  const std::vector<std::string> declined = {
      head + ",\"name\":\"again\"}",      // a repeated key: the general decoder keeps the last
      head + ",\"extra\":1}",             // an unknown key: ignored by the general decoder
      head + ",\"sequence\":1.0}",        // not a plain integer
      head + "} x",                       // trailing text
      "{}",
      "",
      "[1]",
  };
  for (const std::string& text : declined) EXPECT_FALSE(plain_agrees(text)) << text;
  // Invalid values are declined, so that the general decoder names them.
  for (const auto& [field, value] : std::vector<std::pair<const char*, json>>{
           {"id", "not-a-uuid"}, {"time", "2026-02-30T00:00:00Z"}, {"duration_us", -1},
           {"duration_us", 9'007'199'254'740'992}, {"schema_version", 2}, {"name", ""},
           {"traceparent", "00-xyz"}, {"exception", {{"type", ""}, {"message", ""}}},
           {"producer", "\xff"}}) {
    json changed = valid_body();
    changed[field] = value;
    const std::string text = changed.dump(-1, ' ', false, json::error_handler_t::ignore);
    EXPECT_FALSE(plain_agrees(text)) << text;
  }
  json deep = valid_body();
  json* at = &deep["payload"];
  for (int i = 0; i < 63; ++i) at = &((*at)["x"] = json::object());  // 64 levels in the payload
  EXPECT_FALSE(plain_agrees(deep.dump()));
  EXPECT_FALSE(decode_envelope(deep.dump()));
}

TEST(PlainDecoder, PayloadsOfEveryKind) {
  const std::string body = encode_envelope(minimal_envelope());
  const std::string head = body.substr(0, body.rfind("\"payload\":") + 10);
  const std::vector<std::string> taken = {
      "null", "true", "false", "0", "-0", "7", "-7", "18446744073709551615", "-9223372036854775808",
      "0.5", "-0.0", "1e3", "1E-3", "2.5e+10", "123456789012345678901234567890.0", "\"\"", "\"text\"",
      "{}", "[]", "[[],{}]", "{\"a\":{\"b\":[1,2.5,\"x\",null,true]}}", " { \"a\" : [ 1 , 2 ] } ",
      "{\"k\":1,\"k\":2}",  // a repeated key: the last wins, in both decoders
  };
  for (const std::string& payload : taken) EXPECT_TRUE(plain_agrees(head + payload + "}")) << payload;
  // Taken by nlohmann's parser of the payload, or declined for the general decoder: either way
  // the same outcome as the general decoder.
  const std::vector<std::string> others = {
      "18446744073709551616", "-9223372036854775809", "1e400", "1e-400", "\"caf\u00e9\"",
      "\"caf\xc3\xa9\"", "\"\xff\"", "[01]", "-", "1.", ".5", "+1", "[1,]", "{\"a\"}", "tru", "nul",
      "[1 2]", "\"tab\there\"",
  };
  for (const std::string& payload : others) {
    const std::string text = head + payload + "}";
    plain_agrees(text);
    const auto general = notifications::detail::decode_general_envelope(text);
    EXPECT_EQ(decode_envelope(text).envelope.has_value(), general.envelope.has_value()) << payload;
  }
  // Tokens that nlohmann would read alone but not inside the body: a byte order mark before a
  // value, a NUL byte after one. Both decoders must reject them.
  using namespace std::string_literals;
  for (const std::string& payload : {"\xEF\xBB\xBF" "1"s, "\xEF\xBB\xBF\"x\""s, "18446744073709551616\0xyz"s,
                                     "\"a\\n\0\""s}) {
    const std::string text = head + payload + "}";
    EXPECT_FALSE(plain_agrees(text)) << payload;
    EXPECT_FALSE(decode_envelope(text)) << payload;
  }
}

TEST(Envelope, PayloadIsWrittenAsNlohmannDumpsIt) {
  const std::vector<json> payloads = {
      nullptr, true, false, 0, -1, std::int64_t{-9223372036854775807 - 1}, std::uint64_t{18446744073709551615u},
      0.1, -0.0, 1e300, 5e-324, 1.0, "", "plain", "caf\xc3\xa9", "quote \" backslash \\ tab \t nl \n",
      "\x01\x1f\x7f", "bad \xff utf-8", json::object(), json::array(),
      {{"k\"ey", {1, 2.5, "x"}}, {"", nullptr}, {"\xc3\xa9", {{"nested", json::array({json::object()})}}}},
  };
  for (const json& payload : payloads) {
    Envelope e = minimal_envelope();
    e.payload = payload;
    const std::string body = encode_envelope(e);
    const std::string expected = "\"payload\":" + payload.dump(-1, ' ', false, json::error_handler_t::replace) + "}";
    ASSERT_GE(body.size(), expected.size());
    EXPECT_EQ(body.substr(body.size() - expected.size()), expected) << payload.dump(-1, ' ', true, json::error_handler_t::replace);
  }
}

// The encoder escapes strings itself when they are well-formed UTF-8 and leaves the rest to
// nlohmann: every byte alone, every lead byte of a multi-byte sequence with every next byte, and
// three- and four-byte sequences around each boundary of table 3-7 (overlong, surrogate, past
// U+10FFFF, cut short), inside plain text, as a value and as a key.
TEST(Envelope, StringsAreEscapedAsNlohmannDumpsThemForEveryByteSequence) {
  std::vector<std::string> texts;
  for (int a = 0; a < 256; ++a) texts.push_back(std::string(1, static_cast<char>(a)));
  for (int a = 0xC0; a < 256; ++a) {
    for (int b = 0; b < 256; ++b) texts.push_back({static_cast<char>(a), static_cast<char>(b)});
  }
  const int edges[] = {0x00, 0x22, 0x5C, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF};
  for (int a = 0xE0; a < 0xF8; ++a) {
    for (int b : edges) {
      for (int c : edges) {
        texts.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)});
        for (int d : {0x41, 0x80, 0xBF, 0xC0}) {
          texts.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c), static_cast<char>(d)});
        }
      }
    }
  }
  std::size_t checked = 0;
  for (const std::string& text : texts) {
    for (const json& payload : {json("x" + text + "y"), json({{text, text}})}) {
      Envelope e = minimal_envelope();
      e.payload = payload;
      const std::string body = encode_envelope(e);
      const std::string expected = "\"payload\":" + payload.dump(-1, ' ', false, json::error_handler_t::replace) + "}";
      ASSERT_GE(body.size(), expected.size());
      ASSERT_EQ(body.substr(body.size() - expected.size()), expected)
          << payload.dump(-1, ' ', true, json::error_handler_t::replace);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2 * texts.size());
}

// The fast decoder, building the payload and only validating it, accepts a string exactly when
// nlohmann's parser does, and decodes it to the same text, for every byte value after runs of 0
// to 17 plain bytes (every offset in a word, should the scan ever read words).
TEST(EnvelopePlain, StringsWithAnyByteAnywhereAreReadAsNlohmannReadsThem) {
  Envelope e = minimal_envelope();
  e.payload = json::object();
  const std::string encoded = encode_envelope(e);
  ASSERT_TRUE(encoded.ends_with("\"payload\":{}}"));
  const std::string head = encoded.substr(0, encoded.size() - 3);
  std::size_t accepted = 0;
  for (int b = 0; b < 256; ++b) {
    for (std::size_t before = 0; before <= 17; ++before) {
      const std::string raw = std::string(before, 'a') + static_cast<char>(b) + std::string(9, 'z');
      const std::string payload = "{\"s\":\"" + raw + "\"}";
      const std::string body = head + payload + "}";
      const bool valid = json::accept(payload);
      Envelope built;
      const bool built_ok = notifications::detail::decode_plain_envelope(body, built);
      Envelope deferred;
      notifications::detail::PayloadSpan span;
      const bool validated = notifications::detail::decode_plain_envelope_deferring_payload(body, deferred, span);
      ASSERT_EQ(built_ok, valid) << "byte " << b << " after " << before;
      ASSERT_EQ(validated, valid) << "byte " << b << " after " << before;
      if (valid) {
        EXPECT_EQ(built.payload, json::parse(payload)) << "byte " << b << " after " << before;
        ++accepted;
      }
    }
  }
  // Printable ASCII but '"' and '\\' (93 bytes), and DEL, at each of 18 offsets ("\\z" is no escape).
  EXPECT_EQ(accepted, 94u * 18u);
}

TEST(OutgoingEvent, EncodesTheBytesOfMessageFromEvent) {
  json payload = {{"order_id", 7}, {"traceparent", kTrace}, {"note", "caf\xc3\xa9 \"q\""}};
  Event with_everything("order.placed", payload);
  notifications::detail::EventAccess::set_exception(with_everything,
                                                    {"std::runtime_error", "out of \"stock\"", nullptr});
  Event bare("ping", nullptr);
  // Past OutgoingEvent::kInlineBytes: its text lives on the heap.
  Event large("report.ready",
              {{"rows", std::string(3 * notifications::detail::OutgoingEvent::kInlineBytes, 'r')}, {"traceparent", kTrace}});
  notifications::Message reused;  // one Message for all: buffers are overwritten in place
  for (const Event* event : {&with_everything, &bare, &large, &with_everything}) {
    // Moved twice, as the outbound queue may: inline text is copied, heap text changes hands.
    auto made = notifications::detail::outgoing_from_event(*event);
    notifications::detail::OutgoingEvent moved(std::move(made));
    notifications::detail::OutgoingEvent outgoing;
    outgoing = std::move(moved);
    EXPECT_TRUE(made.name().empty() && made.payload().empty() && moved.name().empty());
    notifications::detail::encode_outgoing(outgoing, "shop", "instance-1", 42, "app.order", reused);
    const notifications::Message expected =
        notifications::message_from_event(*event, "shop", "instance-1", 42, "app.order");
    EXPECT_EQ(reused.subject, expected.subject);
    EXPECT_EQ(reused.body, expected.body);
    EXPECT_EQ(reused.headers, expected.headers);
    EXPECT_TRUE(plain_agrees(reused.body)) << reused.body;
  }
}

}  // namespace

namespace {

TEST(EnvelopeContext, ContextAndTagsAreWrittenOnlyWhenNonEmptyObjects) {
  Envelope e = minimal_envelope();
  e.context = json::object();
  e.tags = nullptr;
  const std::string bare = encode_envelope(e);
  EXPECT_EQ(bare.find("\"context\""), std::string::npos) << bare;
  EXPECT_EQ(bare.find("\"tags\""), std::string::npos) << bare;
  e.context = {{"request_id", "r-1"}};
  e.tags = {{"checkout", true}};
  const std::string body = encode_envelope(e);
  EXPECT_NE(body.find(R"("context":{"request_id":"r-1"},"tags":{"checkout":true},"payload":)"), std::string::npos)
      << body;
  const auto decoded = decode_envelope(body);
  ASSERT_TRUE(decoded) << decoded.error;
  EXPECT_EQ(decoded.envelope->context, e.context);
  EXPECT_EQ(decoded.envelope->tags, e.tags);
  EXPECT_TRUE(plain_agrees(body)) << "the fast decoder declined context and tags: " << body;
}

TEST(EnvelopeContext, AnEnvelopeWithoutThemDecodesAsBefore) {
  const auto decoded = decode_envelope(encode_envelope(minimal_envelope()));
  ASSERT_TRUE(decoded) << decoded.error;
  EXPECT_TRUE(decoded.envelope->context.is_null());
  EXPECT_TRUE(decoded.envelope->tags.is_null());
}

TEST(EnvelopeContext, ContextOrTagsThatAreNotObjectsAreRefusedNamingTheField) {
  // The value is never quoted: it may be what a route's redaction rules hide.
  EXPECT_EQ(error_with("context", "s3cret"), "field \"context\": expected an object, got string");
  EXPECT_EQ(error_with("context", nullptr), "field \"context\": expected an object, got null");
  EXPECT_EQ(error_with("tags", json::array({{{"password", "s3cret"}}})), "field \"tags\": expected an object, got array");
}

TEST(EnvelopeContext, ARemoteEventCarriesThemAndAnEventSendsWhatItCaptured) {
  Envelope e = full_envelope();
  const Event remote = notifications::event_from_envelope(e, "memory");
  EXPECT_EQ(remote.context(), e.context);
  EXPECT_EQ(remote.tags(), e.tags);
  const Envelope bare = minimal_envelope();
  EXPECT_EQ(notifications::event_from_envelope(bare, "memory").context(), json::object());

  notifications::ContextScope scope({{"request_id", "r-7"}});
  notifications::TagScope tags("checkout");
  const Event local("order.placed", {{"id", 1}});
  const Envelope sent = notifications::envelope_from_event(local, "shop", "i-1");
  EXPECT_EQ(sent.context, json({{"request_id", "r-7"}}));
  EXPECT_EQ(sent.tags, json({{"checkout", true}}));
  EXPECT_EQ(sent.payload, json({{"id", 1}})) << "the payload must stay untouched";
}

TEST(EnvelopeContext, TheOutboxEncodingWritesTheBytesOfMessageFromEvent) {
  notifications::Message reused;
  for (const bool with_tags : {false, true}) {
    for (const bool with_context : {false, true}) {
      std::optional<notifications::ContextScope> scope;
      std::optional<notifications::TagScope> tags;
      if (with_context) scope.emplace(json{{"request_id", "r-1"}, {"note", "caf\xc3\xa9 \"q\""}});
      if (with_tags) tags.emplace(json::array({"checkout", json{{"level", 2}}}));
      // Small (inline text) and large (heap text) events.
      for (const std::size_t size : {std::size_t{1}, 3 * notifications::detail::OutgoingEvent::kInlineBytes}) {
        const Event event("order.placed", {{"rows", std::string(size, 'r')}});
        notifications::detail::OutgoingEvent outgoing = notifications::detail::outgoing_from_event(event);
        notifications::detail::OutgoingEvent moved(std::move(outgoing));
        EXPECT_EQ(moved.attributes().empty(), !with_context && !with_tags);
        notifications::detail::encode_outgoing(moved, "shop", "instance-1", 3, "app.order", reused);
        const auto expected = notifications::message_from_event(event, "shop", "instance-1", 3, "app.order");
        EXPECT_EQ(reused.body, expected.body);
        const auto decoded = decode_envelope(reused.body);
        ASSERT_TRUE(decoded) << decoded.error;
        EXPECT_EQ(decoded.envelope->context.is_object(), with_context) << reused.body;
        EXPECT_EQ(decoded.envelope->tags.is_object(), with_tags) << reused.body;
        EXPECT_EQ(decoded.envelope->payload, event.payload());
      }
    }
  }
}

}  // namespace

// ---- the receiver's decoder that validates the payload and builds it on the first read

// What the deferring decoder made of `body`, checked against the general decoder as plain_agrees()
// does, with the payload built from the span it returned. Returns whether it accepted.
bool deferred_agrees(const std::string& body) {
  Envelope deferred;
  notifications::detail::PayloadSpan span;
  if (!notifications::detail::decode_plain_envelope_deferring_payload(body, deferred, span)) return false;
  EXPECT_TRUE(deferred.payload.is_null()) << body << ": the deferring decoder built the payload";
  const auto general = notifications::detail::decode_general_envelope(body);
  EXPECT_TRUE(general) << body << ": the deferring decoder accepted what the general one rejects: " << general.error;
  if (!general) return true;
  EXPECT_LE(span.offset + span.size, body.size()) << body;
  const json built = notifications::detail::build_validated_payload(std::string_view(body).substr(span.offset, span.size));
  deferred.payload = built;
  expect_same(deferred, *general.envelope);
  EXPECT_TRUE(same_json(built, general.envelope->payload))
      << body << "\ndeferred: " << built.dump() << "\ngeneral: " << general.envelope->payload.dump();
  return true;
}

TEST(DeferringDecoder, TakesEveryPayloadThePlainDecoderTakesAndBuildsTheSameValue) {
  const std::string body = encode_envelope(minimal_envelope());
  const std::string head = body.substr(0, body.rfind("\"payload\":") + 10);
  for (const std::string payload :
       {"null", "true", "false", "0", "-0", "7", "-7", "18446744073709551615", "18446744073709551616",
        "-9223372036854775808", "-9223372036854775809", "0.5", "-0.0", "1e3", "1E-3", "2.5e+10",
        "123456789012345678901234567890.0", "\"\"", "\"text\"", "{}", "[]", "[[],{}]",
        "{\"a\":{\"b\":[1,2.5,\"x\",null,true]}}", " { \"a\" : [ 1 , 2 ] } ", "{\"k\":1,\"k\":2}"}) {
    EXPECT_TRUE(deferred_agrees(head + payload + "}")) << payload;
  }
  // Strings the plain builder leaves to nlohmann are validated here: escapes, any valid UTF-8
  // (two, three and four bytes, the edges of each range), DEL.
  for (const std::string payload :
       {"\"caf\\u00e9 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t\"", "\"caf\xc3\xa9\"", "\"\xe2\x82\xac \xef\xbf\xbf\"",
        "\"\xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"", "\"\xe0\xa0\x80 \xed\x9f\xbf \xee\x80\x80\"", "\"del \x7f\"",
        "{\"k\xc3\xa9y\":[\"\\u20AC\"]}"}) {
    EXPECT_TRUE(deferred_agrees(head + payload + "}")) << payload;
  }
}

TEST(DeferringDecoder, RejectsMalformedPayloadsWithTheGeneralDecodersError) {
  const std::string body = encode_envelope(minimal_envelope());
  const std::string head = body.substr(0, body.rfind("\"payload\":") + 10);
  json deep = json::object();
  json* at = &deep;
  for (int i = 0; i < 63; ++i) at = &((*at)["x"] = json::object());  // 64 levels in the payload
  using namespace std::string_literals;
  for (const std::string& payload :
       {"\"\xff\""s, "\"\xc0\xaf\""s, "\"\xc1\xbf\""s, "\"\xe0\x80\xaf\""s, "\"\xed\xa0\x80\""s, "\"\xf4\x90\x80\x80\""s,
        "\"\xf5\x80\x80\x80\""s, "\"\xe2\x82\""s, "\"\xe2\x82"s, "\"\x80\""s, "\"tab\there\""s, "\"a\\x\""s,
        "\"a\\u12G4\""s, "\"a\0b\""s, "[01]"s, "-"s, "1."s, ".5"s, "+1"s, "[1,]"s, "{\"a\"}"s, "{\"a\":1,}"s,
        "tru"s, "nul"s, "[1 2]"s, "\xEF\xBB\xBF" "1"s, deep.dump()}) {
    const std::string text = head + payload + "}";
    std::optional<notifications::detail::PayloadSpan> span;
    const auto decoded = notifications::detail::decode_envelope_deferring_payload(text, span);
    EXPECT_FALSE(decoded) << payload;
    EXPECT_FALSE(span.has_value()) << payload;
    EXPECT_EQ(decoded.error, notifications::detail::decode_general_envelope(text).error) << payload;
    EXPECT_FALSE(decoded.error.empty()) << payload;
  }
}

TEST(DeferringDecoder, LeavesSurrogateEscapesAndUnreadableNumbersToTheGeneralDecoder) {
  const std::string body = encode_envelope(minimal_envelope());
  const std::string head = body.substr(0, body.rfind("\"payload\":") + 10);
  for (const std::string payload : {"\"\\ud83d\\ude00\"", "\"\\ud83d\"", "1e400", "1e-400"}) {
    const std::string text = head + payload + "}";
    EXPECT_FALSE(deferred_agrees(text)) << payload;
    std::optional<notifications::detail::PayloadSpan> span;
    const auto decoded = notifications::detail::decode_envelope_deferring_payload(text, span);
    EXPECT_FALSE(span.has_value()) << payload;
    EXPECT_EQ(decoded.envelope.has_value(), notifications::detail::decode_general_envelope(text).envelope.has_value())
        << payload;
    if (decoded) {
      EXPECT_FALSE(decoded.envelope->payload.is_null()) << payload;  // built at once
    }
  }
}

namespace {
std::atomic<int> deferred_builds{0};
json counting_builder(std::string_view text) {
  deferred_builds.fetch_add(1);
  return json::parse(text);
}
}  // namespace

TEST(DeferredPayload, IsBuiltOnTheFirstReadOnceForAllCopiesAndThreads) {
  deferred_builds = 0;
  const std::string body = "xx{\"order_id\":42,\"items\":[\"mug\"]}yy";
  auto deferred = std::make_shared<const notifications::detail::DeferredPayload>(body, 2, body.size() - 4, &counting_builder);
  Event event = notifications::detail::EventAccess::make_deferred("order.placed", deferred, steady_clock::now());
  const Event copy = event;
  EXPECT_EQ(deferred_builds.load(), 0) << "nothing read the payload yet";
  std::vector<std::thread> readers;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      const Event& mine = t % 2 == 0 ? event : copy;
      for (int i = 0; i < 100; ++i) {
        if (mine.payload()["order_id"] != 42) wrong.fetch_add(1);
      }
    });
  }
  for (std::thread& r : readers) r.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(deferred_builds.load(), 1);
  EXPECT_EQ(&event.payload(), &copy.payload()) << "copies share the one value";
  EXPECT_EQ(event.traceparent(), "");

  Event moved = std::move(event);
  EXPECT_EQ(moved.payload()["items"][0], "mug");
  EXPECT_TRUE(event.payload().is_null()) << "a moved-from event still has a payload";  // NOLINT(bugprone-use-after-move)
  Event assigned("other", json{{"a", 1}});
  assigned = copy;
  EXPECT_EQ(assigned.payload()["order_id"], 42);
  EXPECT_EQ(deferred_builds.load(), 1);
}

TEST(DeferredPayload, ChangingTheDeferredPayloadGivesTheEventItsOwnCopy) {
  deferred_builds = 0;
  auto deferred = std::make_shared<const notifications::detail::DeferredPayload>(std::string("{\"a\":1}"), 0, 7,
                                                                                 &counting_builder);
  Event event = notifications::detail::EventAccess::make_deferred("x", deferred, steady_clock::now());
  const Event copy = event;
  notifications::detail::EventAccess::payload(event)["b"] = 2;
  EXPECT_EQ(event.payload(), (json{{"a", 1}, {"b", 2}}));
  EXPECT_EQ(copy.payload(), (json{{"a", 1}})) << "a copy keeps the payload as it arrived";
  EXPECT_THROW(notifications::detail::DeferredPayload(std::string("{}"), 1, 2, &counting_builder), std::out_of_range);
}

namespace {
std::atomic<int> failing_builds_left{0};
json builder_that_fails_first(std::string_view text) {
  if (failing_builds_left.fetch_sub(1) > 0) throw std::bad_alloc();
  return json::parse(text);
}
}  // namespace

TEST(DeferredPayload, AFailedBuildIsTriedAgainByTheNextRead) {
  failing_builds_left = 1;
  auto deferred = std::make_shared<const notifications::detail::DeferredPayload>(std::string("[1,2]"), 0, 5,
                                                                                 &builder_that_fails_first);
  const Event event = notifications::detail::EventAccess::make_deferred("x", deferred, steady_clock::now());
  EXPECT_THROW(static_cast<void>(event.payload()), std::bad_alloc);
  // Another thread reads next: it must build, not wait forever for the failed first build.
  std::atomic<bool> read{false};
  std::thread reader([&] {
    const Event copy = event;
    read = copy.payload() == json::array({1, 2});
  });
  reader.join();
  EXPECT_TRUE(read.load());
  EXPECT_EQ(event.payload(), json::array({1, 2}));
}

TEST(PlainDecoder, BuildsStringsWithEscapesAndUtf8AsNlohmannDecodesThem) {
  const std::string body = encode_envelope(minimal_envelope());
  const std::string head = body.substr(0, body.rfind("\"payload\":") + 10);
  for (const std::string payload :
       {"\"caf\\u00e9 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t\\u0000\"", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
        "{\"k\xc3\xa9y\\n\":[\"\\u20AC\\u07FF\\u0080\\u007f\", \"del \x7f\"]}", "\"\\uFFFF\\uE000\\uD7FF\"",
        "{\"a\":1,\"\\u0061\":2}",  // the same key twice once unescaped: the last wins
        "{\"k\\u0000\":\"v\\u0000\"}"}) {
    const std::string text = head + payload + "}";
    // The value only: whether the builder decoded it or handed it to nlohmann is not visible here
    // (bench_envelope_decode shows the difference in time).
    EXPECT_TRUE(plain_agrees(text)) << payload;
  }
}
