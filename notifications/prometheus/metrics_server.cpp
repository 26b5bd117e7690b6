// MetricsServer: civetweb (C API) serving /metrics, /health and, with an EventStream, /events and
// the page at / from one embedded server. prometheus-cpp's Exposer embeds the same server but
// serves only metrics paths; using civetweb directly keeps one listening socket and one set of
// threads for all of them (docs/metrics.md, docs/event_stream.md).
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

#include <civetweb.h>

#include "event_page.hpp"
#include "notifications/prometheus.hpp"

namespace notifications::prometheus {

namespace {

enum class Family { v4, v6 };

// The address's family; throws MetricsError when it is not a numeric IPv4 or IPv6 address.
Family family_of(const std::string& address, bool& loopback) {
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, address.c_str(), &v4) == 1) {
    loopback = (ntohl(v4.s_addr) >> 24) == 127;
    return Family::v4;
  }
  if (inet_pton(AF_INET6, address.c_str(), &v6) == 1) {
    loopback = IN6_IS_ADDR_LOOPBACK(&v6);
    return Family::v6;
  }
  throw MetricsError("MetricsServerOptions::address \"" + address +
                     "\" is not a numeric IPv4 or IPv6 address (e.g. 127.0.0.1 or ::1)");
}

// `extra_headers`: more header lines, each ending with \r\n. A HEAD request gets no body.
void respond(mg_connection* connection, int status, const char* reason, std::string_view content_type,
             std::string_view body, bool head, std::string_view extra_headers = "") {
  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: %.*s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
            "%.*sConnection: close\r\n\r\n",
            status, reason, static_cast<int>(content_type.size()), content_type.data(), body.size(),
            static_cast<int>(extra_headers.size()), extra_headers.data());
  if (!head && !body.empty()) mg_write(connection, body.data(), body.size());
}

std::string_view method_of(mg_connection* connection) {
  const mg_request_info* request = mg_get_request_info(connection);
  return request != nullptr && request->request_method != nullptr ? request->request_method : "";
}

// True for GET and HEAD (`head` set for HEAD); otherwise answers 405.
bool readable(mg_connection* connection, bool& head) {
  const std::string_view method = method_of(connection);
  head = method == "HEAD";
  if (method == "GET" || head) return true;
  respond(connection, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n", false,
          "Allow: GET, HEAD\r\n");
  return false;
}

// Compares in time that depends on the lengths only, not on where the texts differ.
bool same_secret(std::string_view given, std::string_view expected) {
  if (given.size() != expected.size()) return false;
  unsigned char difference = 0;
  for (std::size_t i = 0; i < given.size(); ++i) {
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  }
  return difference == 0;
}

// The query member `name`, URL-decoded: nullopt when absent; throws std::length_error when longer
// than `limit` bytes.
std::optional<std::string> query_member(const mg_request_info* request, const char* name, std::size_t limit) {
  if (request == nullptr || request->query_string == nullptr) return std::nullopt;
  std::string value(limit + 1, '\0');
  const int length =
      mg_get_var(request->query_string, std::strlen(request->query_string), name, value.data(), value.size());
  if (length == -1) return std::nullopt;
  if (length < 0 || static_cast<std::size_t>(length) > limit) {
    throw std::length_error(std::string("the query member \"") + name + "\" is longer than " + std::to_string(limit) +
                            " bytes");
  }
  value.resize(static_cast<std::size_t>(length));
  return value;
}

}  // namespace

struct MetricsServer::Server {
  std::shared_ptr<BridgeMetrics> metrics;
  std::shared_ptr<EventStream> events;
  std::string bearer_token;
  bool loopback = true;  // the address listened on is a loopback one
  std::string host;  // for url(): the address, in brackets for IPv6
  std::string address;  // as given, without brackets
  Family family = Family::v4;
  mg_context* context = nullptr;
  pid_t owner = ::getpid();  // the process whose threads serve `context`

  // True when no token is configured or the request carries it; otherwise answers 401.
  bool authorized(mg_connection* connection) const {
    if (bearer_token.empty()) return true;
    const char* header = mg_get_header(connection, "Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (header != nullptr) {
      const std::string_view given = header;
      if (given.size() > kBearer.size() && given.substr(0, kBearer.size()) == kBearer &&
          same_secret(given.substr(kBearer.size()), bearer_token)) {
        return true;
      }
    } else {
      try {
        const auto token = query_member(mg_get_request_info(connection), "access_token", 1024);
        if (token && same_secret(*token, bearer_token)) return true;
      } catch (const std::length_error&) {
      }
    }
    respond(connection, 401, "Unauthorized", "text/plain; charset=utf-8",
            "a bearer token is required, and this is not it\n", method_of(connection) == "HEAD", "WWW-Authenticate: Bearer\r\n");
    return false;
  }

