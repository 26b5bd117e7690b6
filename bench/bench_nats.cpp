// Forwarding and ping-pong over NATS, each next to a raw cnats baseline doing the same work
// without the bus: one JSON line per measurement, so runs can be compared.
//
//   {"bench":"nats_forward","headers":false,"events":N,"raw_msgs_per_s":...,"bus_msgs_per_s":...,
//    "ratio":...,"instrument_p50_ns":...,"instrument_p99_ns":...,"memory_instrument_p50_ns":...,
//    "memory_instrument_p99_ns":...,"instrument_p99_to_memory":...,
//    "raw_msg_per_publish_msgs_per_s":...,"ratio_to_msg_per_publish":...}   (the last two with headers)
//   {"bench":"nats_forward","threads":T,"events":N,"hand_msgs_per_s":...,"bus_msgs_per_s":...,"ratio":...,
//    "hand_cpu_us_per_event":...,"bus_cpu_us_per_event":...,"cpu_ratio":...}   (T = 1, 2, 4)
//   {"bench":"nats_receive","events":N,"rounds":3,"raw_cpu_us_per_event":...,"bus_cpu_us_per_event":...,"ratio":...,
//    "round_ratios":[...],"bus_reading_payload_cpu_us_per_event":...,"ratio_reading_payload":...}
//   {"bench":"nats_pingpong","rounds":R,"raw_p50_us":...,"raw_p99_us":...,"bus_p50_us":...,"bus_p99_us":...}
//   {"bench":"idle","seconds":S,"cpu_percent":...,"raw_cpu_percent":...,"wakeups_per_s":...,
//    "all_threads_wakeups_per_s":...}
//   {"bench":"nats_steady","rate":20000,"headers":false,"seconds":S,"send_cpu_us_per_event":...,"recv_cpu_us_per_event":...,
//    "full_send_cpu_us_per_event":...,"full_recv_cpu_us_per_event":...,"e2e_p50_us":...,"e2e_p99_us":...,
//    "instrument_p99_ns":...,"pacing_cpu_us_per_event":...}
//
// nats_forward. Raw: a cnats connection publishes N copies of what the bus sends for an
// "order.placed" event (a real envelope: subject, body, headers) to an async subscription of a
// second connection. Bus: A's Bridge forwards N instrumented "order.placed" events to B's Bridge.
// msgs/s: from the first publish (instrument) to the last message seen by the subscription (the
// remote event seen by B's listener); ratio = bus / raw. Instrument latency: each instrument()
// on A's thread, monotonic clock; memory_instrument_*: the same loop with A's Bridge forwarding to
// memory:// (a receiving Bridge on the same broker), measured right after in the same run.
// Goals (issue 20): ratio >= 0.8, instrument_p99_to_memory <= 2.
// Measured twice: with the NATS option headers = false (the default: bodies only; raw calls
// natsConnection_Publish with the body) and with headers = true (raw re-publishes one natsMsg
// carrying them). With headers, a second raw figure for reference: raw_msg_per_publish_msgs_per_s, a natsMsg
// created with its headers and destroyed per publish (what sending distinct messages costs in
// cnats), and ratio_to_msg_per_publish = bus / that.
//
// nats_forward with "threads": T threads share the N events. By hand: each thread writes the
// bus's envelope bytes (fixed fields copied, its own sequence, the payload dumped per event) and
// publishes them on one shared cnats connection. Bus: each thread instruments "order.placed"; a Bridge with the
// default NATS options forwards. Both are received by a raw counting subscription on a second
// connection in this process. msgs/s from the start signal to the last message seen; CPU per
// event: getrusage of the whole process over the same span, divided by N. Goals (issue 20):
// ratio >= 1 and cpu_ratio <= 1 for every T.
//
// nats_receive: the receiving side alone. A raw cnats publisher here sends N distinct envelopes
// (bodies only, as the bus sends by default) to a child process that receives them as a raw cnats
// subscriber that counts (raw), as a Bridge whose one listener counts (bus), and as one whose
// listener reads a payload member (bus_reads). The publisher keeps at most 4,096 messages ahead of
// what the child has (a counter in a shared file). CPU per event: the child's getrusage from its
// first to its last message; three rounds of the three in turn, medians reported. Goal (issue 20):
// bus <= 1.5x raw.
//
// nats_pingpong: round trip there and back, send_asap on every connection, R rounds after 100
// warm-up rounds. Raw: A publishes "ping.x", B's message callback publishes "pong.x", A's callback
// wakes the main thread. Bus: A instruments "bench.ping"; B's listener for that remote event
// instruments "bench.pong" (on B's dispatcher thread); A's listener for the remote "bench.pong"
// wakes the main thread. Both wake it the same way (mutex and condvar).
// Goals (issue): bus p50 <= 1.5x raw p50, bus p99 <= 2x raw p99.
//
// idle: S seconds (10) of nothing to do. Raw: one plain cnats connection with one subscription.
// Bus: two started Bridges over NATS, one forwarding "order.>", one receiving it (one event went
// across first, so every thread has run). cpu_percent: the process's CPU time over S, in percent of one
// core. wakeups_per_s: context switches (voluntary and not, /proc/self/task/*/status) of the bus's
// own threads (named "ntf-*") per second; all_threads_wakeups_per_s adds cnats' threads and the
// waiting main thread. Goal (issue): wakeups_per_s <= 1.
//
// nats_steady: the sending and the receiving process apart (the receiver is this program run again
// with --steady-receiver, started through popen). The sender's Bridge instruments "steady.tick"
// at `rate` events/s for S seconds (paced against the clock), then N = rate * S "full.tick" as
// fast as it can. CPU per event of each process in each phase: getrusage of the whole process,
// sender from its first to its last instrument() (full: until the receiver has everything),
// receiver from its first to its last event of the phase. e2e: CLOCK_MONOTONIC (one clock for
// both processes) from instrument() to the receiver's listener, steady phase only.
// instrument_p99_ns: the sender's instrument() calls in the steady phase. The pacing (a
// sleep_until per event) is part of send_cpu_us_per_event; pacing_cpu_us_per_event is the same
// loop without instrument(), measured first in the same run. The sender uses the default NATS
// options, or headers on or off as the fifth argument says ("headers" in the line). With "raw" as
// the sixth, the receiving process is a raw cnats subscriber that only counts by subject
// ("receiver":"raw"; its e2e figures are 0): the receiving side's baseline at the same rate.
//
// Pending limits are raised on every subscription so a burst is measured, not slow-consumer drops.
// The program runs its own /usr/sbin/nats-server on 127.0.0.1 at a free port through the tests'
// harness (tests/transports/nats/nats_server.hpp) and stops it by PID at the end, also on failure. Every wait is bounded; a failure (anything lost or dropped, a timeout)
// goes to stderr, exit status 1.
//
// Usage: bench_nats [events] [rounds] [idle seconds] [steady seconds] [steady headers: default|on|off]
//                   [steady receiver: bus|raw]   (defaults 200000, 2000, 10, 10, default, bus)
//        bench_nats --receive [events]                 (nats_receive alone)
//        bench_nats --threads [events]                 (nats_forward with 1, 2, 4 threads alone)
//        bench_nats --steady [seconds] [default|on|off] [bus|raw]   (nats_steady alone)
//        bench_nats --receive-only KIND URL EVENTS FILE (started by nats_receive itself)
//        bench_nats --steady-receiver URL EVENTS       (started by nats_steady itself)
//        bench_nats --steady-raw-receiver URL EVENTS   (the same, a raw cnats counting subscriber)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nats/nats.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "notifications/transports/nats.hpp"
#include "nats_server.hpp"
#include "wait.hpp"

