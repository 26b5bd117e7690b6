// NatsOptions from a "nats://" / "tls://" URL and TransportConfig::options (see transports/nats.hpp).
#include <cctype>
#include <charconv>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "option_values.hpp"
#include "transport/kit.hpp"
#include "notifications/transports/nats.hpp"

namespace notifications {

namespace {

using nlohmann::json;
using namespace nats_detail::option_values;

// One option: how to set it from a JSON value (options) or a string (URL query).
struct Setter {
  bool secret = false;  // never echo the value
  std::function<void(NatsOptions&, const json&, const std::string& where)> apply;
};

const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> table = [] {
    std::map<std::string, Setter> t;
    // A value under a secret-looking key (redaction::secret_looking) is never echoed.
    auto text = [&t](const char* key, std::string NatsOptions::*field) {
      const bool secret = redaction::secret_looking(key);
      t[key] = Setter{secret, [field, secret](NatsOptions& o, const json& v, const std::string& where) {
                        o.*field = as_string(v, where, secret);
                      }};
    };
    auto flag = [&t](const char* key, bool NatsOptions::*field) {
      t[key] = Setter{false, [field](NatsOptions& o, const json& v, const std::string& where) {
                        o.*field = as_bool(v, where);
                      }};
    };
    auto millis = [&t](const char* key, std::chrono::milliseconds NatsOptions::*field, std::int64_t min) {
      t[key] = Setter{false, [field, min](NatsOptions& o, const json& v, const std::string& where) {
                        o.*field = std::chrono::milliseconds(as_integer(v, where, min, 86'400'000));
                      }};
    };
    auto whole = [&t](const char* key, int NatsOptions::*field, int min) {
      t[key] = Setter{false, [field, min](NatsOptions& o, const json& v, const std::string& where) {
                        o.*field = static_cast<int>(as_integer(v, where, min, std::numeric_limits<int>::max()));
                      }};
    };
    text("user", &NatsOptions::user);
    text("password", &NatsOptions::password);
    text("token", &NatsOptions::token);
    text("creds_file", &NatsOptions::creds_file);
    text("nkey_public", &NatsOptions::nkey_public);
    text("nkey_seed_file", &NatsOptions::nkey_seed_file);
    flag("tls", &NatsOptions::tls);
    text("tls_ca_file", &NatsOptions::tls_ca_file);
    text("tls_cert_file", &NatsOptions::tls_cert_file);
    text("tls_key_file", &NatsOptions::tls_key_file);
    text("tls_hostname", &NatsOptions::tls_hostname);
    text("name", &NatsOptions::name);
    whole("max_reconnect", &NatsOptions::max_reconnect, -1);
    millis("reconnect_wait_ms", &NatsOptions::reconnect_wait, 0);
    millis("reconnect_jitter_ms", &NatsOptions::reconnect_jitter, 0);
    t["reconnect_buffer_bytes"] = Setter{false, [](NatsOptions& o, const json& v, const std::string& where) {
                                           o.reconnect_buffer_bytes = static_cast<std::size_t>(
                                               as_integer(v, where, 0, std::numeric_limits<int>::max()));
                                         }};
    millis("ping_interval_ms", &NatsOptions::ping_interval, 1);
    whole("max_pings_out", &NatsOptions::max_pings_out, 1);
    millis("connect_timeout_ms", &NatsOptions::connect_timeout, 1);
    flag("retry_on_failed_connect", &NatsOptions::retry_on_failed_connect);
    flag("send_asap", &NatsOptions::send_asap);
    flag("no_echo", &NatsOptions::no_echo);
    flag("headers", &NatsOptions::headers);
    whole("pending_messages_limit", &NatsOptions::pending_messages_limit, 1);
    whole("pending_bytes_limit", &NatsOptions::pending_bytes_limit, 1);
    t["servers"] = Setter{false, [](NatsOptions& o, const json& v, const std::string& where) {
                            std::vector<std::string> servers;
                            if (v.is_string()) {
                              servers.push_back(v.get<std::string>());
                            } else if (v.is_array() && !v.empty()) {
                              for (const auto& s : v) servers.push_back(as_string(s, where, false));
                            } else {
                              throw BadOption{where + ": expected a server URL or a non-empty list of them"};
                            }
                            o.servers = std::move(servers);
                          }};
    return t;
  }();
  return table;
}

std::string known_keys() {
  std::string out;
  for (const auto& [key, setter] : setters()) out += (out.empty() ? "" : ", ") + key;
  return out;
}

void apply(NatsOptions& options, const std::string& key, const json& value, const std::string& where) {
  const auto& table = setters();
  const auto it = table.find(key);
  if (it == table.end()) throw BadOption{"unknown " + where + " \"" + key + "\" (known: " + known_keys() + ")"};
  it->second.apply(options, value, where + " \"" + key + "\"");
}

// "host[:port]" with an optional "[v6]"; checked so that a typo fails here, not at connect.
void check_host_port(std::string_view hostport) {
  if (hostport.empty()) throw BadOption{"a server has no host"};
  std::string_view host = hostport;
  std::string_view port;
  if (hostport.front() == '[') {
    const std::size_t close = hostport.find(']');
    if (close == std::string_view::npos) throw BadOption{"server \"" + std::string(hostport) + "\": unclosed '['"};
    host = hostport.substr(0, close + 1);
    if (close + 1 < hostport.size()) {
      if (hostport[close + 1] != ':') throw BadOption{"server \"" + std::string(hostport) + "\": expected ':' after ']'"};
      port = hostport.substr(close + 2);
    }
  } else if (const std::size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  if (host.empty()) throw BadOption{"server \"" + std::string(hostport) + "\": no host"};
  for (char c : host) {
    if (std::isalnum(static_cast<unsigned char>(c)) == 0 && std::string_view("-._[]:").find(c) == std::string_view::npos) {
      throw BadOption{"server \"" + std::string(hostport) + "\": unexpected character '" + std::string(1, c) + "' in the host"};
    }
  }
  if (!port.empty() || hostport.back() == ':') {
    int n = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (ec != std::errc() || end != port.data() + port.size() || n < 1 || n > 65535) {
      throw BadOption{"server \"" + std::string(hostport) + "\": port: expected 1 to 65535"};
    }
  }
}

// Parses the URL into `options` (servers, credentials, query keys).
void apply_url(NatsOptions& options, std::string_view url) {
  const std::size_t sep = url.find("://");
  if (sep == std::string_view::npos) throw BadOption{"expected nats://host[:port] or tls://host[:port]"};
  const std::string scheme = detail::ascii_lower(url.substr(0, sep));
  if (scheme != "nats" && scheme != "tls") throw BadOption{"scheme \"" + scheme + "\": expected nats or tls"};
  if (scheme == "tls") options.tls = true;
  std::string_view rest = url.substr(sep + 3);
  rest = rest.substr(0, rest.find('?'));  // the query: url_query() below
  // Credentials end at the last '@' (a password may contain '@' unencoded).
  if (const std::size_t at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (const std::size_t colon = userinfo.find(':'); colon != std::string_view::npos) {
      options.user = percent_decode(userinfo.substr(0, colon));
      options.password = percent_decode(userinfo.substr(colon + 1));
      if (options.user.empty()) throw BadOption{"credentials: empty user name before ':'"};
    } else {
      options.token = percent_decode(userinfo);  // nats://<token>@host
      if (options.token.empty()) throw BadOption{"credentials: empty token before '@'"};
    }
  }
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (!rest.empty()) {
    std::vector<std::string> servers;
    while (!rest.empty()) {
      const std::size_t comma = rest.find(',');
      std::string_view hostport = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      // A later entry may repeat the scheme: nats://a:4222,nats://b:4222.
      if (const std::size_t s = hostport.find("://"); s != std::string_view::npos) hostport = hostport.substr(s + 3);
      check_host_port(hostport);
      servers.push_back(scheme + "://" + std::string(hostport));
    }
    options.servers = std::move(servers);
  }
  for (const auto& [key, value] : url_query(url)) apply(options, key, json(percent_decode(value)), "query key");
}

void check(const NatsOptions& o) {
  if (o.servers.empty()) throw BadOption{"no server given"};
  for (const std::string& server : o.servers) {
    // Before anything quotes the server: its credentials must not reach the error.
    if (server.find('@') != std::string::npos) {
      throw BadOption{"a server URL carries credentials: give them once, in the main URL or in user/password/token"};
    }
    const std::size_t sep = server.find("://");
    if (sep == std::string::npos) throw BadOption{"server \"" + server + "\": expected nats://host[:port]"};
    check_host_port(std::string_view(server).substr(sep + 3));
  }
  int methods = 0;
  methods += !o.user.empty() ? 1 : 0;
  methods += !o.token.empty() ? 1 : 0;
  methods += !o.creds_file.empty() ? 1 : 0;
  methods += !o.nkey_seed_file.empty() ? 1 : 0;
  if (methods > 1) throw BadOption{"more than one authentication method (user/password, token, creds_file, nkey_seed_file): give one"};
  if (!o.password.empty() && o.user.empty()) throw BadOption{"password without user"};
  if (!o.nkey_seed_file.empty() && o.nkey_public.empty()) throw BadOption{"nkey_seed_file needs nkey_public"};
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) throw BadOption{"tls_cert_file and tls_key_file go together"};
  if (o.reconnect_buffer_bytes > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    throw BadOption{"reconnect_buffer_bytes: at most " + std::to_string(std::numeric_limits<int>::max())};
  }
}

}  // namespace

NatsOptions nats_options_from_config(const TransportConfig& config) {
  NatsOptions options;
  try {
    // config.options first, so the URL wins.
    if (!config.options.is_null()) {
      if (!config.options.is_object()) throw BadOption{"options: expected a JSON object"};
      for (const auto& [key, value] : config.options.items()) apply(options, key, value, "option");
    }
    apply_url(options, config.url);
    check(options);
  } catch (const BadOption& bad) {
    throw TransportError("nats url \"" + redact_url(config.url) + "\": " + bad.why);
  }
  return options;
}

void validate_nats_options(const NatsOptions& options) {
  try {
    check(options);
  } catch (const BadOption& bad) {
    throw TransportError("nats options: " + bad.why);
  }
}

}  // namespace notifications
