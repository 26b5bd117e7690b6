// Server-Sent Events fan-out (issue 19): one notifier's events streamed by an EventStream through
// MetricsServer's GET /events to N clients on real loopback TCP sockets, all in one process. One
// JSON line per client count:
//
//   {"bench":"sse_fanout","batch_scheduling":true,"clients":N,"rate":R,"events":K,"burst_events":B,
//    "events_per_s":...,"p99_ms":...,"cpu_us_per_event_per_client":...,
//    "reader_cpu_us_per_event_per_client":...,"burst_cpu_us_per_event_per_client":...,
//    "instrument_p99_us":...,"instrument_p99_us_memory_bridge":...,
//    "instrument_p99_ratio_to_memory_bridge":...,
//    "instrument_p99_us_no_clients":...,"instrument_p50_us":...,"instrument_p50_us_no_clients":...,
//    "lost":0,"dropped":{"events":0,"slow":0,"write":0}}
//
// Set-up per line: a Notifier, an EventStream (pattern "bench.>", max_connections N + 8,
// replay_events 16, client and dispatch queues larger than the burst, so that nothing is dropped
// for being slow), and a MetricsServer on 127.0.0.1:0 serving it (with a BridgeMetrics holding no
// bridge). The benchmark opens the N clients itself: plain POSIX sockets, each sending
// "GET /events?pattern=bench.%3E HTTP/1.1", all read by ONE epoll thread (the "reader") that
// decodes chunked transfer encoding should the server use it (MetricsServer does not) and
// parses the SSE frames just enough to find each `data:` line and the payload's "t" (the
// steady_clock ns at which the event was instrumented), counting frames per client. Events are
// instant events "bench.tick" with payload {"t": <steady_clock ns>}, instrumented from the main
// thread.
//
// Four phases, in this order, in the same process:
//   0. reference: the same K events at R events/s through a Bridge forwarding to memory:// (no
//      stream): instrument_p99_us_memory_bridge, the send-path reference of issue 20's goal 1
//      (instrument p99 while forwarding at most 2x it); the ratio is phase 3's p99 over it.
//   1. no clients: the stream is started, nobody is connected; K events at R events/s (the
//      instrumenting thread sleeps until each event's due time). instrument_p99_us_no_clients is
//      the p99 of these instrument() calls (each timed with two steady_clock reads), and
//      instrument_p50_us_no_clients their median.
//   2. burst: the N clients connected (the stream's health() says N connections and every client
//      read its response headers), B events instrumented flat out. events_per_s = B / (time from
//      the first instrument() to the moment the last client received the last event): events per
//      second that EVERY client received, i.e. the fan-out throughput (frames per second on the
//      wire are N times that). burst_cpu_us_per_event_per_client: process CPU time over the
//      same span / (B * N), what a frame costs when frames come in batches.
//   3. paced: K events at R events/s, as in phase 1, with the N clients streaming.
//      instrument_p99_us, instrument_p50_us: those instrument() calls. p99_ms: p99 of instrument-to-receive
//      latency (the reader's steady_clock read after the read() that brought the frame, minus the
//      payload's "t") over all N * K (client, event) pairs. cpu_us_per_event_per_client: process
//      CPU time (CLOCK_PROCESS_CPUTIME_ID) from the first instrument() of the phase until every
//      client received its last event, divided by K * N. It includes the reader (the benchmark's
//      own client side, in the same process): reader_cpu_us_per_event_per_client is the reader
//      thread's share (its thread CPU clock), so the server's share is the difference. At these
//      rates each event wakes the dispatcher, every client's server thread and the reader:
//      the figure is mostly wake-ups and system calls, more than the burst's per-frame cost.
//
// The default rate is min(1000, 20000 / N) events/s (so 1000, 200 and 20 for 1, 100 and 1000
// clients: at most 20,000 frames a second, under half of what the burst reached with 1,000
// clients on two shared cores, so that p99_ms is the pipeline's delay and not a backlog) and
// K = R * --seconds (default 20); the burst is B = max(100, --burst-frames / N) events (default
// 200,000 frames). "lost" counts the (client, event) pairs that never arrived within the time
// bounds; "dropped" is what health() counted: dropped_events (dispatch queue full),
// dropped_slow (client queue full), dropped_write (write deadline passed). Every loop is bounded
// by --timeout-s (default 60) per phase; a line with anything lost or dropped makes the exit
// status 1.
//
// 1,000 connections need about 2,100 descriptors (ours, the server's): RLIMIT_NOFILE is raised to
// its hard limit at start.
//
// Usage: bench_sse [clients ...] [--rate R] [--seconds S] [--burst-frames F] [--timeout-s T]
//        (clients default: 1 100 1000)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "notifications/bridge.hpp"
#include "notifications/event_stream.hpp"
#include "notifications/notifier.hpp"
#include "notifications/prometheus.hpp"