namespace n = notifications;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr std::size_t kWarmup = 100;

void check(natsStatus s, const std::string& what) {
  if (s != NATS_OK) throw std::runtime_error(what + ": " + natsStatus_GetText(s));
}

using test_support::wait_until;

// ---- raw cnats --------------------------------------------------------------------------------

std::atomic<std::uint64_t> async_errors{0};  // slow consumer and other async errors, any connection

void on_async_error(natsConnection*, natsSubscription*, natsStatus, void*) { async_errors.fetch_add(1); }

// One connection and its async subscriptions (pending limits lifted).
struct RawConnection {
  natsConnection* nc = nullptr;
  std::vector<natsSubscription*> subs;
  RawConnection(const std::string& url, bool send_asap) {
    natsOptions* o = nullptr;
    check(natsOptions_Create(&o), "natsOptions_Create");
    natsStatus s = natsOptions_SetURL(o, url.c_str());
    if (s == NATS_OK) s = natsOptions_SetSendAsap(o, send_asap);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(o, on_async_error, nullptr);
    if (s == NATS_OK) s = natsConnection_Connect(&nc, o);
    natsOptions_Destroy(o);
    check(s, "raw connect to " + url);
  }
  ~RawConnection() {
    for (natsSubscription* sub : subs) natsSubscription_Destroy(sub);  // unsubscribes an active one
    natsConnection_Destroy(nc);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  void subscribe(const char* subject, natsMsgHandler handler, void* closure) {
    natsSubscription* sub = nullptr;
    check(natsConnection_Subscribe(&sub, nc, subject, handler, closure), "raw subscribe");
    subs.push_back(sub);
    check(natsSubscription_SetPendingLimits(sub, -1, -1), "raw pending limits");
    check(natsConnection_FlushTimeout(nc, 5000), "raw flush after subscribe");  // the server knows
  }
};

using MsgPtr = std::unique_ptr<natsMsg, decltype(&natsMsg_Destroy)>;

// A cnats message with the bytes of `m` (body, headers, and Message::id as Nats-Msg-Id, as the
// NATS transport sends it) on `subject`.
MsgPtr raw_message(const n::Message& m, const std::string& subject) {
  natsMsg* msg = nullptr;
  check(natsMsg_Create(&msg, subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size())), "natsMsg_Create");
  MsgPtr owned(msg, natsMsg_Destroy);
  for (const auto& [key, value] : m.headers) check(natsMsgHeader_Set(msg, key.c_str(), value.c_str()), "natsMsgHeader_Set");
  if (!m.id.empty()) check(natsMsgHeader_Set(msg, "Nats-Msg-Id", m.id.c_str()), "natsMsgHeader_Set");
  return owned;
}

// Counts deliveries; stamps the time the target count was reached (0 until then).
struct Counter {
  std::size_t target = 0;
  std::atomic<std::size_t> count{0};
  std::atomic<Clock::rep> last{0};
  void hit() {
    if (count.fetch_add(1) + 1 == target) last.store(Clock::now().time_since_epoch().count());
  }
  double seconds_since(Clock::time_point first) const {
    return std::chrono::duration<double>(Clock::time_point(Clock::duration(last.load())) - first).count();
  }
  static void on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
    static_cast<Counter*>(self)->hit();
    natsMsg_Destroy(msg);
  }
};

nlohmann::json payload() {
  return {{"order_id", 12345}, {"customer", "ada"}, {"total_cents", 4200}, {"items", {"mug", "hoodie"}}};
}

// What the bus puts on the wire for an event `name` with payload(), on `subject`.
n::Message wire_message(const std::string& name, const std::string& subject, std::uint64_t sequence) {
  n::Envelope e = n::envelope_from_event(n::Event(name, payload()), "a", "00000000-0000-4000-8000-000000000000");
  e.sequence = sequence;
  return n::message_from_envelope(e, subject);
}

// Blocking rather than dropping when the outbound queue is full, and room for a whole burst, in
// count and in bytes: the inbound queue has no back-pressure (a transport callback must not
// block), so a receiver slower than its sender would otherwise drop (counted) what does not fit;
// with the default 64 MiB byte bound a 200,000-event burst did, now and then.
n::BridgeConfig config(const std::string& url, const std::string& app, std::vector<std::string> forward,
                       std::vector<std::string> subscribe) {
  n::BridgeConfig c;
  if (!url.empty()) c.url = url;  // empty: the Bridge is given its transport (memory://)
  c.app = app;
  c.prefix = "bench";
  c.forward = std::move(forward);
  c.subscribe = std::move(subscribe);
  c.queue_capacity = 1 << 20;
  c.queue_max_bytes = 0;
  c.overflow = n::OverflowPolicy::block;
  c.block_timeout = 30s;
  return c;
}

std::shared_ptr<n::Transport> nats(const std::string& url, bool send_asap, bool headers = n::NatsOptions{}.headers) {
  n::NatsOptions o;
  o.servers = {url};
  o.send_asap = send_asap;
  o.headers = headers;
  o.pending_messages_limit = 1 << 24;
  o.pending_bytes_limit = 1 << 30;
  return n::make_nats_transport(o);
}

std::uint64_t dropped(const nlohmann::json& health) {
  std::uint64_t total = 0;
  for (const auto& [reason, count] : health["counters"]["dropped"].items()) total += count.get<std::uint64_t>();
  return total;
}

std::int64_t percentile(const std::vector<std::int64_t>& sorted, double p) {
  return sorted[static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1))];
}

