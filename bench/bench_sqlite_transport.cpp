// The sqlite:// transport (issue 14) between two processes, next to a raw SQLite pair doing the
// same work without the bus, every baseline measured in the same run. One JSON line with the
// medians over the repetitions, a detail line, then one line per goal with PASS or MISS:
//
//   {"bench":"sqlite_transport","events_per_s":...,"raw_events_per_s":...,"p50_ms":...,
//    "raw_p50_ms":...,"idle_wakeups_per_s":...}
//   {"bench":"sqlite_transport_detail",...}        the figures behind them (p99s, burst latencies,
//                                                  the transport's own poll counters, ...)
//   {"bench":"sqlite_transport_goal","goal":"...","value":...,"limit":...,"result":"PASS"|"MISS"}
//
// Every pair is two processes: this program is the producer, and it starts itself again
// (posix_spawn of /proc/self/exe with --role ...) as the consumer, which reports through a pipe.
// Both read CLOCK_MONOTONIC (steady_clock), which is one clock for every process of the machine.
//
//   bus: the producer's Bridge (app "producer", forward "order.>") over sqlite://<file> instruments
//        "order.placed" events whose payload carries its send time (steady_clock ns, "sent_ns");
//        the consumer's Bridge (subscribe "order.>"; a plain subscription, or --group G) counts the
//        remote events on a listener and records now - sent_ns for each.
//   transport (detail line only): the same through the Transport interface without Bridges, to
//        tell the transport's share from the Bridges' (their queues, threads and JSON): the
//        producer publish()es the messages the bus would (its envelope, Message::id, plus a
//        header "sent_ns"), one publish() per 256 (flat out) or per tick (paced); the consumer's
//        DeliveryHandler records now - sent_ns and acknowledges at once, on the poller thread.
//        Paced, the producer's side alone: raw_commit_p50_ms (one tick's INSERTs and COMMIT) and
//        transport_publish_p50_ms (one tick's publish()), medians over the ticks.
//   raw: the producer inserts rows (seq INTEGER PRIMARY KEY, subject, id, body, sent_ns) with one
//        prepared INSERT, 256 rows per BEGIN IMMEDIATE transaction (the Bridge's default batch),
//        body = the envelope the bus stores for the same event, id = its Message::id; the consumer
//        runs `SELECT ... WHERE seq > ? ORDER BY seq LIMIT 256` in a tight loop (no sleep), reads
//        every column and records now - sent_ns. Same pragmas as the transport: WAL,
//        synchronous=NORMAL, busy_timeout.
//
// events_per_s, raw_events_per_s: N events sent as fast as the producer can (flat out), from the
//   producer's first instrument()/INSERT to the consumer's N-th delivery.
// p50_ms, raw_p50_ms: delivery latency (send to the consumer's listener / row read) while busy:
//   a steady stream at --rate events/s (default 10,000; sent per 1 ms tick, the raw producer
//   committing each tick's rows as one transaction), below both sides' flat-out throughput, so
//   the figure is the pipeline's delay and not a backlog. The flat-out runs' latencies (mostly
//   queueing behind the burst) are on the detail line as burst_*.
// idle_wakeups_per_s: a consumer process with a started sqlite:// transport and one plain
//   subscription, nothing published; after 1 s to settle, over --idle-seconds (default 3): the
//   voluntary context switches of the whole process (getrusage RUSAGE_SELF) minus those of its
//   main thread (RUSAGE_THREAD; it only sleeps), per second: how often the transport's threads
//   woke. The transport's own health() "polls" and "idle_wakeups" over the same span are on the
//   detail line. A poller waking exactly every idle_interval gives S / idle_interval wakeups, or
//   one more when the window's edges fall just so: the figure is exact to 1/S per second.
//
// The raw consumer spins on a core; on a machine with 2 cores it and the producer take both, and
// other load on the machine moves the raw figures most (hence the load average in the reports).
// Each repetition's figures go to stderr as one "run N: ..." line.
//
// Goals (issue 14): events_per_s >= 0.5 x raw_events_per_s; p50_ms <= 2 x raw_p50_ms;
// idle_wakeups_per_s <= 1 / idle_interval (default idle_interval 100 ms: 10 per second).
//
// Everything is bounded: a consumer that has not got every event within --timeout-s (default 30)
// reports what it got and the run fails; a child that does not exit is killed by PID. Files live
// in a mkdtemp directory under --dir (default /tmp), removed at the end, also on failure. A
// failure goes to stderr, exit status 1.
//
// Usage: bench_sqlite_transport [--events N] [--paced-events M] [--rate R] [--repetitions K]
//                               [--idle-seconds S] [--group G] [--options Q] [--timeout-s T] [--dir D]
//   defaults: N 50000, M 20000, R 10000, K 3, S 3, no group, no options, T 30, /tmp
//   --options Q: transport options as a URL query, added to every sqlite:// URL of the run, e.g.
//   "min_poll_interval_us=50&idle_interval_ms=200" (the idle goal follows idle_interval_ms).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transport.hpp"