namespace n = notifications;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

struct Args {
  std::vector<int> clients;
  double rate = 0;  // 0: min(1000, 20000 / N)
  double seconds = 20;
  int burst_frames = 200000;
  int timeout_s = 60;
  bool batch_scheduling = true;  // EventStreamOptions::batch_scheduling; --default-scheduling: false
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::int64_t cpu_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The p-th quantile of `values` (sorted in place); 0 when empty.
double percentile(std::vector<std::int64_t>& values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto index = std::min(values.size() - 1, static_cast<std::size_t>(p * static_cast<double>(values.size())));
  return static_cast<double>(values[index]);
}

void raise_fd_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  limit.rlim_cur = limit.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) std::perror("bench_sse: setrlimit(RLIMIT_NOFILE)");
}

// One client connection as the reader sees it.
struct Client {
  int fd = -1;
  bool headers_done = false;
  bool ok = false;  // status 200
  bool chunked = false;
  bool eof = false;
  std::string head;          // the response until its headers end
  std::string chunk_line;    // a chunk-size line being read
  std::uint64_t chunk_left = 0;
  int chunk_state = 0;       // 0: size line, 1: data, 2: the CRLF after the data, 3: the last chunk was read
  std::string line;          // an SSE line not finished yet
  std::uint64_t frames = 0;  // data lines carrying the bench payload
};

// The reader: one thread, epoll over every client socket.
class Reader {
 public:
  explicit Reader(std::size_t clients) : clients_(clients) {}
  ~Reader() { stop(); }

  std::vector<Client>& clients() { return clients_; }

