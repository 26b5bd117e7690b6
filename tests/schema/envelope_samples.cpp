// Writes envelope bodies for validate_envelopes.py, one JSON object a line:
//   {"case": name, "body": text, "decodes": bool, "error": decode error, "decoder_only": bool}
// The bodies are real ones from encode_envelope, and mutations of them. "decodes" is what
// decode_envelope says; the schema must agree, except for cases marked decoder_only, which break
// a rule the schema cannot express (the decoder rejects them, the schema accepts them).
//
// With --decode it instead reads JSON strings from stdin, one a line, and writes for each
//   {"decodes": bool, "error": decode error}
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "notifications/envelope.hpp"
#include "local/event_access.hpp"

using namespace std::chrono;
using nlohmann::json;
using notifications::Envelope;

namespace {

json verdict(const std::string& body) {
  const auto result = notifications::decode_envelope(body);
  return {{"decodes", static_cast<bool>(result)}, {"error", result.error}};
}

void emit(const std::string& name, const std::string& body, bool decoder_only = false) {
  json line = verdict(body);
  line["case"] = name;
  line["body"] = body;
  line["decoder_only"] = decoder_only;
  std::cout << line.dump() << "\n";
}

system_clock::time_point utc(int y, unsigned m, unsigned d) {
  return sys_days{year{y} / month{m} / day{d}};
}

Envelope minimal() {
  Envelope e;
  e.id = "0190c3c5-7d0e-8000-8000-000000000001";
  e.name = "ping";
  e.payload = nullptr;
  e.time = utc(2026, 11, 25) + hours(12) + microseconds(123456);
  e.producer = "shop";
  e.producer_instance = "5b0f7c7e-2a4e-4f0e-9f59-2f1f1f1f1f1f";
  return e;
}

Envelope full() {
  Envelope e = minimal();
  e.name = "order.placed";
  e.payload = {{"order", {{"id", 42}, {"lines", json::array({1, 2.5, "x", nullptr, true})}}},
               {"note", "caf\xc3\xa9 \"quoted\"\n"}};
  e.duration = microseconds(1500);
  e.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  e.exception_type = "std::runtime_error";
  e.exception_message = "out of stock";
  e.context = {{"request_id", "r-42"}, {"tenant", {{"id", 3}}}};
  e.tags = {{"checkout", true}, {"section", "admin"}};
  return e;
}

void real_envelopes() {
  emit("real: minimal, null payload", encode_envelope(minimal()));
  emit("real: traceparent, exception, nested payload", encode_envelope(full()));

  Envelope e = minimal();
  e.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
  emit("real: traceparent only", encode_envelope(e));

  e = minimal();
  e.exception_type = "unknown";
  e.exception_message = "";
  emit("real: exception with empty message", encode_envelope(e));

  e = minimal();
  json deep = "bottom";
  for (int i = 0; i < 63; ++i) deep = i % 2 == 0 ? json::array({deep}) : json{{"k", deep}};
  e.payload = deep;
  emit("real: payload nested 63 levels", encode_envelope(e));

  for (const json& payload : {json(true), json(-7), json(18446744073709551615ull), json(1.5e-300),
                              json("text"), json::array(), json::object()}) {
    e = minimal();
    e.payload = payload;
    emit("real: payload " + payload.dump(), encode_envelope(e));
  }

  e = minimal();
  e.name = "caf\xc3\xa9.\xf0\x9f\x98\x80\x01";
  e.payload = {{"\xe2\x80\xa8", "\t\\/"}};
  emit("real: unicode and control characters", encode_envelope(e));

  e = minimal();
  e.time = utc(1969, 7, 20) + hours(20) + minutes(17) + seconds(40);
  emit("real: before 1970", encode_envelope(e));
  e.time = ceil<microseconds>(system_clock::time_point::min());
  emit("real: earliest time of the clock", encode_envelope(e));
  e.time = system_clock::time_point::max();
  emit("real: latest time of the clock", encode_envelope(e));
  e.time = utc(2024, 2, 29);
  e.duration = microseconds(9007199254740991ll);
  emit("real: leap day, largest duration", encode_envelope(e));

  notifications::Event event(
      "sql.query", {{"sql", "SELECT 1"},
                    {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}});
  notifications::detail::EventAccess::set_exception(
      event, notifications::ExceptionInfo{"std::logic_error", "bad", nullptr});
  emit("real: from an Event",
       encode_envelope(notifications::envelope_from_event(event, "shop", "instance-1")));
}

void mutations() {
  const json base = json::parse(encode_envelope(full()));
  const auto with = [&](const char* field, json value) {
    json body = base;
    body[field] = std::move(value);
    return body.dump();
  };
  const auto without = [&](const char* field) {
    json body = base;
    body.erase(field);
    return body.dump();
  };

  for (const char* field : {"id", "name", "payload", "time", "duration_us", "producer",
                            "producer_instance", "schema_version"}) {
    emit(std::string("missing ") + field, without(field));
  }
  emit("no traceparent, no exception", [&] {
    json body = base;
    body.erase("traceparent");
    body.erase("exception");
    return body.dump();
  }());
  emit("unknown fields", [&] {
    json body = base;
    body["future"] = {{"x", 1}};
    body["exception"]["stack"] = json::array({"frame"});
    return body.dump();
  }());
  emit("uppercase id", with("id", "0190C3C5-7D0E-8000-8000-00000000000A"));
  emit("time without fraction", with("time", "2026-11-25T12:00:00Z"));
  emit("time with 9 fraction digits", with("time", "2026-11-25T12:00:00.123456789Z"));

  emit("id not a UUID", with("id", "order-1"));
  emit("id a number", with("id", 5));
  emit("name empty", with("name", ""));
  emit("time yesterday", with("time", "yesterday"));
  emit("time with offset", with("time", "2026-11-25T12:00:00.000000+00:00"));
  emit("time lowercase z", with("time", "2026-11-25T12:00:00.000000z"));
  emit("time 10 fraction digits", with("time", "2026-11-25T12:00:00.0000000000Z"));
  emit("time hour 24", with("time", "2026-11-25T24:00:00.000000Z"));
  emit("time a number", with("time", 1764072000));
  emit("duration negative", with("duration_us", -1));
  emit("duration above 2^53-1", with("duration_us", 9007199254740992ll));
  emit("duration a fraction", with("duration_us", 1.5));
  emit("duration a string", with("duration_us", "15"));
  emit("producer empty", with("producer", ""));
  emit("producer_instance a number", with("producer_instance", 5));
  emit("schema_version 2", with("schema_version", 2));
  emit("schema_version a string", with("schema_version", "1"));
  emit("traceparent empty", with("traceparent", ""));
  emit("traceparent uppercase",
       with("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"));
  emit("traceparent version ff",
       with("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  emit("traceparent zero trace id",
       with("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  emit("traceparent zero parent id",
       with("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
  emit("traceparent null", with("traceparent", nullptr));
  emit("context an array", with("context", json::array({"r-42"})));
  emit("context null", with("context", nullptr));
  emit("tags a string", with("tags", "checkout"));
  emit("exception a string", with("exception", "boom"));
  emit("exception without type", with("exception", {{"message", "m"}}));
  emit("exception empty type", with("exception", {{"type", ""}, {"message", "m"}}));
  emit("exception message a number", with("exception", {{"type", "E"}, {"message", 3}}));
  emit("body an array", json::array({base}).dump());

  // Rules the schema cannot express.
  emit("schema_version 1.0", with("schema_version", 1.0), true);
  emit("duration 2.0", with("duration_us", 2.0), true);
  emit("time on a day that does not exist", with("time", "2025-02-29T12:00:00.000000Z"), true);
  emit("time outside the clock's range", with("time", "1000-01-01T00:00:00.000000Z"), true);
  json deep = 1;
  for (int i = 0; i < 64; ++i) deep = json::array({deep});
  emit("payload nested 64 levels", with("payload", deep), true);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--decode") {
    std::string line;
    while (std::getline(std::cin, line)) {
      std::cout << verdict(json::parse(line).get<std::string>()).dump() << "\n";
    }
    return 0;
  }
  real_envelopes();
  mutations();
  return 0;
}