extern char** environ;

namespace n = notifications;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kBatch = 256;  // BridgeConfig::batch_size default; the raw producer's and reader's

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

nlohmann::json payload() {
  return {{"order_id", 12345}, {"customer", "ada"}, {"total_cents", 4200}, {"items", {"mug", "hoodie"}},
          {"sent_ns", now_ns()}};
}

std::int64_t percentile(const std::vector<std::int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1))];
}

// Rounded to `digits` decimals, for the JSON lines.
double rounded(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t m = values.size() / 2;
  return values.size() % 2 == 1 ? values[m] : (values[m - 1] + values[m]) / 2;
}

// What a consumer process prints when it is done: how many it got, when the last one arrived,
// and its latencies.
std::string consumer_result(std::vector<std::int64_t>& latencies, std::size_t received, std::int64_t last_ns,
                            const std::string& extra = "") {
  latencies.resize(std::min(latencies.size(), received));
  std::sort(latencies.begin(), latencies.end());
  char line[256];
  std::snprintf(line, sizeof line, "{\"received\":%zu,\"last_ns\":%lld,\"p50_ns\":%lld,\"p99_ns\":%lld", received,
                static_cast<long long>(last_ns), static_cast<long long>(percentile(latencies, 0.50)),
                static_cast<long long>(percentile(latencies, 0.99)));
  return std::string(line) + extra + "}";
}

// ---- raw SQLite -----------------------------------------------------------------------------

struct Db {
  sqlite3* db = nullptr;
  explicit Db(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      throw std::runtime_error("raw: cannot open " + path + ": " + sqlite3_errmsg(db));
    }
    sqlite3_busy_timeout(db, 5000);  // the transport's busy_timeout default
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
  }
  ~Db() { sqlite3_close_v2(db); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  void exec(const char* sql) const {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
      throw std::runtime_error(std::string("raw: ") + sql + ": " + sqlite3_errmsg(db));
    }
  }
  void check(int rc, const char* what) const {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
      throw std::runtime_error(std::string("raw: ") + what + ": " + sqlite3_errmsg(db));
    }
  }
};