  // Registers every client's socket (opened before) and starts the thread.
  bool start() {
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) return false;
    for (std::size_t i = 0; i < clients_.size(); ++i) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.u64 = i;
      if (epoll_ctl(epoll_, EPOLL_CTL_ADD, clients_[i].fd, &ev) != 0) return false;
    }
    thread_ = std::thread([this] { run(); });
    pthread_getcpuclockid(thread_.native_handle(), &cpu_clock_);
    return true;
  }

  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    if (epoll_ >= 0) close(epoll_);
    epoll_ = -1;
  }

  std::int64_t thread_cpu_ns() const { return thread_.joinable() ? cpu_ns(cpu_clock_) : 0; }

  // Set while the paced phase's latencies are to be kept (between phases, nothing is in flight).
  std::atomic<bool> record{false};
  std::atomic<std::uint64_t> frames{0};        // bench frames received, all clients together
  std::atomic<std::int64_t> last_frame_ns{0};  // when the latest one was received
  std::atomic<std::size_t> headers_ok{0};      // clients whose response said 200
  std::atomic<std::size_t> headers_bad{0};     // clients whose response said anything else
  std::atomic<std::size_t> closed{0};          // clients the server closed
  std::vector<std::int64_t> latencies;         // reader thread only while running

 private:
  void run() {
    std::vector<epoll_event> events(256);
    std::vector<char> buffer(64 * 1024);
    while (!stop_.load(std::memory_order_relaxed)) {
      const int ready = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 50);
      if (ready < 0) {
        if (errno == EINTR) continue;
        std::perror("bench_sse: epoll_wait");
        return;
      }
      for (int e = 0; e < ready; ++e) {
        Client& client = clients_[events[e].data.u64];
        const ssize_t got = ::read(client.fd, buffer.data(), buffer.size());
        if (got > 0) {
          feed(client, std::string_view(buffer.data(), static_cast<std::size_t>(got)), now_ns());
        } else if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          epoll_ctl(epoll_, EPOLL_CTL_DEL, client.fd, nullptr);
          client.eof = true;
          closed.fetch_add(1);
        }
      }
    }
  }

  // Bytes from the socket: the response head, then the body (chunked or not).
  void feed(Client& client, std::string_view bytes, std::int64_t received_ns) {
    if (!client.headers_done) {
      client.head.append(bytes);
      const auto end = client.head.find("\r\n\r\n");
      if (end == std::string::npos) return;
      client.headers_done = true;
      client.ok = client.head.compare(0, 12, "HTTP/1.1 200") == 0 || client.head.compare(0, 12, "HTTP/1.0 200") == 0;
      std::string lower = client.head.substr(0, end);
      std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      client.chunked = lower.find("transfer-encoding: chunked") != std::string::npos;
      (client.ok ? headers_ok : headers_bad).fetch_add(1);
      if (!client.ok) std::fprintf(stderr, "bench_sse: a client was answered: %s\n", client.head.substr(0, client.head.find("\r\n")).c_str());
      const std::string rest = client.head.substr(end + 4);
      client.head.clear();
      client.head.shrink_to_fit();
      if (!rest.empty()) feed(client, rest, received_ns);
      return;
    }
    if (!client.chunked) {
      body(client, bytes, received_ns);
      return;
    }
    while (!bytes.empty()) {
      switch (client.chunk_state) {
        case 0: {  // "<hex size>[;ext]\r\n"
          const auto newline = bytes.find('\n');
          if (newline == std::string_view::npos) {
            client.chunk_line.append(bytes);
            return;
          }
          client.chunk_line.append(bytes.substr(0, newline));
          bytes.remove_prefix(newline + 1);
          client.chunk_left = std::strtoull(client.chunk_line.c_str(), nullptr, 16);
          client.chunk_line.clear();
          client.chunk_state = client.chunk_left == 0 ? 3 : 1;
          break;
        }
        case 1: {
          const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(client.chunk_left, bytes.size()));
          body(client, bytes.substr(0, take), received_ns);
          bytes.remove_prefix(take);
          client.chunk_left -= take;
          if (client.chunk_left == 0) client.chunk_state = 2;
          break;
        }
        case 2: {  // the CRLF closing a chunk
          const auto newline = bytes.find('\n');
          if (newline == std::string_view::npos) return;
          bytes.remove_prefix(newline + 1);
          client.chunk_state = 0;
          break;
        }
        default:
          return;  // after the last chunk: trailers, ignored
      }
    }
  }

  // Body bytes: SSE lines.
  void body(Client& client, std::string_view bytes, std::int64_t received_ns) {
    while (!bytes.empty()) {
      const auto newline = bytes.find('\n');
      if (newline == std::string_view::npos) {
        client.line.append(bytes);
        return;
      }
      if (client.line.empty()) {
        line(client, bytes.substr(0, newline), received_ns);
      } else {
        client.line.append(bytes.substr(0, newline));
        line(client, client.line, received_ns);
        client.line.clear();
      }
      bytes.remove_prefix(newline + 1);
    }
  }

  // One SSE line: only "data:" lines whose envelope's payload holds "t" count.
  void line(Client& client, std::string_view text, std::int64_t received_ns) {
    if (text.substr(0, 5) != "data:") return;
    constexpr std::string_view marker = "\"payload\":{\"t\":";
    const auto t = text.find(marker);
    if (t == std::string_view::npos) return;
    const std::string digits(text.substr(t + marker.size(), 24));
    const std::int64_t sent_ns = std::strtoll(digits.c_str(), nullptr, 10);
    ++client.frames;
    if (record.load(std::memory_order_acquire)) latencies.push_back(received_ns - sent_ns);
    last_frame_ns.store(received_ns, std::memory_order_relaxed);
    frames.fetch_add(1, std::memory_order_release);
  }

  std::vector<Client> clients_;
  int epoll_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  clockid_t cpu_clock_{};
};