// ---- nats_forward -----------------------------------------------------------------------------

// How the raw publisher sends: the body alone; one natsMsg (with headers) published N times, the
// issue's baseline; or a natsMsg created, given its headers and destroyed per publish, as a cnats
// program sending distinct messages with headers must.
enum class RawMode { body, one_msg, msg_per_publish };

double raw_forward(const std::string& url, std::size_t events, RawMode mode) {
  const n::Message m = wire_message("order.placed", "bench.order.placed", events);
  Counter received{.target = events};
  RawConnection publisher(url, false), subscriber(url, false);
  subscriber.subscribe(m.subject.c_str(), Counter::on_message, &received);
  const MsgPtr msg = raw_message(m, m.subject);
  const auto first = Clock::now();
  const int size = static_cast<int>(m.body.size());
  for (std::size_t i = 0; i < events; ++i) {
    switch (mode) {
      case RawMode::body:
        check(natsConnection_Publish(publisher.nc, m.subject.c_str(), m.body.data(), size), "raw publish");
        break;
      case RawMode::one_msg:
        check(natsConnection_PublishMsg(publisher.nc, msg.get()), "raw publish");
        break;
      case RawMode::msg_per_publish:
        check(natsConnection_PublishMsg(publisher.nc, raw_message(m, m.subject).get()), "raw publish");
        break;
    }
  }
  check(natsConnection_FlushTimeout(publisher.nc, 60000), "raw flush");
  if (!wait_until([&] { return received.last.load() != 0; }, 60s)) {
    throw std::runtime_error("nats_forward raw: " + std::to_string(received.count.load()) + " of " +
                             std::to_string(events) + " messages arrived in 60 s (async errors: " +
                             std::to_string(async_errors.load()) + ")");
  }
  return static_cast<double>(events) / received.seconds_since(first);
}

// Instruments `events` "order.placed" events with payload() on `a`; returns each instrument()
// call's duration in ns (monotonic clock), in call order.
std::vector<std::int64_t> timed_instruments(n::Notifier& a, std::size_t events) {
  nlohmann::json body = payload();
  std::vector<std::int64_t> latencies(events);
  for (std::size_t i = 0; i < events; ++i) {
    const auto t0 = Clock::now();
    a.instrument("order.placed", body, [] {});
    latencies[i] = (Clock::now() - t0).count();
  }
  return latencies;
}

// instrument() latencies (sorted) of `events` "order.placed" events forwarded by a Bridge to
// memory://, with a receiving Bridge on the same broker: goal 1's reference for instrument p99.
std::vector<std::int64_t> memory_instrument_latencies(std::size_t events) {
  const std::string broker = "bench-nats-" + std::to_string(getpid());
  n::Notifier a, b;
  n::Bridge sender(a, n::make_memory_transport({.broker = broker}), config("", "a", {"order.>"}, {}));
  n::Bridge receiver(b, n::make_memory_transport({.broker = broker}), config("", "b", {}, {"order.>"}));
  Counter received{.target = events};
  auto count = b.subscribe("order.placed", [&](const n::Event& e) {
    if (e.remote()) received.hit();
  });
  receiver.start();
  sender.start();
  std::vector<std::int64_t> latencies = timed_instruments(a, events);
  if (!wait_until([&] { return received.last.load() != 0; }, 60s)) {
    throw std::runtime_error("nats_forward memory reference: " + std::to_string(received.count.load()) + " of " +
                             std::to_string(events) + " events arrived in 60 s");
  }
  sender.shutdown(30s);
  receiver.shutdown(30s);
  std::sort(latencies.begin(), latencies.end());
  return latencies;
}

void forward(const std::string& url, std::size_t events, bool headers) {
  const double raw = raw_forward(url, events, headers ? RawMode::one_msg : RawMode::body);
  const double raw_msg_per_publish = headers ? raw_forward(url, events, RawMode::msg_per_publish) : 0;

  n::Notifier a, b;
  n::Bridge sender(a, nats(url, false, headers), config(url, "a", {"order.>"}, {}));
  n::Bridge receiver(b, nats(url, false), config(url, "b", {}, {"order.>"}));
  Counter received{.target = events};
  auto count = b.subscribe("order.placed", [&](const n::Event& e) {
    if (e.remote()) received.hit();
  });
  receiver.start();
  sender.start();

  const auto first = Clock::now();
  std::vector<std::int64_t> latencies = timed_instruments(a, events);
  const bool all = wait_until([&] { return received.last.load() != 0; }, 60s);
  const nlohmann::json out = sender.health(), in = receiver.health();
  if (!all || dropped(out) != 0 || dropped(in) != 0 || in["counters"]["lost"] != 0 || in["counters"]["received"] != events) {
    throw std::runtime_error("nats_forward bus: " + std::to_string(received.count.load()) + " of " +
                             std::to_string(events) + " events arrived (60 s max); sender " +
                             out["counters"].dump() + "; receiver " + in["counters"].dump());
  }
  const double bus = static_cast<double>(events) / received.seconds_since(first);
  sender.shutdown(30s);
  receiver.shutdown(30s);
  std::sort(latencies.begin(), latencies.end());
  const std::vector<std::int64_t> memory = memory_instrument_latencies(events);
  const auto p99 = percentile(latencies, 0.99);
  const auto memory_p99 = percentile(memory, 0.99);
  std::printf(
      "{\"bench\":\"nats_forward\",\"headers\":%s,\"events\":%zu,\"raw_msgs_per_s\":%.0f,\"bus_msgs_per_s\":%.0f,\"ratio\":%.3f,"
      "\"instrument_p50_ns\":%lld,\"instrument_p99_ns\":%lld,\"memory_instrument_p50_ns\":%lld,"
      "\"memory_instrument_p99_ns\":%lld,\"instrument_p99_to_memory\":%.2f",
      headers ? "true" : "false", events, raw, bus, bus / raw, static_cast<long long>(percentile(latencies, 0.50)),
      static_cast<long long>(p99), static_cast<long long>(percentile(memory, 0.50)), static_cast<long long>(memory_p99),
      static_cast<double>(p99) / static_cast<double>(std::max<std::int64_t>(memory_p99, 1)));
  if (headers) {
    std::printf(",\"raw_msg_per_publish_msgs_per_s\":%.0f,\"ratio_to_msg_per_publish\":%.3f", raw_msg_per_publish,
                bus / raw_msg_per_publish);
  }
  std::printf("}\n");
}

// ---- nats_pingpong ----------------------------------------------------------------------------

