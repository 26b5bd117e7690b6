// sqlite:// URLs and options (include/notifications/transports/sqlite.hpp), and the scheme's
// registration.
#include <charconv>
#include <string>
#include <string_view>

#include "notifications/transports/sqlite.hpp"
#include "transport/kit.hpp"

namespace notifications {

namespace {

constexpr std::string_view kKnownKeys =
    "synchronous, busy_timeout_ms, idle_interval_ms, min_poll_interval_us, batch_size, max_in_flight, ack_wait_ms, "
    "max_deliveries, nak_delay_ms, max_age_ms, delete_consumed, cleanup_interval_ms";

struct Bad {
  std::string why;
};

// An option's value as text: a query parameter, or a JSON string, number or boolean.
std::string text_of(const nlohmann::json& value, const std::string& key) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_unsigned() || value.is_number_integer()) return value.dump();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  throw Bad{"option \"" + key + "\" must be a string, a whole number or a boolean, not " + value.dump()};
}

std::uint64_t number(const std::string& key, const std::string& text, std::uint64_t low, std::uint64_t high) {
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < low || value > high) {
    throw Bad{"option \"" + key + "\" must be a whole number from " + std::to_string(low) + " to " +
              std::to_string(high) + ", not \"" + text + "\""};
  }
  return value;
}

void apply(SqliteTransportOptions& o, const std::string& key, const std::string& text) {
  constexpr std::uint64_t kDay = 86'400'000;
  using std::chrono::milliseconds;
  if (key == "synchronous") {
    const std::string lower = detail::ascii_lower(text);
    if (lower != "normal" && lower != "full") {
      throw Bad{"option \"synchronous\" must be \"normal\" or \"full\", not \"" + text + "\""};
    }
    o.synchronous_full = lower == "full";
  } else if (key == "busy_timeout_ms") {
    o.busy_timeout = milliseconds(number(key, text, 0, 600'000));
  } else if (key == "idle_interval_ms") {
    o.idle_interval = milliseconds(number(key, text, 1, 60'000));
  } else if (key == "min_poll_interval_us") {
    o.min_poll_interval = std::chrono::microseconds(number(key, text, 1, 60'000'000));
  } else if (key == "batch_size") {
    o.batch_size = number(key, text, 1, 100'000);
  } else if (key == "max_in_flight") {
    o.max_in_flight = number(key, text, 1, 1'000'000);
  } else if (key == "ack_wait_ms") {
    o.ack_wait = milliseconds(number(key, text, 1, kDay));
  } else if (key == "max_deliveries") {
    o.max_deliveries = static_cast<std::uint32_t>(number(key, text, 0, 1'000'000));
  } else if (key == "nak_delay_ms") {
    o.nak_delay = milliseconds(number(key, text, 0, kDay));
  } else if (key == "max_age_ms") {
    o.max_age = milliseconds(number(key, text, 0, 3650 * kDay));
  } else if (key == "cleanup_interval_ms") {
    o.cleanup_interval = milliseconds(number(key, text, 1, kDay));
  } else if (key == "delete_consumed") {
    const std::string lower = detail::ascii_lower(text);
    if (lower != "true" && lower != "false") {
      throw Bad{"option \"delete_consumed\" must be true or false, not \"" + text + "\""};
    }
    o.delete_consumed = lower == "true";
  } else {
    throw Bad{"unknown option \"" + key + "\" (known: " + std::string(kKnownKeys) + ")"};
  }
}

}  // namespace

SqliteTransportOptions sqlite_options_from_config(const TransportConfig& config) {
  try {
    const std::string_view url = config.url;
    const std::size_t colon = url.find("://");
    if (colon == std::string_view::npos || detail::ascii_lower(std::string(url.substr(0, colon))) != "sqlite") {
      throw Bad{"not a sqlite:// URL"};
    }
    std::string_view rest = url.substr(colon + 3);
    rest = rest.substr(0, rest.find_first_of("?#"));
    SqliteTransportOptions options;
    options.path = std::string(rest);
    if (options.path.empty()) {
      throw Bad{"no database file: write sqlite:///absolute/path/events.db or sqlite://relative/path.db"};
    }
    if (!config.options.is_null() && !config.options.is_object()) {
      throw Bad{"options must be a JSON object, not " + config.options.dump()};
    }
    if (config.options.is_object()) {
      for (const auto& [key, value] : config.options.items()) apply(options, key, text_of(value, key));
    }
    for (const auto& [key, value] : url_query(config.url)) apply(options, key, value);  // the URL wins
    if (options.min_poll_interval > options.idle_interval) {
      throw Bad{"min_poll_interval_us must not be above idle_interval_ms"};
    }
    return options;
  } catch (const Bad& bad) {
    throw TransportError("sqlite url \"" + redact_url(config.url) + "\": " + bad.why);
  }
}

}  // namespace notifications

// Linking notifications::sqlite registers the scheme before main(); the target's link options
// keep this object in a static link.
extern "C" int notifications_sqlite_transport_registered;
int notifications_sqlite_transport_registered = [] {
  notifications::register_transport("sqlite", [](const notifications::TransportConfig& config) {
    return notifications::make_sqlite_transport(notifications::sqlite_options_from_config(config));
  });
  return 1;
}();