// A connected socket that sent the request; -1 (and a message) when it could not.
int open_client(std::uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    std::perror("bench_sse: socket");
    return -1;
  }
  timeval timeout{5, 0};  // bounds connect() and the request's send()
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    std::perror("bench_sse: connect");
    close(fd);
    return -1;
  }
  const std::string_view request = "GET /events?pattern=bench.%3E HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    std::perror("bench_sse: send");
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

// Instruments `count` events at `rate` events/s (sleeping until each one is due); returns each
// instrument() call's duration in ns.
std::vector<std::int64_t> instrument_paced(n::Notifier& notifier, std::size_t count, double rate) {
  std::vector<std::int64_t> durations;
  durations.reserve(count);
  nlohmann::json payload = {{"t", 0}};
  const auto first = Clock::now();
  for (std::size_t i = 0; i < count; ++i) {
    std::this_thread::sleep_until(first + std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 * static_cast<double>(i) / rate)));
    const std::int64_t t0 = now_ns();
    payload["t"] = t0;
    notifier.instrument("bench.tick", payload);
    durations.push_back(now_ns() - t0);
  }
  return durations;
}

// Waits until the reader counted `target` frames, or the deadline; true when they all came.
bool wait_frames(const Reader& reader, std::uint64_t target, Clock::time_point deadline) {
  while (reader.frames.load(std::memory_order_acquire) < target) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(200us);
  }
  return true;
}

