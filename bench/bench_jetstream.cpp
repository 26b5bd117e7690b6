// The JetStream transport against raw cnats, in the same run, against a nats-server -js it starts
// on 127.0.0.1 (file storage, in the harness's temp dir). One JSON line:
//   {"bench":"jetstream_forward","events":N,"raw_msgs_per_s":...,"bus_msgs_per_s":...,"ratio":...,
//    "e2e_p50_us":...,"e2e_p99_us":...,"e2e_rate":...}
// - raw: js_PublishMsgAsync of the bytes the Bridge sends for an event (envelope body, headers and
//   Nats-Msg-Id), with the transport's default pending limit (4096), then js_PublishAsyncComplete;
// - bus: instrument() on a Bridge forwarding over jetstream:// until flush() says every event was
//   acknowledged by the server;
//   both timed from the first publish to the last acknowledgement, alternating, medians of 3 rounds;
// - e2e: from instrument() to the call of a durable handler on another Bridge (the ack follows the
//   call), at e2e_rate events per second, p50 and p99.
// Usage: bench_jetstream [events] [e2e_events]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nats/nats.h>

#include "nats_server.hpp"
#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/envelope.hpp"
#include "notifications/logging.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/jetstream.hpp"
#include "wait.hpp"

namespace n = notifications;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr const char* kStream = "BENCH";
const int kMaxPending = n::JetStreamOptions{}.max_pending_acks;  // the transport's default

void check(natsStatus s, const std::string& what) {
  if (s != NATS_OK) throw std::runtime_error(what + ": " + natsStatus_GetText(s));
}

nlohmann::json payload() {
  return {{"order_id", 1234567}, {"customer", "c-42"}, {"total", 99.95}, {"currency", "EUR"},
          {"items", nlohmann::json::array({{{"sku", "A-1"}, {"qty", 2}}, {{"sku", "B-7"}, {"qty", 1}}})}};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

n::JetStreamOptions jetstream_options(const std::string& url,
                                     n::JetStreamOptions::ConsumerType type = n::JetStreamOptions::ConsumerType::pull) {
  n::JetStreamOptions options;
  options.consumer_type = type;
  options.connection.servers = {url};
  options.stream = kStream;
  options.subjects = {"bench.>"};
  return options;
}

n::BridgeConfig bridge_config(const std::string& app, bool forward) {
  n::BridgeConfig c;
  c.app = app;
  c.prefix = "bench";
  c.subscribe = {};
  if (!forward) c.forward = {};
  c.queue_capacity = 1 << 20;
  c.queue_max_bytes = 0;
  c.block_timeout = 30s;
  return c;
}

// Empties the stream between rounds, so that every round writes to the same (empty) store.
void purge(natsConnection* nc) {
  jsCtx* js = nullptr;
  check(natsConnection_JetStream(&js, nc, nullptr), "jetstream context");
  js_PurgeStream(js, kStream, nullptr, nullptr);
  jsCtx_Destroy(js);
}

// Raw cnats: js_PublishMsgAsync of `events` messages with the Bridge's bytes, each its own id.
double raw_round(natsConnection* nc, const n::Message& m, int events, int round) {
  jsOptions options;
  jsOptions_Init(&options);
  options.PublishAsync.MaxPending = kMaxPending;
  jsCtx* js = nullptr;
  check(natsConnection_JetStream(&js, nc, &options), "jetstream context");
  const auto start = Clock::now();
  for (int i = 0; i < events; ++i) {
    natsMsg* msg = nullptr;
    check(natsMsg_Create(&msg, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size())), "natsMsg_Create");
    for (const auto& [key, value] : m.headers) check(natsMsgHeader_Add(msg, key.c_str(), value.c_str()), "header");
    const std::string id = "raw-" + std::to_string(round) + "-" + std::to_string(i);
    jsPubOptions publish;
    jsPubOptions_Init(&publish);
    publish.MsgId = id.c_str();
    const natsStatus s = js_PublishMsgAsync(js, &msg, &publish);
    if (s != NATS_OK) natsMsg_Destroy(msg);
    check(s, "js_PublishMsgAsync");
  }
  jsPubOptions wait;
  jsPubOptions_Init(&wait);
  wait.MaxWait = 60'000;
  check(js_PublishAsyncComplete(js, &wait), "js_PublishAsyncComplete");
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  jsCtx_Destroy(js);
  return events / seconds;
}

// The Bridge: instrument() until flush() confirms every event was acknowledged.
double bus_round(const std::string& url, int events) {
  n::Notifier notifier;
  n::Bridge bridge(notifier, n::make_jetstream_transport(jetstream_options(url)), bridge_config("bench", true));
  bridge.start();
  for (int i = 0; i < 100; ++i) notifier.instrument("warm.up", payload());
  if (!bridge.flush(30s)) throw std::runtime_error("bus warm-up not acknowledged");
  const auto start = Clock::now();
  for (int i = 0; i < events; ++i) notifier.instrument("order.placed", payload());
  if (!bridge.flush(120s)) throw std::runtime_error("bus round not acknowledged within 120 s");
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  bridge.shutdown(10s);
  return events / seconds;
}

