// JetStreamOptions from a "jetstream://" URL and TransportConfig::options (see
// transports/jetstream.hpp): the JetStream keys are read here, every other key goes to the NATS
// transport's parser with the URL's scheme read as nats://.
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "option_values.hpp"
#include "transport/kit.hpp"
#include "notifications/subject.hpp"
#include "notifications/transports/jetstream.hpp"

namespace notifications {

namespace {

using nlohmann::json;
using namespace nats_detail::option_values;
using Setter = std::function<void(JetStreamOptions&, const json&, const std::string& where)>;

std::chrono::milliseconds as_millis(const json& v, const std::string& where, std::int64_t min) {
  return std::chrono::milliseconds(as_integer(v, where, min, 365LL * 86'400'000));
}

int as_int(const json& v, const std::string& where, int min, int max) {
  return static_cast<int>(as_integer(v, where, min, max));
}

// A list from a JSON array of strings, or from one string of comma-separated items (a URL query).
std::vector<std::string> as_list(const json& v, const std::string& where) {
  std::vector<std::string> out;
  if (v.is_array()) {
    for (const json& item : v) out.push_back(as_string(item, where, false));
  } else {
    const std::string text = as_string(v, where, false);
    std::size_t from = 0;
    while (from <= text.size()) {
      const std::size_t comma = text.find(',', from);
      out.push_back(text.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
      if (comma == std::string::npos) break;
      from = comma + 1;
    }
  }
  if (out.empty()) throw BadOption{where + ": expected at least one subject"};
  return out;
}

const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> table = [] {
    std::map<std::string, Setter> t;
    t["stream"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.stream = as_string(v, w, false); };
    t["subjects"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.subjects = as_list(v, w); };
    t["provision"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      const std::string mode = detail::ascii_lower(as_string(v, w, false));
      if (mode == "create") {
        o.provision = JetStreamOptions::Provision::create;
      } else if (mode == "verify") {
        o.provision = JetStreamOptions::Provision::verify;
      } else {
        throw BadOption{w + ": expected create or verify, got " + v.dump()};
      }
    };
    t["storage"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      const std::string kind = detail::ascii_lower(as_string(v, w, false));
      if (kind != "file" && kind != "memory") throw BadOption{w + ": expected file or memory, got " + v.dump()};
      o.file_storage = kind == "file";
    };
    t["replicas"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.replicas = as_int(v, w, 1, 5); };
    t["duplicate_window_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.duplicate_window = as_millis(v, w, 1);
    };
    t["max_age_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.max_age = as_millis(v, w, 0); };
    t["max_messages"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.max_messages = as_integer(v, w, -1, std::numeric_limits<std::int64_t>::max());
    };
    t["max_bytes"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.max_bytes = as_integer(v, w, -1, std::numeric_limits<std::int64_t>::max());
    };
    t["max_pending_acks"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.max_pending_acks = as_int(v, w, 1, 1'000'000);
    };
    t["publish_timeout_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.publish_timeout = as_millis(v, w, 1);
    };
    t["api_timeout_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.api_timeout = as_millis(v, w, 1); };
    t["fetch_batch"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.fetch_batch = as_int(v, w, 1, 100'000); };
    t["fetch_wait_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.fetch_wait = as_millis(v, w, 10); };
    t["max_waiting"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.max_waiting = as_int(v, w, 1, 100'000); };
    t["ack_wait_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) { o.ack_wait = as_millis(v, w, 1); };
    t["max_deliveries"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.max_deliveries = static_cast<std::uint32_t>(as_integer(v, w, 0, std::numeric_limits<std::int32_t>::max()));
    };
    t["consumer_type"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      const std::string type = detail::ascii_lower(as_string(v, w, false));
      if (type == "pull") {
        o.consumer_type = JetStreamOptions::ConsumerType::pull;
      } else if (type == "push") {
        o.consumer_type = JetStreamOptions::ConsumerType::push;
      } else {
        throw BadOption{w + ": expected pull or push, got " + v.dump()};
      }
    };
    t["idle_heartbeat_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.idle_heartbeat = as_millis(v, w, 100);
    };
    t["inactive_threshold_ms"] = [](JetStreamOptions& o, const json& v, const std::string& w) {
      o.inactive_threshold = as_millis(v, w, 1);
    };
    return t;
  }();
  return table;
}

std::string jetstream_keys() {
  std::string out;
  for (const auto& [key, setter] : setters()) out += (out.empty() ? "" : ", ") + key;
  return out;
}

bool is_jetstream_key(const std::string& key) { return setters().count(key) != 0; }

void apply(JetStreamOptions& options, const std::string& key, const json& value, const std::string& where) {
  setters().at(key)(options, value, where + " \"" + key + "\"");
}

void check(const JetStreamOptions& o) {
  if (o.stream.empty()) throw BadOption{"stream: empty name"};
  for (const char c : o.stream) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) throw BadOption{"stream \"" + detail::wire_text(o.stream) + "\": only letters, digits, '-' and '_'"};
  }
  if (o.subjects.empty()) throw BadOption{"subjects: expected at least one subject"};
  for (const std::string& subject : o.subjects) {
    if (const std::string problem = subject_pattern_problem(subject); !problem.empty()) {
      throw BadOption{"subjects: \"" + detail::wire_text(subject) + "\": " + problem};
    }
  }
  if (o.replicas < 1 || o.replicas > 5) throw BadOption{"replicas: expected 1 to 5"};
  if (o.max_age.count() > 0 && o.duplicate_window > o.max_age) {
    throw BadOption{"duplicate_window_ms: must not exceed max_age_ms"};
  }
  if (o.max_pending_acks < 1) throw BadOption{"max_pending_acks: expected at least 1"};
  if (o.fetch_batch < 1) throw BadOption{"fetch_batch: expected at least 1"};
  if (o.fetch_wait < std::chrono::milliseconds(10)) throw BadOption{"fetch_wait_ms: expected at least 10"};
  if (o.max_waiting < 1) throw BadOption{"max_waiting: expected at least 1"};
  if (o.idle_heartbeat < std::chrono::milliseconds(100)) throw BadOption{"idle_heartbeat_ms: expected at least 100"};
}

}  // namespace

JetStreamOptions jetstream_options_from_config(const TransportConfig& config) {
  JetStreamOptions options;
  const std::string shown_url = redact_url(config.url);
  try {
    // config.options first, so the URL wins; the NATS transport's keys pass through.
    TransportConfig nats;
    if (!config.options.is_null()) {
      if (!config.options.is_object()) throw BadOption{"options: expected a JSON object"};
      for (const auto& [key, value] : config.options.items()) {
        if (is_jetstream_key(key)) {
          apply(options, key, value, "option");
        } else {
          nats.options[key] = value;
        }
      }
    }
    const std::string_view url = config.url;
    const std::size_t sep = url.find("://");
    if (sep == std::string_view::npos || detail::ascii_lower(url.substr(0, sep)) != "jetstream") {
      throw BadOption{"expected jetstream://host[:port]"};
    }
    const std::string_view rest = url.substr(sep + 3);
    nats.url = "nats://" + std::string(rest.substr(0, rest.find('?')));
    std::string query;
    for (const auto& [key, value] : url_query(url)) {
      if (is_jetstream_key(key)) {
        apply(options, key, json(percent_decode(value)), "query key");
      } else {
        query += (query.empty() ? "?" : "&") + key + (value.empty() ? "" : "=" + value);
      }
    }
    nats.url += query;
    try {
      options.connection = nats_options_from_config(nats);
    } catch (const TransportError& e) {
      // The NATS parser names its own keys and its view of the URL; restate both.
      const std::string text = e.what();
      const std::size_t why = text.find("\": ");
      throw BadOption{(why == std::string::npos ? text : text.substr(why + 3)) +
                      " (JetStream keys: " + jetstream_keys() + ")"};
    }
    check(options);
  } catch (const BadOption& bad) {
    throw TransportError("jetstream url \"" + shown_url + "\": " + bad.why);
  }
  return options;
}

void validate_jetstream_options(const JetStreamOptions& options) {
  try {
    check(options);
  } catch (const BadOption& bad) {
    throw TransportError("jetstream options: " + bad.why);
  }
}

}  // namespace notifications