// One line for `clients` clients; false when something was lost or dropped.
bool run(const Args& args, int clients) {
  const double rate = args.rate > 0 ? args.rate : std::min(1000.0, 20000.0 / clients);
  const auto paced_events = std::max<std::size_t>(1, static_cast<std::size_t>(rate * args.seconds));
  const auto burst_events = static_cast<std::size_t>(std::max(100, args.burst_frames / clients));
  const auto timeout = std::chrono::seconds(args.timeout_s);

  // 0. The send-path reference (issue 20, goal 1): the same paced events through a Bridge that
  // forwards them to memory://, no stream.
  double instrument_p99_memory_bridge_us = 0;
  {
    n::Notifier forwarding;
    n::BridgeConfig config;
    config.url = "memory://bench-sse-" + std::to_string(::getpid());
    config.subscribe = {};
    auto bridge = n::make_bridge(forwarding, config);
    bridge->start();
    std::vector<std::int64_t> durations = instrument_paced(forwarding, paced_events, rate);
    instrument_p99_memory_bridge_us = percentile(durations, 0.99) / 1e3;
    bridge->shutdown(std::chrono::seconds(5));
  }

  n::Notifier notifier;
  n::EventStreamOptions options;
  options.pattern = n::Pattern("bench.>");
  options.max_connections = static_cast<std::size_t>(clients) + 8;
  options.replay_events = 16;
  options.client_queue = std::max(burst_events, paced_events) + 64;
  options.dispatch_queue = std::max<std::size_t>(65536, burst_events + paced_events);
  options.write_deadline = std::chrono::milliseconds(args.timeout_s * 1000);
  options.batch_scheduling = args.batch_scheduling;
  auto stream = std::make_shared<n::EventStream>(notifier, options);
  stream->start();
  auto metrics = std::make_shared<n::prometheus::BridgeMetrics>();  // no bridge: the server needs one
  n::prometheus::MetricsServerOptions server_options;
  server_options.address = "127.0.0.1";
  server_options.port = 0;
  server_options.threads = 1;
  server_options.events = stream;
  auto server = std::make_unique<n::prometheus::MetricsServer>(metrics, server_options);

  // 1. No clients.
  std::vector<std::int64_t> alone = instrument_paced(notifier, paced_events, rate);
  const double instrument_p99_no_clients_us = percentile(alone, 0.99) / 1e3;
  const double instrument_p50_no_clients_us = percentile(alone, 0.5) / 1e3;

  // The clients: connected and requested one by one, then read by the reader.
  Reader reader(static_cast<std::size_t>(clients));
  const auto connect_deadline = Clock::now() + timeout;
  for (auto& client : reader.clients()) {
    client.fd = Clock::now() < connect_deadline ? open_client(server->port()) : -1;
    if (client.fd < 0) {
      std::fprintf(stderr, "bench_sse: could not open all %d clients\n", clients);
      for (auto& opened : reader.clients()) {
        if (opened.fd >= 0) close(opened.fd);
      }
      return false;
    }
  }
  if (!reader.start()) {
    std::perror("bench_sse: epoll");
    reader.stop();
    for (auto& client : reader.clients()) close(client.fd);
    return false;
  }
  while ((reader.headers_ok.load() + reader.headers_bad.load() < static_cast<std::size_t>(clients) ||
          stream->health().value("connections", 0) < clients) &&
         Clock::now() < connect_deadline) {
    std::this_thread::sleep_for(5ms);
  }
  const std::size_t registered = stream->health().value("connections", std::size_t{0});
  bool complete = reader.headers_ok.load() == static_cast<std::size_t>(clients) && registered == static_cast<std::size_t>(clients);
  if (!complete) {
    std::fprintf(stderr, "bench_sse: %d clients: %zu answered 200, %zu otherwise, %zu registered by the stream\n",
                 clients, reader.headers_ok.load(), reader.headers_bad.load(), registered);
  }

  // 2. Burst, flat out.
  std::uint64_t expected = 0;
  double events_per_s = 0;
  double burst_cpu_us_per_pair = 0;
  if (complete) {
    nlohmann::json payload = {{"t", 0}};
    const std::int64_t cpu_before = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
    const std::int64_t first = now_ns();
    for (std::size_t i = 0; i < burst_events; ++i) {
      payload["t"] = now_ns();
      notifier.instrument("bench.tick", payload);
    }
    expected += burst_events * static_cast<std::uint64_t>(clients);
    complete = wait_frames(reader, expected, Clock::now() + timeout);
    burst_cpu_us_per_pair = static_cast<double>(cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu_before) / 1e3 /
                            (static_cast<double>(burst_events) * clients);
    if (complete) {
      events_per_s = static_cast<double>(burst_events) / (static_cast<double>(reader.last_frame_ns.load() - first) / 1e9);
    } else {
      std::fprintf(stderr, "bench_sse: %d clients: burst: %llu of %llu frames arrived\n", clients,
                   static_cast<unsigned long long>(reader.frames.load()), static_cast<unsigned long long>(expected));
    }
  }

  // 3. Paced, with the clients streaming.
  double instrument_p99_us = 0;
  double instrument_p50_us = 0;
  double cpu_us_per_pair = 0;
  double reader_cpu_us_per_pair = 0;
  if (complete) {
    reader.latencies.reserve(paced_events * static_cast<std::size_t>(clients));
    reader.record.store(true);
    const std::int64_t cpu_before = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
    const std::int64_t reader_cpu_before = reader.thread_cpu_ns();
    std::vector<std::int64_t> streaming = instrument_paced(notifier, paced_events, rate);
    expected += paced_events * static_cast<std::uint64_t>(clients);
    complete = wait_frames(reader, expected, Clock::now() + timeout);
    const double pairs = static_cast<double>(paced_events) * clients;
    cpu_us_per_pair = static_cast<double>(cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu_before) / 1e3 / pairs;
    reader_cpu_us_per_pair = static_cast<double>(reader.thread_cpu_ns() - reader_cpu_before) / 1e3 / pairs;
    instrument_p99_us = percentile(streaming, 0.99) / 1e3;
    instrument_p50_us = percentile(streaming, 0.5) / 1e3;
    if (!complete) {
      std::fprintf(stderr, "bench_sse: %d clients: paced: %llu of %llu frames arrived\n", clients,
                   static_cast<unsigned long long>(reader.frames.load()), static_cast<unsigned long long>(expected));
    }
  }
  const nlohmann::json health = stream->health();

  // The end: the stream says "shutdown" to every client while the reader still reads, then the
  // reader stops and the sockets close.
  stream->shutdown(5s);
  reader.stop();
  std::uint64_t received = 0;
  for (auto& client : reader.clients()) {
    received += client.frames;
    close(client.fd);
  }
  server.reset();
  std::vector<std::int64_t>& latencies = reader.latencies;
  const double p99_ms = percentile(latencies, 0.99) / 1e6;

  // `expected`: the frames of the events instrumented while the clients were connected.
  const std::uint64_t lost = expected > received ? expected - received : 0;
  const auto count = [&](const char* key) { return health.value(key, std::uint64_t{0}); };
  const nlohmann::json dropped = {{"events", count("dropped_events")}, {"slow", count("dropped_slow")}, {"write", count("dropped_write")}};
  std::printf(
      "{\"bench\":\"sse_fanout\",\"batch_scheduling\":%s,\"clients\":%d,\"rate\":%.0f,\"events\":%zu,\"burst_events\":%zu,"
      "\"events_per_s\":%.0f,\"p99_ms\":%.3f,\"cpu_us_per_event_per_client\":%.3f,"
      "\"reader_cpu_us_per_event_per_client\":%.3f,\"burst_cpu_us_per_event_per_client\":%.3f,"
      "\"instrument_p99_us\":%.3f,\"instrument_p99_us_memory_bridge\":%.3f,\"instrument_p99_ratio_to_memory_bridge\":%.2f,"
      "\"instrument_p99_us_no_clients\":%.3f,\"instrument_p50_us\":%.3f,\"instrument_p50_us_no_clients\":%.3f,"
      "\"lost\":%llu,\"dropped\":%s}\n",
      args.batch_scheduling ? "true" : "false", clients, rate, paced_events, burst_events, events_per_s, p99_ms, cpu_us_per_pair, reader_cpu_us_per_pair,
      burst_cpu_us_per_pair, instrument_p99_us, instrument_p99_memory_bridge_us,
      instrument_p99_memory_bridge_us > 0 ? instrument_p99_us / instrument_p99_memory_bridge_us : 0.0,
      instrument_p99_no_clients_us, instrument_p50_us,
      instrument_p50_no_clients_us, static_cast<unsigned long long>(lost), dropped.dump().c_str());
  std::fflush(stdout);
  return complete && lost == 0 && count("dropped_events") + count("dropped_slow") + count("dropped_write") == 0;
}