// Wakes the main thread once per pong.
struct Signal {
  std::mutex mutex;
  std::condition_variable changed;
  std::uint64_t count = 0;
  void notify() {
    std::lock_guard lock(mutex);
    ++count;
    changed.notify_one();
  }
  bool wait_for(std::uint64_t target, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, [&] { return count >= target; });
  }
  static void on_message(natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
    natsMsg_Destroy(msg);
    static_cast<Signal*>(self)->notify();
  }
};

struct Percentiles { double p50_us, p99_us; };

// Times `rounds` round trips after kWarmup: `ping` sends, `pong` is notified when the answer is back.
Percentiles round_trips(const char* what, std::size_t rounds, Signal& pong, const std::function<void()>& ping) {
  std::vector<std::int64_t> rtt;
  rtt.reserve(rounds);
  for (std::size_t i = 0; i < kWarmup + rounds; ++i) {
    const auto t0 = Clock::now();
    ping();
    if (!pong.wait_for(i + 1, 5s)) {
      throw std::runtime_error(std::string(what) + ": no answer to round " + std::to_string(i) + " within 5 s");
    }
    if (i >= kWarmup) rtt.push_back((Clock::now() - t0).count());
  }
  std::sort(rtt.begin(), rtt.end());
  return {static_cast<double>(percentile(rtt, 0.50)) / 1e3, static_cast<double>(percentile(rtt, 0.99)) / 1e3};
}

Percentiles raw_pingpong(const std::string& url, std::size_t rounds) {
  const n::Message m = wire_message("bench.ping", "ping.x", rounds);
  const MsgPtr ping = raw_message(m, "ping.x"), pong = raw_message(m, "pong.x");
  Signal back;
  RawConnection a(url, true), b(url, true);
  b.subscribe("ping.x", [](natsConnection* nc, natsSubscription*, natsMsg* msg, void* answer) {
    natsConnection_PublishMsg(nc, static_cast<natsMsg*>(answer));  // on B's cnats thread
    natsMsg_Destroy(msg);
  }, pong.get());
  a.subscribe("pong.x", Signal::on_message, &back);
  return round_trips("nats_pingpong raw", rounds, back,
                     [&] { check(natsConnection_PublishMsg(a.nc, ping.get()), "raw publish ping"); });
}

void pingpong(const std::string& url, std::size_t rounds) {
  const Percentiles raw = raw_pingpong(url, rounds);

  n::Notifier a, b;
  n::Bridge bridge_a(a, nats(url, true), config(url, "a", {"bench.ping"}, {"bench.pong"}));
  n::Bridge bridge_b(b, nats(url, true), config(url, "b", {"bench.pong"}, {"bench.ping"}));
  Signal back;
  nlohmann::json ping_body = payload(), pong_body = payload();
  auto echo = b.subscribe("bench.ping", [&](const n::Event& e) {
    if (e.remote()) b.instrument("bench.pong", pong_body, [] {});  // on B's dispatcher thread
  });
  auto answer = a.subscribe("bench.pong", [&](const n::Event& e) {
    if (e.remote()) back.notify();
  });
  bridge_b.start();
  bridge_a.start();
  const Percentiles bus = round_trips("nats_pingpong bus", rounds, back, [&] { a.instrument("bench.ping", ping_body, [] {}); });
  std::printf(
      "{\"bench\":\"nats_pingpong\",\"rounds\":%zu,\"raw_p50_us\":%.1f,\"raw_p99_us\":%.1f,\"bus_p50_us\":%.1f,"
      "\"bus_p99_us\":%.1f}\n",
      rounds, raw.p50_us, raw.p99_us, bus.p50_us, bus.p99_us);
  bridge_a.shutdown(10s);
  bridge_b.shutdown(10s);
}

// CPU time of the whole process so far, in seconds.
double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// Context switches so far: of the threads named "ntf-*" (the bus's), and of all threads.
struct Switches {
  std::uint64_t bus = 0;
  std::uint64_t all = 0;
};
Switches context_switches() {
  Switches out;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::string name;
    std::getline(std::ifstream(task.path() / "comm"), name);
    std::ifstream status(task.path() / "status");
    std::uint64_t switches = 0;
    for (std::string line; std::getline(status, line);) {
      if (line.starts_with("voluntary_ctxt_switches:") || line.starts_with("nonvoluntary_ctxt_switches:")) {
        switches += std::strtoull(line.c_str() + line.find(':') + 1, nullptr, 10);
      }
    }
    out.all += switches;
    if (name.starts_with("ntf-")) out.bus += switches;
  }
  return out;
}

void on_idle_message(natsConnection*, natsSubscription*, natsMsg* msg, void*) { natsMsg_Destroy(msg); }

void idle(const std::string& url, int seconds) {
  const auto window = std::chrono::seconds(seconds);
  double raw_cpu = 0;
  {
    RawConnection raw(url, false);
    raw.subscribe("order.>", on_idle_message, nullptr);
    std::this_thread::sleep_for(1s);
    const double cpu0 = process_cpu_seconds();
    std::this_thread::sleep_for(window);
    raw_cpu = process_cpu_seconds() - cpu0;
  }
  n::Notifier a, b;
  n::Bridge sender(a, nats(url, false), config(url, "a", {"order.>"}, {}));
  n::Bridge receiver(b, nats(url, false), config(url, "b", {}, {"order.>"}));
  Counter received{.target = 1};
  auto count = b.subscribe("order.placed", [&](const n::Event& e) {
    if (e.remote()) received.hit();
  });
  receiver.start();
  sender.start();
  a.instrument("order.placed", payload(), [] {});
  if (!wait_until([&] { return received.last.load() != 0; }, 10s)) {
    throw std::runtime_error("idle: the event did not arrive over NATS in 10 s: " + receiver.health().dump());
  }
  std::this_thread::sleep_for(1s);  // what follows one event (its confirmation) is over
  const Switches before = context_switches();
  const double cpu0 = process_cpu_seconds();
  std::this_thread::sleep_for(window);
  const double bus_cpu = process_cpu_seconds() - cpu0;
  const Switches after = context_switches();
  const double s = static_cast<double>(seconds);
  std::printf(
      "{\"bench\":\"idle\",\"seconds\":%d,\"cpu_percent\":%.4f,\"raw_cpu_percent\":%.4f,\"wakeups_per_s\":%.2f,"
      "\"all_threads_wakeups_per_s\":%.2f}\n",
      seconds, 100.0 * bus_cpu / s, 100.0 * raw_cpu / s, static_cast<double>(after.bus - before.bus) / s,
      static_cast<double>(after.all - before.all) / s);
  sender.shutdown(10s);
  receiver.shutdown(10s);
}