  // Without a token, a loopback server answers only requests that name a loopback host: a web
  // page elsewhere whose name an attacker points at 127.0.0.1 (DNS rebinding) sends its own
  // name, and gets 403 instead of the events. Otherwise answers 403.
  bool host_allowed(mg_connection* connection) const {
    if (!bearer_token.empty() || !loopback) return true;
    const char* header = mg_get_header(connection, "Host");
    if (header == nullptr) return true;  // HTTP/1.0 without Host: not a browser
    std::string_view host = header;
    if (!host.empty() && host.front() == '[') {
      host = host.substr(0, host.find(']') == std::string_view::npos ? host.size() : host.find(']') + 1);
    } else if (const std::size_t colon = host.rfind(':'); colon != std::string_view::npos) {
      host = host.substr(0, colon);
    }
    in_addr v4{};
    const std::string text(host);
    if (host == "localhost" || host == "[::1]" ||
        (inet_pton(AF_INET, text.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127)) {
      return true;
    }
    respond(connection, 403, "Forbidden", "text/plain; charset=utf-8",
            "this server answers requests for a loopback host name only (localhost, 127.0.0.1, [::1]); "
            "set a bearer token to serve others\n",
            method_of(connection) == "HEAD");
    return false;
  }

  bool admitted(mg_connection* connection) const { return authorized(connection) && host_allowed(connection); }

  static int serve_page(mg_connection* connection, void* data) {
    auto* self = static_cast<Server*>(data);
    if (!self->admitted(connection)) return 401;
    bool head = false;
    if (!readable(connection, head)) return 405;
    const mg_request_info* request = mg_get_request_info(connection);
    const std::string_view uri = request != nullptr && request->local_uri != nullptr ? request->local_uri : "";
    if (uri != "/" && uri != "/index.html") {
      respond(connection, 404, "Not Found", "text/plain; charset=utf-8", "not found\n", head);
      return 404;
    }
    respond(connection, 200, "OK", "text/html; charset=utf-8", detail::event_page_html(), head);
    return 200;
  }

  static int serve_events(mg_connection* connection, void* data) {
    auto* self = static_cast<Server*>(data);
    if (!self->admitted(connection)) return 401;
    bool head = false;
    if (!readable(connection, head)) return 405;
    if (head) {
      respond(connection, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET\n", true, "Allow: GET\r\n");
      return 405;
    }
    const mg_request_info* request = mg_get_request_info(connection);
    std::unique_ptr<EventStream::Connection> stream;
    try {
      const std::string pattern = query_member(request, "pattern", 1024).value_or("");
      std::string last_event_id;
      if (const char* header = mg_get_header(connection, "Last-Event-ID"); header != nullptr) {
        last_event_id = header;
      } else {
        last_event_id = query_member(request, "last_event_id", 1024).value_or("");
      }
      stream = self->events->connect(pattern, last_event_id);
    } catch (const EventStreamRefused& e) {
      const int status = e.status();
      // A browser's EventSource does not reconnect after a 503 by itself; Retry-After says when
      // another client may.
      const std::string retry = "Retry-After: " +
                                std::to_string(std::max<long long>(1, (self->events->options().reconnect_delay.count() + 999) / 1000)) +
                                "\r\n";
      respond(connection, status, status == 400 ? "Bad Request" : "Service Unavailable", "text/plain; charset=utf-8",
              std::string(e.what()) + "\n", false, status == 503 ? std::string_view(retry) : std::string_view(""));
      return status;
    } catch (const std::length_error& e) {
      respond(connection, 400, "Bad Request", "text/plain; charset=utf-8", std::string(e.what()) + "\n", false);
      return 400;
    } catch (const std::exception& e) {  // out of memory: never through civetweb's C frames
      respond(connection, 500, "Internal Server Error", "text/plain; charset=utf-8", "the stream failed\n", false);
      return 500;
    }
    mg_printf(connection,
              "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n"
              "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n");
    try {
      stream->stream([connection](std::string_view bytes) {
        return mg_write(connection, bytes.data(), bytes.size()) == static_cast<int>(bytes.size());
      });
    } catch (const std::exception&) {  // the answer has begun: the connection just ends
    }
    return 200;
  }

  static int serve_metrics(mg_connection* connection, void* data) {
    auto* self = static_cast<Server*>(data);
    if (!self->admitted(connection)) return 401;
    bool head = false;
    if (!readable(connection, head)) return 405;
    try {
      respond(connection, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", self->metrics->scrape(), head);
      return 200;
    } catch (const std::exception& e) {
      respond(connection, 500, "Internal Server Error", "text/plain; charset=utf-8", std::string(e.what()) + "\n", head);
      return 500;
    }
  }

  static int serve_health(mg_connection* connection, void* data) {
    auto* self = static_cast<Server*>(data);
    if (!self->admitted(connection)) return 401;
    bool head = false;
    if (!readable(connection, head)) return 405;
    try {
      nlohmann::json health = self->metrics->health();
      // The stream's counters (its drops among them) beside the bridges'; they do not decide
      // "healthy": a dropped browser is the browser's problem, not the service's.
      if (self->events) health["event_stream"] = self->events->health();
      const bool healthy = health.value("healthy", false);
      respond(connection, healthy ? 200 : 503, healthy ? "OK" : "Service Unavailable", "application/json",
              health.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", head);
      return healthy ? 200 : 503;
    } catch (const std::exception& e) {
      respond(connection, 500, "Internal Server Error", "text/plain; charset=utf-8", std::string(e.what()) + "\n", head);
      return 500;
    }
  }
};

MetricsServer::MetricsServer(std::shared_ptr<BridgeMetrics> metrics, MetricsServerOptions options)
    : server_(std::make_unique<Server>()) {
  if (!metrics) throw MetricsError("MetricsServer: the BridgeMetrics is null");
  if (options.threads < 1) {
    throw MetricsError("MetricsServerOptions::threads is " + std::to_string(options.threads) + "; at least 1");
  }
  bool loopback = false;
  const Family family = family_of(options.address, loopback);
  if (!loopback && !options.allow_non_loopback) {
    throw MetricsError("MetricsServerOptions::address \"" + options.address +
                       "\" is not a loopback address; metrics and health name hosts, subjects and errors, so "
                       "listening there needs MetricsServerOptions::allow_non_loopback = true");
  }
  if (!loopback && options.events && options.bearer_token.empty()) {
    throw MetricsError("MetricsServerOptions::address \"" + options.address +
                       "\" is not a loopback address and the server streams events: that needs "
                       "MetricsServerOptions::bearer_token");
  }
  // civetweb's library set-up is not thread-safe, and mg_start2() runs it when it has not run yet:
  // once here, so that servers started on several threads at once never race on it.
  static std::once_flag civetweb_ready;
  std::call_once(civetweb_ready, [] { mg_init_library(0); });
  if (family == Family::v6 && mg_check_feature(8) == 0) {  // 8: IPv6 (civetweb.h)
    throw MetricsError("MetricsServerOptions::address \"" + options.address +
                       "\" is IPv6, and this civetweb was built without IPv6 (Debian 12's is): use an IPv4 address");
  }
  server_->metrics = std::move(metrics);
  server_->events = options.events;
  server_->bearer_token = options.bearer_token;
  server_->loopback = loopback;
  server_->host = family == Family::v6 ? "[" + options.address + "]" : options.address;
  server_->address = options.address;
  server_->family = family;
  const std::string ports = server_->host + ":" + std::to_string(options.port);
  // Each event-stream client holds a thread while connected; the others serve everything else.
  // The socket timeout bounds each write: an event-stream client that takes no bytes for that
  // long is dropped (EventStreamOptions::write_deadline).
  const std::size_t stream_threads = options.events ? options.events->options().max_connections : 0;
  const std::string threads = std::to_string(static_cast<std::size_t>(options.threads) + stream_threads);
  const std::string timeout =
      options.events ? std::to_string(options.events->options().write_deadline.count()) : std::string("10000");
  const char* configuration[] = {"listening_ports", ports.c_str(), "num_threads", threads.c_str(),
                                 "request_timeout_ms", timeout.c_str(),
                                 // An event is written as soon as it is dispatched, not held back
                                 // until the client acknowledges the previous one (Nagle).
                                 "tcp_nodelay", "1", nullptr};
  mg_callbacks callbacks{};
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = nullptr;
  init.configuration_options = configuration;
  char error_text[256] = {};
  unsigned error_code = 0;
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof error_text;
  // civetweb may set SIGCHLD to be ignored (for its CGI, which this server does not use): that
  // would make the application's children reaped by the kernel and its waitpid() fail. The
  // application's disposition is put back.
  struct sigaction child_action {};
  const bool saved = ::sigaction(SIGCHLD, nullptr, &child_action) == 0;
  server_->context = mg_start2(&init, &error);
  if (saved) ::sigaction(SIGCHLD, &child_action, nullptr);
  if (server_->context == nullptr) {
    throw MetricsError("MetricsServer: cannot listen on " + ports + ": " +
                       (error_text[0] != '\0' ? std::string(error_text) : std::string("civetweb did not start")));
  }
  mg_set_request_handler(server_->context, "/metrics", &Server::serve_metrics, server_.get());
  mg_set_request_handler(server_->context, "/health", &Server::serve_health, server_.get());
  if (server_->events) {
    mg_set_request_handler(server_->context, "/events", &Server::serve_events, server_.get());
    mg_set_request_handler(server_->context, "/$", &Server::serve_page, server_.get());
    mg_set_request_handler(server_->context, "/index.html", &Server::serve_page, server_.get());
  }
  mg_server_port bound[4] = {};
  const int count = mg_get_server_ports(server_->context, 4, bound);
  if (count < 1 || bound[0].port <= 0) {
    mg_stop(server_->context);
    throw MetricsError("MetricsServer: started on " + ports + " but could not read the port it listens on");
  }
  port_ = static_cast<std::uint16_t>(bound[0].port);
}

namespace {

// One connection to the listening socket, closed at once (the server reads end of file from it).
// Any failure is ignored: the connection only wakes the server's accepting thread.
void knock(Family family, const std::string& address, std::uint16_t port) {
  const bool v6 = family == Family::v6;
  const int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (v6) {
    sockaddr_in6 to{};
    to.sin6_family = AF_INET6;
    to.sin6_port = htons(port);
    if (address == "::" || inet_pton(AF_INET6, address.c_str(), &to.sin6_addr) != 1) to.sin6_addr = in6addr_loopback;
    (void)::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  } else {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    if (address == "0.0.0.0" || inet_pton(AF_INET, address.c_str(), &to.sin_addr) != 1) {
      to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    (void)::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  }
  ::close(fd);
}

// mg_stop() without civetweb's wait: its accepting thread looks at the stop flag only between
// polls of the listening socket, and a poll lasts up to 2 s when no connection comes (civetweb's
// SOCKET_TIMEOUT_QUANTUM), so every stop took about 2 s. A second thread connects to the socket
// every 10 ms while mg_stop() runs (at most 300 times): the poll returns, and the accepting thread
// sees the flag. Without that thread (it could not be started) mg_stop() takes its 2 s.
void stop_promptly(mg_context* context, Family family, const std::string& address, std::uint16_t port) {
  std::mutex mutex;
  std::condition_variable stopped_changed;
  bool stopped = false;
  std::optional<std::thread> knocker;
  try {
    knocker.emplace([&] {
      std::unique_lock lock(mutex);
      for (int i = 0; i < 300 && !stopped; ++i) {
        if (stopped_changed.wait_for(lock, std::chrono::milliseconds(10), [&] { return stopped; })) break;
        lock.unlock();
        knock(family, address, port);
        lock.lock();
      }
    });
  } catch (const std::system_error&) {
    // no thread: the slow stop below
  }
  mg_stop(context);
  if (knocker) {
    {
      std::lock_guard lock(mutex);
      stopped = true;
    }
    stopped_changed.notify_all();
    knocker->join();
  }
}

}  // namespace

// In a forked child the server's threads do not exist: mg_stop() would wait for them for ever. The
// child leaves the context (and its copy of the listening socket) as they are, as the contract in
// prometheus.hpp says; so does the Server, whose handlers a context that never stops may name.
MetricsServer::~MetricsServer() {
  if (!server_ || server_->context == nullptr) return;
  if (server_->owner != ::getpid()) {
    (void)server_.release();
    return;
  }
  // The event-stream clients are held in their handlers until the stream ends them: first the
  // shutdown event, within the write deadline; then civetweb's threads can stop.
  if (server_->events) server_->events->shutdown(server_->events->options().write_deadline);
  stop_promptly(server_->context, server_->family, server_->address, port_);
}

std::string MetricsServer::url() const { return "http://" + server_->host + ":" + std::to_string(port_); }

}  // namespace notifications::prometheus