// instrument() to the durable handler's call on another Bridge (reading with consumers of `type`),
// paced at `rate` per second.
std::vector<double> end_to_end(const std::string& url, int events, int rate, n::JetStreamOptions::ConsumerType type) {
  n::Notifier producer_bus;
  n::Notifier consumer_bus;
  n::Bridge producer(producer_bus, n::make_jetstream_transport(jetstream_options(url)), bridge_config("producer", true));
  n::Bridge consumer(consumer_bus, n::make_jetstream_transport(jetstream_options(url, type)),
                     bridge_config("consumer", false));
  std::mutex mutex;
  std::vector<double> latencies_us;
  latencies_us.reserve(static_cast<std::size_t>(events));
  const bool push = type == n::JetStreamOptions::ConsumerType::push;
  consumer.subscribe_durable(push ? "e2e_push" : "e2e", "latency.probe", [&](const n::Event& event, n::DurableContext&) {
    const auto sent = Clock::time_point(Clock::duration(event.payload()["t"].get<Clock::rep>()));
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - sent).count();
    std::lock_guard lock(mutex);
    latencies_us.push_back(us);
  });
  producer.start();
  consumer.start();
  std::this_thread::sleep_for(200ms);  // the consumer exists (and its first pull request is with the server)
  const auto interval = std::chrono::nanoseconds(1'000'000'000LL / rate);
  auto next = Clock::now();
  for (int i = 0; i < events; ++i) {
    std::this_thread::sleep_until(next);
    next += interval;
    producer_bus.instrument("latency.probe", {{"t", Clock::now().time_since_epoch().count()}});
  }
  const bool all = test_support::wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return latencies_us.size() >= static_cast<std::size_t>(events);
      },
      60s);
  producer.shutdown(10s);
  consumer.shutdown(10s);
  if (!all) throw std::runtime_error("end to end: not every event reached the durable handler within 60 s");
  std::lock_guard lock(mutex);
  return latencies_us;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int events = argc > 1 ? std::stoi(argv[1]) : 50'000;
    const int e2e_events = argc > 2 ? std::stoi(argv[2]) : 2'000;
    const int e2e_rate = 1'000;
    n::set_log_level(n::LogLevel::warn);
    test_support::NatsServerOptions server_options;
    server_options.jetstream = true;
    test_support::NatsServer server(server_options);
    const std::string url = server.url();
    {
      // The stream, as the transport provisions it (its first start creates it).
      auto transport = n::make_jetstream_transport(jetstream_options(url));
      transport->start();
      transport->stop(Clock::now() + 5s);
    }
    natsConnection* nc = nullptr;
    check(natsConnection_ConnectTo(&nc, url.c_str()), "raw connect");
    n::Envelope e = n::envelope_from_event(n::Event("order.placed", payload()), "bench",
                                           "00000000-0000-4000-8000-000000000000");
    e.sequence = 1;
    const n::Message m = n::message_from_envelope(e, "bench.order.placed");
    std::vector<double> raw, bus;
    for (int round = 0; round < 3; ++round) {
      purge(nc);
      raw.push_back(raw_round(nc, m, events, round));
      purge(nc);
      bus.push_back(bus_round(url, events));
    }
    purge(nc);
    natsConnection_Destroy(nc);
    const std::vector<double> latencies = end_to_end(url, e2e_events, e2e_rate, n::JetStreamOptions::ConsumerType::pull);
    const std::vector<double> push_latencies =
        end_to_end(url, e2e_events, e2e_rate, n::JetStreamOptions::ConsumerType::push);
    const double raw_rate = median(raw), bus_rate = median(bus);
    std::printf(
        "{\"bench\":\"jetstream_forward\",\"events\":%d,\"raw_msgs_per_s\":%.0f,\"bus_msgs_per_s\":%.0f,"
        "\"ratio\":%.3f,\"e2e_p50_us\":%.0f,\"e2e_p99_us\":%.0f,\"e2e_push_p50_us\":%.0f,\"e2e_push_p99_us\":%.0f,"
        "\"e2e_rate\":%d,\"e2e_events\":%d}\n",
        events, raw_rate, bus_rate, bus_rate / raw_rate, percentile(latencies, 0.50), percentile(latencies, 0.99),
        percentile(push_latencies, 0.50), percentile(push_latencies, 0.99), e2e_rate, e2e_events);
    return 0;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "bench_jetstream: %s\n", ex.what());
    return 1;
  }
}