// ---- nats_steady ------------------------------------------------------------------------------

// This program run again with `arguments` as a receiving process (popen): construction returns once
// it printed "ready"; result() reads the JSON line it prints at the end; destruction waits for it
// to exit (it always does, within 120 s).
class ReceiverProcess {
 public:
  ReceiverProcess(std::string what, const std::string& arguments) : what_(std::move(what)) {
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    const std::string command = "'" + self + "' " + arguments;
    child_ = popen(command.c_str(), "r");
    if (child_ == nullptr) throw std::runtime_error(what_ + ": cannot start " + command);
    if (read_line() != "ready\n") {
      pclose(child_);
      throw std::runtime_error(what_ + ": the receiver did not start");
    }
  }
  ~ReceiverProcess() { pclose(child_); }
  ReceiverProcess(const ReceiverProcess&) = delete;
  ReceiverProcess& operator=(const ReceiverProcess&) = delete;

  nlohmann::json result() {
    const std::string line = read_line();
    if (line.empty()) throw std::runtime_error(what_ + ": the receiver failed");
    return nlohmann::json::parse(line);
  }

 private:
  std::string read_line() {
    char line[512] = {};
    return std::fgets(line, sizeof line, child_) == nullptr ? std::string() : std::string(line);
  }
  std::string what_;
  FILE* child_ = nullptr;
};

constexpr int kSteadyRate = 20000;

std::int64_t monotonic_ns() { return Clock::now().time_since_epoch().count(); }

// The receiving process: prints "ready", then one JSON object once `events` steady and `events`
// full ticks arrived (or 120 s passed). Returns the exit status.
int steady_receiver(const std::string& url, std::size_t events) {
  n::Notifier b;
  n::Bridge receiver(b, nats(url, false), config(url, "b", {}, {"steady.>", "full.>"}));
  struct Phase {
    std::size_t count = 0;
    double first_cpu = 0, last_cpu = 0;
  };
  std::mutex mutex;
  Phase steady, full;
  std::vector<std::int64_t> e2e;
  e2e.reserve(events);
  std::condition_variable done;
  // CPU is read at the first and the last event of a phase only: a getrusage per event would
  // be part of what is measured.
  const auto take = [&](Phase& phase, const n::Event& e, bool latency) {
    std::lock_guard lock(mutex);
    ++phase.count;
    if (phase.count == 1) phase.first_cpu = process_cpu_seconds();
    if (phase.count == events) phase.last_cpu = process_cpu_seconds();
    if (latency) e2e.push_back(monotonic_ns() - e.payload()["t"].get<std::int64_t>());
    if (full.count == events) done.notify_all();
  };
  auto on_steady = b.subscribe("steady.tick", [&](const n::Event& e) {
    if (e.remote()) take(steady, e, true);
  });
  auto on_full = b.subscribe("full.tick", [&](const n::Event& e) {
    if (e.remote()) take(full, e, false);
  });
  receiver.start();
  std::printf("ready\n");
  std::fflush(stdout);
  std::unique_lock lock(mutex);
  const bool all = done.wait_for(lock, 120s, [&] { return full.count == events; });
  if (!all || steady.count != events) {
    std::fprintf(stderr, "steady receiver: %zu steady and %zu full of %zu each arrived\n", steady.count, full.count,
                 events);
    return 1;
  }
  std::sort(e2e.begin(), e2e.end());
  const auto per_event_us = [](const Phase& p) { return 1e6 * (p.last_cpu - p.first_cpu) / static_cast<double>(p.count - 1); };
  std::printf("{\"recv_cpu_us_per_event\":%.3f,\"full_recv_cpu_us_per_event\":%.3f,\"e2e_p50_us\":%.1f,\"e2e_p99_us\":%.1f}\n",
              per_event_us(steady), per_event_us(full), percentile(e2e, 0.50) / 1000.0, percentile(e2e, 0.99) / 1000.0);
  std::fflush(stdout);
  lock.unlock();
  receiver.shutdown(10s);
  return 0;
}

// The same with a raw cnats subscriber that only counts (the baseline for the receiving side):
// the subject tells the phase; no e2e (reported as 0), as reading "t" would mean parsing bodies.
int steady_raw_receiver(const std::string& url, std::size_t events) {
  struct Counts {
    std::mutex mutex;
    std::condition_variable done;
    std::size_t steady = 0, full = 0, events = 0;
    double steady_first = 0, steady_last = 0, full_first = 0, full_last = 0;
  } counts;
  counts.events = events;
  RawConnection connection(url, false);
  const auto on_message = [](natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
    auto& c = *static_cast<Counts*>(closure);
    const bool is_full = std::strncmp(natsMsg_GetSubject(msg), "bench.full.", 11) == 0;
    natsMsg_Destroy(msg);
    std::lock_guard lock(c.mutex);
    std::size_t& count = is_full ? c.full : c.steady;
    ++count;
    if (count == 1) (is_full ? c.full_first : c.steady_first) = process_cpu_seconds();
    if (count == c.events) (is_full ? c.full_last : c.steady_last) = process_cpu_seconds();
    if (c.full == c.events) c.done.notify_all();
  };
  connection.subscribe("bench.steady.>", on_message, &counts);
  connection.subscribe("bench.full.>", on_message, &counts);
  std::printf("ready\n");
  std::fflush(stdout);
  std::unique_lock lock(counts.mutex);
  const bool all = counts.done.wait_for(lock, 120s, [&] { return counts.full == events; });
  if (!all || counts.steady != events) {
    std::fprintf(stderr, "steady raw receiver: %zu steady and %zu full of %zu each arrived\n", counts.steady, counts.full,
                 events);
    return 1;
  }
  const double n_events = static_cast<double>(events - 1);
  std::printf("{\"recv_cpu_us_per_event\":%.3f,\"full_recv_cpu_us_per_event\":%.3f,\"e2e_p50_us\":0,\"e2e_p99_us\":0}\n",
              1e6 * (counts.steady_last - counts.steady_first) / n_events,
              1e6 * (counts.full_last - counts.full_first) / n_events);
  std::fflush(stdout);
  return 0;
}