struct Statement {
  sqlite3_stmt* stmt = nullptr;
  Statement(const Db& db, const char* sql) {
    db.check(sqlite3_prepare_v3(db.db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr), sql);
  }
  ~Statement() { sqlite3_finalize(stmt); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
};

void create_raw_table(const std::string& path) {
  Db db(path);
  db.exec("CREATE TABLE events(seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, id TEXT NOT NULL,"
          " body BLOB NOT NULL, sent_ns INTEGER NOT NULL)");
}

// The consumer side of the raw pair: polls in a tight loop until `count` rows were read.
int raw_consumer(const std::string& path, std::size_t count, std::chrono::seconds timeout) {
  Db db(path);
  Statement select(db, "SELECT seq, subject, id, body, sent_ns FROM events WHERE seq > ? ORDER BY seq LIMIT 256");
  std::vector<std::int64_t> latencies(count);
  std::string subject, id, body;  // each row's columns are copied out, as a real reader would
  std::size_t received = 0;
  std::int64_t last_seq = 0, last_ns = 0;
  std::printf("ready\n");
  const auto deadline = Clock::now() + timeout;
  while (received < count && Clock::now() < deadline) {
    sqlite3_bind_int64(select.stmt, 1, last_seq);
    int rc;
    while ((rc = sqlite3_step(select.stmt)) == SQLITE_ROW) {
      last_seq = sqlite3_column_int64(select.stmt, 0);
      subject.assign(reinterpret_cast<const char*>(sqlite3_column_text(select.stmt, 1)),
                     static_cast<std::size_t>(sqlite3_column_bytes(select.stmt, 1)));
      id.assign(reinterpret_cast<const char*>(sqlite3_column_text(select.stmt, 2)),
                static_cast<std::size_t>(sqlite3_column_bytes(select.stmt, 2)));
      body.assign(static_cast<const char*>(sqlite3_column_blob(select.stmt, 3)),
                  static_cast<std::size_t>(sqlite3_column_bytes(select.stmt, 3)));
      const std::int64_t sent = sqlite3_column_int64(select.stmt, 4);
      last_ns = now_ns();
      if (received < count) latencies[received] = last_ns - sent;
      ++received;
    }
    sqlite3_reset(select.stmt);
    if (rc != SQLITE_DONE && rc != SQLITE_BUSY) db.check(rc, "select");
  }
  std::printf("%s\n", consumer_result(latencies, received, last_ns).c_str());
  return received >= count ? 0 : 1;
}

// How long each send(k) of the last paced produce() took (ns): the raw producer's transaction,
// the transport's publish(), the bus's instrument() calls.
std::vector<std::int64_t> g_send_ns;

// Sends `count` events: flat out (rate 0) or `rate` per second in 1 ms ticks; each call of
// `send(k)` sends k events. Returns the time of the first send.
template <typename Send>
std::int64_t produce(std::size_t count, double rate, Send&& send) {
  g_send_ns.clear();
  const auto first = Clock::now();
  const std::int64_t first_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(first.time_since_epoch()).count();
  if (rate <= 0) {
    for (std::size_t done = 0; done < count; done += kBatch) send(std::min(kBatch, count - done));
    return first_ns;
  }
  std::size_t done = 0;
  for (auto tick = first; done < count; tick += 1ms) {
    std::this_thread::sleep_until(tick);
    const double due = rate * std::chrono::duration<double>(Clock::now() - first).count();
    const std::size_t target = std::min(count, static_cast<std::size_t>(due) + 1);
    if (target > done) {
      const std::int64_t t0 = now_ns();
      send(target - done);
      g_send_ns.push_back(now_ns() - t0);
      done = target;
    }
  }
  return first_ns;
}

// The producer side of the raw pair, in this process.
std::int64_t raw_producer(const std::string& path, std::size_t count, double rate) {
  Db db(path);
  Statement insert(db, "INSERT INTO events(subject, id, body, sent_ns) VALUES(?,?,?,?)");
  // What the bus stores for such an event: its envelope and Message::id.
  const n::Message m = n::message_from_envelope(
      n::envelope_from_event(n::Event("order.placed", payload()), "producer", "00000000-0000-4000-8000-000000000000"),
      "bench.order.placed");
  return produce(count, rate, [&](std::size_t k) {
    db.exec("BEGIN IMMEDIATE");
    for (std::size_t i = 0; i < k; ++i) {
      sqlite3_bind_text64(insert.stmt, 1, m.subject.data(), m.subject.size(), SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_text64(insert.stmt, 2, m.id.data(), m.id.size(), SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_blob64(insert.stmt, 3, m.body.data(), m.body.size(), SQLITE_STATIC);
      sqlite3_bind_int64(insert.stmt, 4, now_ns());
      db.check(sqlite3_step(insert.stmt), "insert");
      sqlite3_reset(insert.stmt);
    }
    db.exec("COMMIT");
  });
}

// ---- the bus --------------------------------------------------------------------------------

n::BridgeConfig bridge_config(const std::string& url, const std::string& app, std::vector<std::string> forward,
                              std::vector<std::string> subscribe, const std::string& group) {
  n::BridgeConfig c;
  c.url = url;
  c.app = app;
  c.prefix = "bench";
  c.forward = std::move(forward);
  c.subscribe = std::move(subscribe);
  c.group = group;
  c.queue_capacity = 1 << 20;
  c.overflow = n::OverflowPolicy::block;
  c.block_timeout = 30s;
  return c;
}

std::uint64_t dropped(const nlohmann::json& counters) {
  std::uint64_t total = 0;
  for (const auto& [reason, count] : counters["dropped"].items()) total += count.get<std::uint64_t>();
  return total;
}

// The consumer side of the bus pair: a Bridge subscribed to "order.>", counting remote events.
int bus_consumer(const std::string& url, std::size_t count, std::chrono::seconds timeout, const std::string& group) {
  n::Notifier notifier;
  auto bridge = n::make_bridge(notifier, bridge_config(url, "consumer", {}, {"order.>"}, group));
  std::vector<std::int64_t> latencies(count);
  std::mutex mutex;
  std::condition_variable done;
  std::size_t received = 0;  // guarded by mutex (written on the dispatcher thread only)
  std::int64_t last_ns = 0;
  auto subscription = notifier.subscribe("order.placed", [&](const n::Event& e) {
    if (!e.remote()) return;
    const std::int64_t now = now_ns();
    const auto it = e.payload().find("sent_ns");
    const std::int64_t sent = it != e.payload().end() && it->is_number_integer() ? it->get<std::int64_t>() : now;
    std::lock_guard lock(mutex);
    if (received < count) latencies[received] = now - sent;
    last_ns = now;
    if (++received == count) done.notify_one();
  });
  bridge->start();
  std::printf("ready\n");
  bool all;
  {
    std::unique_lock lock(mutex);
    all = done.wait_for(lock, timeout, [&] { return received >= count; });
  }
  const nlohmann::json health = bridge->health();
  bridge->shutdown(10s);
  const nlohmann::json& c = health["counters"];
  std::lock_guard lock(mutex);
  std::printf("%s\n", consumer_result(latencies, received, last_ns,
                                      ",\"lost\":" + c["lost"].dump() + ",\"dropped\":" + std::to_string(dropped(c)) +
                                          ",\"redeliveries_suppressed\":" + c["redeliveries_suppressed"].dump() +
                                          ",\"transport\":" + health["transport"].dump())
                          .c_str());
  return all ? 0 : 1;
}

// The producer side of the bus pair, in this process.
std::int64_t bus_producer(const std::string& url, std::size_t count, double rate) {
  n::Notifier notifier;
  auto bridge = n::make_bridge(notifier, bridge_config(url, "producer", {"order.>"}, {}, ""));
  bridge->start();
  nlohmann::json body = payload();
  const std::int64_t first = produce(count, rate, [&](std::size_t k) {
    for (std::size_t i = 0; i < k; ++i) {
      body["sent_ns"] = now_ns();
      notifier.instrument("order.placed", body);
    }
  });
  const bool flushed = bridge->flush(60s);
  const nlohmann::json health = bridge->health();
  bridge->shutdown(10s);
  const auto sent = health["counters"]["sent"].get<std::uint64_t>();
  if (!flushed || sent != count || dropped(health["counters"]) != 0) {
    throw std::runtime_error("bus producer: " + std::to_string(sent) + " of " + std::to_string(count) +
                             " events sent (flush " + (flushed ? "ok" : "timed out") + "); " +
                             health["counters"].dump());
  }
  return first;
}

// ---- the transport alone -------------------------------------------------------------------

// The consumer side of the transport pair: a subscription that records and acknowledges.
int transport_consumer(const std::string& url, std::size_t count, std::chrono::seconds timeout,
                       const std::string& group) {
  auto transport = n::make_transport(n::TransportConfig{url, nlohmann::json::object()});
  transport->start();
  std::vector<std::int64_t> latencies(count);
  std::mutex mutex;
  std::condition_variable done;
  std::size_t received = 0;  // guarded by mutex
  std::int64_t last_ns = 0;
  transport->subscribe("bench.order.>", n::DeliveryOptions(group), [&](n::Delivery&& d) {
    const std::int64_t now = now_ns();
    const std::int64_t sent = std::strtoll(d.message.header("sent_ns").c_str(), nullptr, 10);
    if (d.settle) d.settle(n::Settle::ack);
    std::lock_guard lock(mutex);
    if (received < count) latencies[received] = now - sent;
    last_ns = now;
    if (++received == count) done.notify_one();
  });
  std::printf("ready\n");
  bool all;
  {
    std::unique_lock lock(mutex);
    all = done.wait_for(lock, timeout, [&] { return received >= count; });
  }
  transport->stop(Clock::now() + 10s);
  std::lock_guard lock(mutex);
  std::printf("%s\n", consumer_result(latencies, received, last_ns).c_str());
  return all ? 0 : 1;
}

// The producer side of the transport pair, in this process.
std::int64_t transport_producer(const std::string& url, std::size_t count, double rate) {
  auto transport = n::make_transport(n::TransportConfig{url, nlohmann::json::object()});
  transport->start();
  const n::Message m = n::message_from_envelope(
      n::envelope_from_event(n::Event("order.placed", payload()), "producer", "00000000-0000-4000-8000-000000000000"),
      "bench.order.placed");
  std::vector<n::Message> batch;
  std::size_t sequence = 0;
  const std::int64_t first = produce(count, rate, [&](std::size_t k) {
    batch.assign(k, m);
    for (auto& message : batch) {
      char id[40];
      std::snprintf(id, sizeof id, "00000000-0000-4000-8000-%012zu", ++sequence);
      message.id = id;
      message.headers.emplace_back("sent_ns", std::to_string(now_ns()));
    }
    const n::PublishResult result = transport->publish(batch);
    if (result.published != k) {
      throw std::runtime_error("transport producer: publish accepted " + std::to_string(result.published) + " of " +
                               std::to_string(k) + ": " + result.error);
    }
  });
  const bool flushed = transport->flush(Clock::now() + 60s);
  transport->stop(Clock::now() + 10s);
  if (!flushed) throw std::runtime_error("transport producer: flush timed out");
  return first;
}

// ---- idle -----------------------------------------------------------------------------------

long voluntary_switches(int who) {
  rusage usage{};
  getrusage(who, &usage);
  return usage.ru_nvcsw;
}

std::uint64_t counter(const nlohmann::json& health, const char* key) {
  const auto it = health.find(key);
  return it != health.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

// A started transport with one subscription and nothing published: how often its threads wake.
int idle_consumer(const std::string& url, std::chrono::seconds span) {
  auto transport = n::make_transport(n::TransportConfig{url, nlohmann::json::object()});
  transport->start();
  std::size_t delivered = 0;
  transport->subscribe("bench.idle.>", n::DeliveryOptions{}, [&](n::Delivery&& d) {
    ++delivered;
    if (d.settle) d.settle(n::Settle::ack);
  });
  std::this_thread::sleep_for(1s);  // the poller backs off to idle_interval meanwhile
  const nlohmann::json h0 = transport->health();
  const long self0 = voluntary_switches(RUSAGE_SELF), main0 = voluntary_switches(RUSAGE_THREAD);
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(span);
  const long self1 = voluntary_switches(RUSAGE_SELF), main1 = voluntary_switches(RUSAGE_THREAD);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const nlohmann::json h1 = transport->health();
  transport->stop(Clock::now() + 5s);
  const long others = (self1 - self0) - (main1 - main0);
  std::printf("{\"seconds\":%.3f,\"switches\":%ld,\"main_switches\":%ld,\"wakeups_per_s\":%.3f,\"polls_per_s\":%.3f,"
              "\"health_idle_wakeups_per_s\":%.3f,\"delivered\":%zu}\n",
              seconds, self1 - self0, main1 - main0, static_cast<double>(others) / seconds,
              static_cast<double>(counter(h1, "polls") - counter(h0, "polls")) / seconds,
              static_cast<double>(counter(h1, "idle_wakeups") - counter(h0, "idle_wakeups")) / seconds, delivered);
  return 0;
}

// ---- child processes ------------------------------------------------------------------------

// A consumer process: this program again, its stdout on a pipe. Killed by PID if still running
// when the object goes.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC
    std::vector<char*> argv;
    static char self[] = "/proc/self/exe";
    argv.push_back(self);
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    out_ = fds[0];
    if (rc != 0) {
      ::close(out_);
      throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
    }
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // The next line the child printed, or an exception when none came by `deadline`.
  std::string read_line(Clock::time_point deadline, const char* what) {
    while (true) {
      if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) throw std::runtime_error(std::string(what) + ": no answer from the consumer process in time");
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char chunk[4096];
      const ssize_t got = ::read(out_, chunk, sizeof chunk);
      if (got == 0) throw std::runtime_error(std::string(what) + ": the consumer process exited early");
      if (got > 0) buffer_.append(chunk, static_cast<std::size_t>(got));
    }
  }

  // The exit status, waiting until `deadline`; then it is killed (and -1 returned).
  int wait(Clock::time_point deadline) {
    int status = 0;
    while (Clock::now() < deadline) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(10ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
};

struct Options {
  std::size_t events = 50000;
  std::size_t paced_events = 20000;
  double rate = 10000;
  int repetitions = 3;
  int idle_seconds = 3;
  int timeout_s = 30;
  std::string group;
  std::string options;  // URL query for the transport, without '?'
  std::string dir = "/tmp";

  std::string url(const std::string& path) const { return "sqlite://" + path + (options.empty() ? "" : "?" + options); }
  // The idle_interval the transport runs with: idle_interval_ms from `options`, else the default.
  double idle_interval_ms() const {
    const std::string key = "idle_interval_ms=";
    for (std::size_t at = options.find(key); at != std::string::npos; at = options.find(key, at + 1)) {
      if (at == 0 || options[at - 1] == '&') return std::atof(options.c_str() + at + key.size());
    }
    return 100;  // SqliteTransportOptions::idle_interval
  }
};

struct PairRun {
  double events_per_s = 0;
  double p50_ms = 0, p99_ms = 0;
  double send_p50_ms = 0;  // paced: g_send_ns' median
  nlohmann::json consumer;
};

std::string g_workdir;  // the mkdtemp directory, removed at exit

std::string next_db(const char* what) {
  static int counter = 0;
  return g_workdir + "/" + what + "-" + std::to_string(counter++) + ".db";
}

void remove_db(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::remove((path + suffix).c_str());
}

enum class Kind { raw, bus, transport };

// One producer/consumer pair: the consumer process is started and ready before the first send.
PairRun run_pair(const Options& o, Kind kind, std::size_t count, double rate) {
  const char* name = kind == Kind::raw ? "raw" : kind == Kind::bus ? "bus" : "transport";
  const std::string what = std::string(name) + (rate > 0 ? " paced" : "");
  const bool bus = kind == Kind::bus;
  const std::string path = next_db(name);
  const std::string url = o.url(path);
  if (kind == Kind::raw) create_raw_table(path);
  std::vector<std::string> args = {"--role", std::string(name) + "-consumer", "--target", kind == Kind::raw ? path : url,
                                   "--events", std::to_string(count), "--timeout-s", std::to_string(o.timeout_s)};
  if (kind != Kind::raw && !o.group.empty()) args.insert(args.end(), {"--group", o.group});
  PairRun run;
  {
    Child consumer(args);
    const std::string ready = consumer.read_line(Clock::now() + 15s, what.c_str());
    if (ready != "ready") throw std::runtime_error(what + ": consumer said '" + ready + "'");
    const std::int64_t first = kind == Kind::bus   ? bus_producer(url, count, rate)
                               : kind == Kind::raw ? raw_producer(path, count, rate)
                                                   : transport_producer(url, count, rate);
    const std::string line = consumer.read_line(Clock::now() + std::chrono::seconds(o.timeout_s + 15), what.c_str());
    const int status = consumer.wait(Clock::now() + 15s);
    run.consumer = nlohmann::json::parse(line);
    const auto received = run.consumer["received"].get<std::size_t>();
    if (status != 0 || received != count || (bus && (run.consumer["lost"] != 0 || run.consumer["dropped"] != 0))) {
      throw std::runtime_error(what + ": consumer exit status " + std::to_string(status) + ", got " +
                               std::to_string(received) + " of " + std::to_string(count) + ": " + line);
    }
    const auto last = run.consumer["last_ns"].get<std::int64_t>();
    run.events_per_s = static_cast<double>(count) / (static_cast<double>(last - first) * 1e-9);
    run.p50_ms = run.consumer["p50_ns"].get<double>() * 1e-6;
    run.p99_ms = run.consumer["p99_ns"].get<double>() * 1e-6;
    std::sort(g_send_ns.begin(), g_send_ns.end());
    run.send_p50_ms = static_cast<double>(percentile(g_send_ns, 0.5)) * 1e-6;
  }
  remove_db(path);
  return run;
}

nlohmann::json run_idle(const Options& o) {
  const std::string path = next_db("idle");
  Child idle({"--role", "idle", "--target", o.url(path), "--idle-seconds", std::to_string(o.idle_seconds)});
  const std::string line = idle.read_line(Clock::now() + std::chrono::seconds(o.idle_seconds + 20), "idle");
  const int status = idle.wait(Clock::now() + 15s);
  if (status != 0) throw std::runtime_error("idle: exit status " + std::to_string(status) + ": " + line);
  remove_db(path);
  return nlohmann::json::parse(line);
}

void goal(const char* what, double value, double limit, bool pass) {
  std::printf("{\"bench\":\"sqlite_transport_goal\",\"goal\":\"%s\",\"value\":%.3f,\"limit\":%.3f,\"result\":\"%s\"}\n",
              what, value, limit, pass ? "PASS" : "MISS");
}

int usage() {
  std::fprintf(stderr,
               "usage: bench_sqlite_transport [--events N] [--paced-events M] [--rate R] [--repetitions K]\n"
               "                              [--idle-seconds S] [--group G] [--options Q] [--timeout-s T] [--dir D]\n");
  return 2;
}

int run_bench(const Options& o) {
  std::vector<double> raw_eps, bus_eps, raw_p50, bus_p50, raw_p99, bus_p99, raw_burst_p50, bus_burst_p50;
  std::vector<double> transport_eps, transport_p50, transport_p99, raw_commit, transport_publish;
  nlohmann::json last_transport;
  for (int r = 0; r < o.repetitions; ++r) {
    // Interleaved, so that a change in the machine's load falls on every variant alike.
    const PairRun raw = run_pair(o, Kind::raw, o.events, 0);
    const PairRun bus = run_pair(o, Kind::bus, o.events, 0);
    const PairRun transport = run_pair(o, Kind::transport, o.events, 0);
    const PairRun raw_paced = run_pair(o, Kind::raw, o.paced_events, o.rate);
    const PairRun bus_paced = run_pair(o, Kind::bus, o.paced_events, o.rate);
    const PairRun transport_paced = run_pair(o, Kind::transport, o.paced_events, o.rate);
    transport_eps.push_back(transport.events_per_s);
    transport_p50.push_back(transport_paced.p50_ms);
    transport_p99.push_back(transport_paced.p99_ms);
    raw_commit.push_back(raw_paced.send_p50_ms);
    transport_publish.push_back(transport_paced.send_p50_ms);
    raw_eps.push_back(raw.events_per_s);
    bus_eps.push_back(bus.events_per_s);
    raw_burst_p50.push_back(raw.p50_ms);
    bus_burst_p50.push_back(bus.p50_ms);
    raw_p50.push_back(raw_paced.p50_ms);
    bus_p50.push_back(bus_paced.p50_ms);
    raw_p99.push_back(raw_paced.p99_ms);
    bus_p99.push_back(bus_paced.p99_ms);
    last_transport = bus_paced.consumer["transport"];
    std::fprintf(stderr,
                 "run %d: raw %.0f/s, bus %.0f/s, transport %.0f/s; at %.0f/s p50 raw %.3f ms, bus %.3f ms, transport "
                 "%.3f ms; p99 raw %.3f ms, bus %.3f ms, transport %.3f ms\n",
                 r + 1, raw.events_per_s, bus.events_per_s, transport.events_per_s, o.rate, raw_paced.p50_ms,
                 bus_paced.p50_ms, transport_paced.p50_ms, raw_paced.p99_ms, bus_paced.p99_ms, transport_paced.p99_ms);
  }
  const nlohmann::json idle = run_idle(o);
  const double eps = median(bus_eps), raw_e = median(raw_eps);
  const double p50 = median(bus_p50), raw_p = median(raw_p50);
  const double wakeups = idle["wakeups_per_s"].get<double>();
  const double idle_limit = 1000.0 / o.idle_interval_ms();
  std::printf(
      "{\"bench\":\"sqlite_transport\",\"events_per_s\":%.0f,\"raw_events_per_s\":%.0f,\"p50_ms\":%.3f,"
      "\"raw_p50_ms\":%.3f,\"idle_wakeups_per_s\":%.2f}\n",
      eps, raw_e, p50, raw_p, wakeups);
  nlohmann::ordered_json detail = {{"bench", "sqlite_transport_detail"},
                           {"events", o.events},
                           {"paced_events", o.paced_events},
                           {"rate", o.rate},
                           {"repetitions", o.repetitions},
                           {"group", o.group},
                           {"options", o.options},
                           {"idle_interval_ms", o.idle_interval_ms()},
                           {"p99_ms", rounded(median(bus_p99), 3)},
                           {"raw_p99_ms", rounded(median(raw_p99), 3)},
                           {"transport_events_per_s", rounded(median(transport_eps), 0)},
                           {"transport_p50_ms", rounded(median(transport_p50), 3)},
                           {"transport_p99_ms", rounded(median(transport_p99), 3)},
                           {"raw_commit_p50_ms", rounded(median(raw_commit), 3)},
                           {"transport_publish_p50_ms", rounded(median(transport_publish), 3)},
                           {"burst_p50_ms", rounded(median(bus_burst_p50), 3)},
                           {"raw_burst_p50_ms", rounded(median(raw_burst_p50), 3)},
                           {"idle", idle},
                           {"consumer_transport_health", last_transport}};
  std::printf("%s\n", detail.dump().c_str());
  goal("events_per_s >= 0.5 x raw_events_per_s", eps / raw_e, 0.5, eps >= 0.5 * raw_e);
  goal("p50_ms <= 2 x raw_p50_ms", p50 / raw_p, 2, p50 <= 2 * raw_p);
  goal("idle_wakeups_per_s <= 1 / idle_interval", wakeups, idle_limit, wakeups <= idle_limit);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Keep stdout to the JSON lines (and, in a consumer, its answers): library logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("bench_sqlite_transport"));
  spdlog::set_level(spdlog::level::warn);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  Options o;
  std::string role, target;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    const std::string arg = argv[i];
    if (!has_value) return usage();
    const char* value = argv[++i];
    if (arg == "--events") {
      o.events = std::strtoull(value, nullptr, 10);
    } else if (arg == "--paced-events") {
      o.paced_events = std::strtoull(value, nullptr, 10);
    } else if (arg == "--rate") {
      o.rate = std::atof(value);
    } else if (arg == "--repetitions") {
      o.repetitions = std::atoi(value);
    } else if (arg == "--idle-seconds") {
      o.idle_seconds = std::atoi(value);
    } else if (arg == "--timeout-s") {
      o.timeout_s = std::atoi(value);
    } else if (arg == "--group") {
      o.group = value;
    } else if (arg == "--options") {
      o.options = value;
    } else if (arg == "--dir") {
      o.dir = value;
    } else if (arg == "--role") {
      role = value;
    } else if (arg == "--target") {
      target = value;
    } else {
      return usage();
    }
  }
  if (o.events < 1 || o.paced_events < 1 || o.rate <= 0 || o.repetitions < 1 || o.idle_seconds < 1 ||
      o.timeout_s < 1 || o.idle_interval_ms() <= 0) {
    std::fprintf(stderr, "bench_sqlite_transport: every count, the rate and the times must be positive\n");
    return 2;
  }
  try {
    const auto timeout = std::chrono::seconds(o.timeout_s);
    if (role == "raw-consumer") return raw_consumer(target, o.events, timeout);
    if (role == "bus-consumer") return bus_consumer(target, o.events, timeout, o.group);
    if (role == "transport-consumer") return transport_consumer(target, o.events, timeout, o.group);
    if (role == "idle") return idle_consumer(target, std::chrono::seconds(o.idle_seconds));
    if (!role.empty()) return usage();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sqlite_transport (%s): %s\n", role.c_str(), e.what());
    return 1;
  }

  std::string pattern = o.dir + "/bench_sqlite_transport-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "bench_sqlite_transport: cannot create a directory in %s: %s\n", o.dir.c_str(),
                 std::strerror(errno));
    return 1;
  }
  g_workdir = pattern;
  int status = 0;
  try {
    status = run_bench(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sqlite_transport: %s\n", e.what());
    status = 1;
  }
  std::error_code ignored;
  std::filesystem::remove_all(g_workdir, ignored);  // our own mkdtemp directory
  return status;
}