bool parse(int argc, char** argv, Args& args) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--rate" && has_value) {
      args.rate = std::atof(argv[++i]);
    } else if (arg == "--seconds" && has_value) {
      args.seconds = std::atof(argv[++i]);
    } else if (arg == "--burst-frames" && has_value) {
      args.burst_frames = std::atoi(argv[++i]);
    } else if (arg == "--timeout-s" && has_value) {
      args.timeout_s = std::atoi(argv[++i]);
    } else if (arg == "--default-scheduling") {
      args.batch_scheduling = false;
    } else if (!arg.empty() && arg[0] != '-' && std::atoi(arg.c_str()) > 0) {
      args.clients.push_back(std::atoi(arg.c_str()));
    } else {
      return false;
    }
  }
  if (args.clients.empty()) args.clients = {1, 100, 1000};
  return args.seconds > 0 && args.burst_frames > 0 && args.timeout_s > 0 && args.rate >= 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse(argc, argv, args)) {
    std::fprintf(stderr, "usage: bench_sse [clients ...] [--rate R] [--seconds S] [--burst-frames F] [--timeout-s T] [--default-scheduling]\n");
    return 2;
  }
  raise_fd_limit();
  spdlog::set_level(spdlog::level::warn);
  bool ok = true;
  for (const int clients : args.clients) {
    try {
      ok = run(args, clients) && ok;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_sse: %d clients: %s\n", clients, e.what());
      ok = false;
    }
  }
  return ok ? 0 : 1;
}