void steady(const std::string& url, int seconds, bool headers, bool raw_receiver) {
  const std::size_t events = static_cast<std::size_t>(kSteadyRate) * static_cast<std::size_t>(seconds);
  ReceiverProcess child("nats_steady", std::string(raw_receiver ? "--steady-raw-receiver " : "--steady-receiver ") +
                                          url + " " + std::to_string(events));
  n::Notifier a;
  n::Bridge sender(a, nats(url, false, headers), config(url, "a", {"steady.>", "full.>"}, {}));
  sender.start();
  std::this_thread::sleep_for(200ms);  // the receiver's subscription has reached the server

  std::vector<std::int64_t> instrument_ns(events);
  const auto interval = std::chrono::nanoseconds(1'000'000'000 / kSteadyRate);
  // The pacing alone (one sleep_until per event, no instrument): part of send_cpu_us_per_event.
  auto start = Clock::now();
  double cpu0 = process_cpu_seconds();
  for (std::size_t i = 0; i < events; ++i) {
    std::this_thread::sleep_until(start + interval * static_cast<std::int64_t>(i));
    instrument_ns[i] = (Clock::now() - start).count();
  }
  const double pacing_cpu = process_cpu_seconds() - cpu0;
  start = Clock::now();
  cpu0 = process_cpu_seconds();
  for (std::size_t i = 0; i < events; ++i) {
    std::this_thread::sleep_until(start + interval * static_cast<std::int64_t>(i));
    const auto t0 = Clock::now();
    a.instrument("steady.tick", {{"t", monotonic_ns()}, {"i", i}}, [] {});
    instrument_ns[i] = (Clock::now() - t0).count();
  }
  const double send_cpu = process_cpu_seconds() - cpu0;
  std::this_thread::sleep_for(1s);  // the steady phase is over on both sides
  cpu0 = process_cpu_seconds();
  for (std::size_t i = 0; i < events; ++i) a.instrument("full.tick", {{"t", 0}, {"i", i}}, [] {});
  if (!sender.flush(60s)) throw std::runtime_error("nats_steady: the sender's flush failed: " + sender.health().dump());
  const double full_send_cpu = process_cpu_seconds() - cpu0;
  const nlohmann::json received = child.result();
  std::sort(instrument_ns.begin(), instrument_ns.end());
  const double n_events = static_cast<double>(events);
  std::printf(
      "{\"bench\":\"nats_steady\",\"rate\":%d,\"headers\":%s,\"receiver\":\"%s\",\"seconds\":%d,\"send_cpu_us_per_event\":%.3f,\"recv_cpu_us_per_event\":%.3f,"
      "\"full_send_cpu_us_per_event\":%.3f,\"full_recv_cpu_us_per_event\":%.3f,\"e2e_p50_us\":%.1f,\"e2e_p99_us\":%.1f,"
      "\"instrument_p99_ns\":%lld,\"pacing_cpu_us_per_event\":%.3f}\n",
      kSteadyRate, headers ? "true" : "false", raw_receiver ? "raw" : "bus", seconds, 1e6 * send_cpu / n_events, received["recv_cpu_us_per_event"].get<double>(),
      1e6 * full_send_cpu / n_events, received["full_recv_cpu_us_per_event"].get<double>(),
      received["e2e_p50_us"].get<double>(), received["e2e_p99_us"].get<double>(),
      static_cast<long long>(percentile(instrument_ns, 0.99)), 1e6 * pacing_cpu / n_events);
  sender.shutdown(10s);
}

// ---- nats_receive ---------------------------------------------------------------------------

// A counter in a file mapped by two processes: the receiver stores how many messages it has, the
// publisher reads it to keep at most kReceiveWindow messages in flight.
class SharedProgress {
 public:
  // Creates the file (parent).
  SharedProgress() {
    char path[] = "/tmp/bench_nats_progress_XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0) throw std::runtime_error("nats_receive: cannot create a progress file");
    path_ = path;
    owner_ = true;
    map(fd, true);
  }
  // Opens the file of `path` (child).
  explicit SharedProgress(std::string path) : path_(std::move(path)) {
    const int fd = open(path_.c_str(), O_RDWR);
    if (fd < 0) throw std::runtime_error("nats_receive: cannot open " + path_);
    map(fd, false);
  }
  ~SharedProgress() {
    munmap(static_cast<void*>(value_), sizeof(std::atomic<std::uint64_t>));
    if (owner_) unlink(path_.c_str());
  }
  SharedProgress(const SharedProgress&) = delete;
  SharedProgress& operator=(const SharedProgress&) = delete;

  const std::string& path() const { return path_; }
  std::atomic<std::uint64_t>& value() { return *value_; }

 private:
  void map(int fd, bool create) {
    if (create && ftruncate(fd, 4096) != 0) {
      close(fd);
      throw std::runtime_error("nats_receive: cannot size " + path_);
    }
    void* at = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (at == MAP_FAILED) throw std::runtime_error("nats_receive: cannot map " + path_);
    static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
    value_ = create ? new (at) std::atomic<std::uint64_t>(0) : static_cast<std::atomic<std::uint64_t>*>(at);
  }
  std::string path_;
  bool owner_ = false;
  std::atomic<std::uint64_t>* value_ = nullptr;
};

// How many messages the nats_receive publisher keeps in flight: the receiver runs flat out with a
// bounded backlog, as a receiver that keeps up with its sender does (an unbounded burst measures
// the growth of the receiver's buffers as much as the receiving).
constexpr std::uint64_t kReceiveWindow = 4096;

// The receiving process of nats_receive: subscribes as `kind` says (raw: a cnats subscriber that
// counts; bus: a Bridge with one listener that counts; bus_reads: the same listener also reads a
// payload member), prints "ready", then {"cpu_us_per_event":...} once `events` arrived (120 s at
// most). CPU: the whole process from the first to the last message.
int receive_only(const std::string& kind, const std::string& url, std::size_t events, const std::string& progress_path) {
  SharedProgress progress(progress_path);
  struct Count {
    std::mutex mutex;
    std::condition_variable done;
    std::size_t count = 0, target = 0;
    double first = 0, last = 0;
    std::int64_t checksum = 0;
    std::atomic<std::uint64_t>* progress = nullptr;
    void hit(std::int64_t value) {
      std::lock_guard lock(mutex);
      checksum += value;
      progress->store(++count, std::memory_order_relaxed);
      if (count == 1) first = process_cpu_seconds();
      if (count == target) {
        last = process_cpu_seconds();
        done.notify_all();
      }
    }
  } c;
  c.target = events;
  c.progress = &progress.value();
  std::unique_ptr<RawConnection> raw;
  std::unique_ptr<n::Notifier> notifier;
  std::unique_ptr<n::Bridge> bridge;
  n::Subscription listener;
  if (kind == "raw") {
    raw = std::make_unique<RawConnection>(url, false);
    raw->subscribe("bench.order.>", [](natsConnection*, natsSubscription*, natsMsg* msg, void* self) {
      natsMsg_Destroy(msg);
      static_cast<Count*>(self)->hit(1);
    }, &c);
  } else {
    const bool reads = kind == "bus_reads";
    notifier = std::make_unique<n::Notifier>();
    bridge = std::make_unique<n::Bridge>(*notifier, nats(url, false), config(url, "b", {}, {"order.>"}));
    listener = notifier->subscribe("order.placed", [&c, reads](const n::Event& e) {
      if (e.remote()) c.hit(reads ? e.payload()["order_id"].get<std::int64_t>() : 1);
    });
    bridge->start();
  }
  std::printf("ready\n");
  std::fflush(stdout);
  std::unique_lock lock(c.mutex);
  if (!c.done.wait_for(lock, 120s, [&] { return c.count == events; })) {
    std::fprintf(stderr, "receiver %s: %zu of %zu arrived\n", kind.c_str(), c.count, events);
    return 1;
  }
  std::printf("{\"cpu_us_per_event\":%.3f,\"checksum\":%lld}\n", 1e6 * (c.last - c.first) / static_cast<double>(events - 1),
              static_cast<long long>(c.checksum));
  std::fflush(stdout);
  lock.unlock();
  if (bridge) bridge->shutdown(10s);
  return 0;
}

// Runs receive_only(kind) in a child process and publishes `messages` to it as fast as a raw
// cnats publisher can; returns the child's CPU per event.
double receive_cpu_us_per_event(const std::string& url, const std::string& kind, const std::vector<n::Message>& messages) {
  SharedProgress progress;
  ReceiverProcess child("nats_receive " + kind, "--receive-only " + kind + " " + url + " " +
                                                    std::to_string(messages.size()) + " " + progress.path());
  std::this_thread::sleep_for(200ms);  // the receiver's subscription has reached the server
  RawConnection publisher(url, false);
  const auto deadline = Clock::now() + 60s;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    while (i >= kReceiveWindow + progress.value().load(std::memory_order_relaxed)) {
      if (Clock::now() > deadline) throw std::runtime_error("nats_receive: the " + kind + " receiver stalled");
      check(natsConnection_Flush(publisher.nc), "nats_receive flush");  // what is buffered goes out
      std::this_thread::sleep_for(20us);
    }
    const n::Message& m = messages[i];
    check(natsConnection_Publish(publisher.nc, m.subject.c_str(), m.body.data(), static_cast<int>(m.body.size())),
          "nats_receive publish");
  }
  check(natsConnection_FlushTimeout(publisher.nc, 60000), "nats_receive flush");
  const nlohmann::json result = child.result();
  const std::int64_t expected = kind == "bus_reads" ? 12345 * static_cast<std::int64_t>(messages.size())
                                                    : static_cast<std::int64_t>(messages.size());
  if (result["checksum"] != expected) throw std::runtime_error("nats_receive: the " + kind + " receiver's checksum is wrong");
  return result["cpu_us_per_event"].get<double>();
}

// The same N distinct envelopes (bodies only, the default) received by a raw counting subscriber,
// by a Bridge whose one listener counts, and by one whose listener reads a payload member: three
// rounds in turn, each figure the median of its three (the raw figure moves from run to run on a
// shared machine as much as the bus's does); ratios are of the medians, and of each round.
void receive(const std::string& url, std::size_t events) {
  std::vector<n::Message> messages;
  messages.reserve(events);
  for (std::size_t i = 0; i < events; ++i) messages.push_back(wire_message("order.placed", "bench.order.placed", i + 1));
  constexpr int kRounds = 3;
  std::vector<double> raw, bus, reads;
  std::string round_ratios;
  for (int round = 0; round < kRounds; ++round) {
    raw.push_back(receive_cpu_us_per_event(url, "raw", messages));
    bus.push_back(receive_cpu_us_per_event(url, "bus", messages));
    reads.push_back(receive_cpu_us_per_event(url, "bus_reads", messages));
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%s%.3f", round == 0 ? "" : ",", bus.back() / raw.back());
    round_ratios += ratio;
  }
  const auto median = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  const double raw_median = median(raw), bus_median = median(bus), reads_median = median(reads);
  std::printf(
      "{\"bench\":\"nats_receive\",\"events\":%zu,\"rounds\":%d,\"raw_cpu_us_per_event\":%.3f,\"bus_cpu_us_per_event\":%.3f,"
      "\"ratio\":%.3f,\"round_ratios\":[%s],\"bus_reading_payload_cpu_us_per_event\":%.3f,\"ratio_reading_payload\":%.3f}\n",
      events, kRounds, raw_median, bus_median, bus_median / raw_median, round_ratios.c_str(), reads_median,
      reads_median / raw_median);
}

}  // namespace

// ---- nats_forward with 1, 2 and 4 instrumenting threads ----------------------------------------

// Runs `body(t, count)` on `threads` threads, thread t taking `events / threads` items (the first
// thread also the remainder), from one start signal; returns when all have returned.
void on_threads(std::size_t threads, std::size_t events, const std::function<void(std::size_t, std::size_t)>& body) {
  std::atomic<bool> go{false};
  std::vector<std::thread> running;
  for (std::size_t t = 0; t < threads; ++t) {
    const std::size_t count = events / threads + (t == 0 ? events % threads : 0);
    running.emplace_back([&, t, count] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t, count);
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& thread : running) thread.join();
}

struct ThreadedRun {
  double msgs_per_s = 0;
  double cpu_us_per_event = 0;
};

// By hand: every thread writes the bus's envelope bytes itself (the envelope's fixed fields
// copied from one made once, its own sequence, the payload dumped per event), then publishes them
// on one shared cnats connection; a second connection counts what arrives. From the start signal
// to the last message seen. Cheaper than what the bus does per event (no id, no clock, no event).
ThreadedRun hand_forward_threads(const std::string& url, std::size_t events, std::size_t threads) {
  const n::Message m = wire_message("order.placed", "bench.order.placed", 1);
  const std::string prefix = m.body.substr(0, m.body.find("\"sequence\":") + 11);  // up to the sequence's digits
  Counter received{.target = events};
  RawConnection publisher(url, false), subscriber(url, false);
  subscriber.subscribe(m.subject.c_str(), Counter::on_message, &received);
  std::atomic<std::uint64_t> sequence{0};
  const double cpu_before = process_cpu_seconds();
  const auto first = Clock::now();
  on_threads(threads, events, [&](std::size_t, std::size_t count) {
    const nlohmann::json body = payload();
    std::string envelope;
    for (std::size_t i = 0; i < count; ++i) {
      envelope = prefix;
      envelope += std::to_string(sequence.fetch_add(1, std::memory_order_relaxed) + 1);
      envelope += ",\"payload\":";
      envelope += body.dump();
      envelope += '}';
      check(natsConnection_Publish(publisher.nc, m.subject.c_str(), envelope.data(), static_cast<int>(envelope.size())),
            "hand publish");
    }
  });
  check(natsConnection_FlushTimeout(publisher.nc, 60000), "hand flush");
  if (!wait_until([&] { return received.last.load() != 0; }, 60s)) {
    throw std::runtime_error("nats_forward threads, by hand: " + std::to_string(received.count.load()) + " of " +
                             std::to_string(events) + " messages arrived in 60 s");
  }
  const double cpu = process_cpu_seconds() - cpu_before;
  return {static_cast<double>(events) / received.seconds_since(first), cpu * 1e6 / static_cast<double>(events)};
}

// The bus: every thread instruments "order.placed" with payload(); the Bridge (default NATS
// options) forwards; the same counting connection as by hand receives.
ThreadedRun bus_forward_threads(const std::string& url, std::size_t events, std::size_t threads) {
  Counter received{.target = events};
  RawConnection subscriber(url, false);
  subscriber.subscribe("bench.order.placed", Counter::on_message, &received);
  n::Notifier a;
  n::Bridge sender(a, nats(url, false), config(url, "a", {"order.>"}, {}));
  sender.start();
  const double cpu_before = process_cpu_seconds();
  const auto first = Clock::now();
  on_threads(threads, events, [&](std::size_t, std::size_t count) {
    nlohmann::json body = payload();
    for (std::size_t i = 0; i < count; ++i) a.instrument("order.placed", body, [] {});
  });
  const bool all = wait_until([&] { return received.last.load() != 0; }, 60s);
  const double cpu = process_cpu_seconds() - cpu_before;
  const nlohmann::json health = sender.health();
  if (!all || dropped(health) != 0) {
    throw std::runtime_error("nats_forward threads, bus: " + std::to_string(received.count.load()) + " of " +
                             std::to_string(events) + " events arrived (60 s max); sender " +
                             health["counters"].dump());
  }
  sender.shutdown(30s);
  return {static_cast<double>(events) / received.seconds_since(first), cpu * 1e6 / static_cast<double>(events)};
}

void forward_threads(const std::string& url, std::size_t events) {
  for (const std::size_t threads : {1, 2, 4}) {
    const ThreadedRun hand = hand_forward_threads(url, events, threads);
    const ThreadedRun bus = bus_forward_threads(url, events, threads);
    std::printf(
        "{\"bench\":\"nats_forward\",\"threads\":%zu,\"events\":%zu,\"hand_msgs_per_s\":%.0f,\"bus_msgs_per_s\":%.0f,"
        "\"ratio\":%.3f,\"hand_cpu_us_per_event\":%.2f,\"bus_cpu_us_per_event\":%.2f,\"cpu_ratio\":%.2f}\n",
        threads, events, hand.msgs_per_s, bus.msgs_per_s, bus.msgs_per_s / hand.msgs_per_s, hand.cpu_us_per_event,
        bus.cpu_us_per_event, bus.cpu_us_per_event / hand.cpu_us_per_event);
  }
}

int main(int argc, char** argv) {
  // Keep stdout to the JSON lines: library logging goes to stderr, warnings and worse only.
  spdlog::set_default_logger(spdlog::stderr_color_mt("bench_nats"));
  spdlog::set_level(spdlog::level::warn);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each JSON line as soon as it is measured
  if (argc == 6 && std::string(argv[1]) == "--receive-only") {
    try {
      return receive_only(argv[2], argv[3], std::strtoull(argv[4], nullptr, 10), argv[5]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_nats --receive-only: %s\n", e.what());
      return 1;
    }
  }
  if (argc >= 2 && std::string(argv[1]) == "--receive") {  // nats_receive alone
    try {
      test_support::NatsServer server;
      receive(server.url(), argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200000);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_nats --receive: %s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (argc >= 2 && std::string(argv[1]) == "--steady") {  // nats_steady alone: [seconds] [headers] [receiver]
    try {
      const std::string headers = argc > 3 ? argv[3] : "default";
      test_support::NatsServer server;
      steady(server.url(), argc > 2 ? std::atoi(argv[2]) : 10,
             headers == "default" ? n::NatsOptions{}.headers : headers == "on", argc > 4 && std::string(argv[4]) == "raw");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_nats --steady: %s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (argc >= 2 && std::string(argv[1]) == "--threads") {  // nats_forward with 1, 2, 4 threads alone
    try {
      test_support::NatsServer server;
      forward_threads(server.url(), argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200000);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_nats --threads: %s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (argc == 4 && (std::string(argv[1]) == "--steady-receiver" || std::string(argv[1]) == "--steady-raw-receiver")) {
    const bool raw = std::string(argv[1]) == "--steady-raw-receiver";
    try {
      const std::size_t events = std::strtoull(argv[3], nullptr, 10);
      return raw ? steady_raw_receiver(argv[2], events) : steady_receiver(argv[2], events);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_nats %s: %s\n", argv[1], e.what());
      return 1;
    }
  }
  const std::size_t events = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200000;
  const std::size_t rounds = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 2000;
  const int idle_seconds = argc > 3 ? std::atoi(argv[3]) : 10;
  const int steady_seconds = argc > 4 ? std::atoi(argv[4]) : 10;
  const std::string steady_headers = argc > 5 ? argv[5] : "default";
  const std::string steady_receiver_kind = argc > 6 ? argv[6] : "bus";
  if (events == 0 || rounds == 0 || idle_seconds <= 0 || steady_seconds <= 0 ||
      (steady_headers != "default" && steady_headers != "on" && steady_headers != "off") ||
      (steady_receiver_kind != "bus" && steady_receiver_kind != "raw")) {
    std::fprintf(stderr,
                 "usage: bench_nats [events > 0] [rounds > 0] [idle seconds > 0] [steady seconds > 0] "
                 "[steady headers: default|on|off] [steady receiver: bus|raw]\n");
    return 2;
  }
  try {
    test_support::NatsServer server;  // stopped by PID when this scope ends, after every connection is gone
    forward(server.url(), events, false);
    forward(server.url(), events, true);
    forward_threads(server.url(), events);
    receive(server.url(), events);
    pingpong(server.url(), rounds);
    idle(server.url(), idle_seconds);
    steady(server.url(), steady_seconds,
           steady_headers == "default" ? n::NatsOptions{}.headers : steady_headers == "on", steady_receiver_kind == "raw");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_nats: %s\n", e.what());
    return 1;
  }
  return 0;
}
