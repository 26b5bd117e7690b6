// TransportBase's numbered lifecycle promises (include/notifications/transport.hpp), one test
// each, named TransportBasePromiseN_..., against a transport that records its hooks and can hold
// a publish() or a stop() in flight. No server, no threads but the test's own.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "notifications/fork.hpp"
#include "notifications/transport.hpp"

namespace n = notifications;
using namespace std::chrono_literals;

namespace {

n::Deadline soon() { return std::chrono::steady_clock::now() + 5s; }

// A gate a hook waits at until the test opens it (bounded: a test that forgets fails, not hangs).
class Gate {
 public:
  void close() {
    std::lock_guard lock(mutex_);
    open_ = false;
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    changed_.notify_all();
  }
  // Marks the caller as arrived, then waits up to 10 s for the gate to open.
  void pass() {
    std::unique_lock lock(mutex_);
    ++arrived_;
    changed_.notify_all();
    changed_.wait_for(lock, 10s, [&] { return open_; });
  }
  bool wait_arrived(int count) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, 10s, [&] { return arrived_ >= count; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool open_ = true;
  int arrived_ = 0;
};

// Thread-safety: the hooks are called as TransportBase promises; the counters are atomics.
class RecordingTransport final : public n::TransportBase {
 public:
  ~RecordingTransport() override { stop(soon()); }
  std::string kind() const override { return "recording"; }
  n::TransportCapabilities capabilities() const override { return {}; }

  std::atomic<int> starts{0}, publishes{0}, subscribes{0}, unsubscribes{0}, stops{0};
  std::atomic<int> publishes_during_stop{0};
  std::atomic<bool> fail_next_start{false};
  std::atomic<bool> stopping{false};
  Gate publish_gate, stop_gate;
  n::DeliveryHandler handler;  // the last subscription's

 protected:
  void do_start() override {
    ++starts;
    if (fail_next_start.exchange(false)) throw n::TransportError("recording: refused to start");
  }
  n::PublishResult do_publish(std::span<const n::Message> batch) override {
    if (stopping.load()) ++publishes_during_stop;
    ++publishes;
    publish_gate.pass();
    return n::PublishResult{batch.size(), true, ""};
  }
  void do_subscribe(std::uint64_t, const std::string&, const n::DeliveryOptions&, n::DeliveryHandler h) override {
    ++subscribes;
    handler = std::move(h);
  }
  void do_unsubscribe(std::uint64_t) override { ++unsubscribes; }
  bool do_flush(n::Deadline) override { return true; }
  void do_stop(n::Deadline) override {
    stopping = true;
    ++stops;
    stop_gate.pass();
  }
  nlohmann::json do_health() const override { return {{"publishes", publishes.load()}}; }
};

std::vector<n::Message> one_message() { return {n::Message{"a.b", "{}", {}}}; }

}  // namespace

TEST(TransportBase, TransportBasePromise1_SubscribeIsRefusedBeforeStartAndAfterStop) {
  RecordingTransport t;
  EXPECT_THROW(t.subscribe("a.>", {}, [](n::Delivery&&) {}), n::TransportError);
  t.start();
  const auto id = t.subscribe("a.>", {}, [](n::Delivery&&) {});
  t.stop(soon());
  EXPECT_THROW(t.subscribe("a.>", {}, [](n::Delivery&&) {}), n::TransportError);
  t.unsubscribe(id);  // does nothing after stop
  EXPECT_EQ(t.subscribes.load(), 1);
  EXPECT_EQ(t.unsubscribes.load(), 0);
}

TEST(TransportBase, TransportBasePromise2_AFailedStartMayBeRetriedAStartAfterStopThrows) {
  RecordingTransport t;
  t.fail_next_start = true;
  EXPECT_THROW(t.start(), n::TransportError);
  EXPECT_EQ(t.state(), n::TransportBase::State::created);
  t.start();
  EXPECT_EQ(t.state(), n::TransportBase::State::started);
  t.start();  // already started: nothing happens
  EXPECT_EQ(t.starts.load(), 2);
  t.stop(soon());
  EXPECT_THROW(t.start(), n::TransportError);
}

TEST(TransportBase, TransportBasePromise3_PublishNeverThrowsAndAcceptsNothingOutsideStarted) {
  RecordingTransport t;
  const auto before = t.publish(one_message());
  EXPECT_EQ(before.published, 0u);
  EXPECT_FALSE(before.transient);
  t.start();
  EXPECT_EQ(t.publish(one_message()).published, 1u);
  t.stop(soon());
  const auto after = t.publish(one_message());
  EXPECT_EQ(after.published, 0u);
  EXPECT_FALSE(after.transient);
  EXPECT_EQ(t.publishes.load(), 1);
}

TEST(TransportBase, TransportBasePromise4_StopWaitsForAPublishInFlightAndNoPublishRunsDuringStop) {
  RecordingTransport t;
  t.start();
  t.publish_gate.close();
  std::thread publisher([&] { t.publish(one_message()); });
  ASSERT_TRUE(t.publish_gate.wait_arrived(1));
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    t.stop(soon());
    stopped = true;
  });
  // stop() must not run do_stop while the publish is in flight; it cannot finish before it.
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(t.stops.load(), 0);
  EXPECT_FALSE(stopped.load());
  EXPECT_EQ(t.publish(one_message()).published, 0u);  // refused once stopping began
  t.publish_gate.open();
  publisher.join();
  stopper.join();
  EXPECT_TRUE(stopped.load());
  EXPECT_EQ(t.stops.load(), 1);
  EXPECT_EQ(t.publishes_during_stop.load(), 0);
}

TEST(TransportBase, TransportBasePromise5_StopIsIdempotentAllowedFromCreatedAndASecondStopWaits) {
  {
    RecordingTransport created;
    created.stop(soon());
    EXPECT_EQ(created.state(), n::TransportBase::State::stopped);
    EXPECT_EQ(created.stops.load(), 0);  // nothing was started, no hook runs
  }
  RecordingTransport t;
  t.start();
  t.stop_gate.close();
  std::thread first([&] { t.stop(soon()); });
  ASSERT_TRUE(t.stop_gate.wait_arrived(1));
  std::atomic<bool> second_returned{false};
  std::thread second([&] {
    t.stop(soon());
    second_returned = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(second_returned.load());  // waits for the first
  EXPECT_EQ(t.health()["state"], "stopping");
  t.stop_gate.open();
  first.join();
  second.join();
  EXPECT_EQ(t.stops.load(), 1);
  EXPECT_EQ(t.health()["state"], "stopped");
}

TEST(TransportBase, TransportBasePromise6_AHandlerMayUnsubscribeWhileTheTransportStops) {
  RecordingTransport t;
  t.start();
  const auto id = t.subscribe("a.>", {}, [](n::Delivery&&) {});
  t.stop_gate.close();
  std::thread stopper([&] { t.stop(soon()); });
  ASSERT_TRUE(t.stop_gate.wait_arrived(1));
  // do_stop is running and holds no lock: unsubscribe() returns (and does nothing: stopping).
  std::thread unsubscriber([&] { t.unsubscribe(id); });
  unsubscriber.join();
  t.stop_gate.open();
  stopper.join();
  EXPECT_EQ(t.state(), n::TransportBase::State::stopped);
}

TEST(TransportBase, TransportBasePromise7_HealthAddsKindAndState) {
  RecordingTransport t;
  EXPECT_EQ(t.health()["kind"], "recording");
  EXPECT_EQ(t.health()["state"], "created");
  t.start();
  t.publish(one_message());
  const auto h = t.health();
  EXPECT_EQ(h["state"], "started");
  EXPECT_EQ(h["publishes"], 1);
}

TEST(TransportBase, TransportBasePromise8_InAForkedChildWithoutAfterForkNothingRunsAndNothingHangs) {
  RecordingTransport t;
  t.start();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    const auto result = t.publish(one_message());
    if (result.published != 0 || result.transient) code |= 1;
    if (t.flush(soon())) code |= 2;
    try {
      t.subscribe("a.>", {}, [](n::Delivery&&) {});
      code |= 4;
    } catch (const n::TransportError&) {
    }
    if (t.health()["state"] != "forked_child") code |= 8;
    t.stop(soon());
    if (t.stops.load() != 0 || t.publishes.load() != 0) code |= 16;  // no hook ran here
    ::_exit(code);
  }
  const auto child = test_support::wait_for_child(pid, 20s);
  ASSERT_FALSE(child.timed_out) << "the child hung";
  ASSERT_TRUE(child.exited);
  EXPECT_EQ(child.exit_code, 0) << "bit 1 publish, 2 flush, 4 subscribe, 8 health, 16 hooks ran";
  EXPECT_EQ(t.publish(one_message()).published, 1u);  // the parent still owns it
}

// A thread that delivers to a subscription's handler as a transport's callback thread would.
struct Deliverer {
  std::thread thread;
  ~Deliverer() {
    if (thread.joinable()) thread.join();
  }
};

TEST(TransportBase, TransportBasePromise10_UnsubscribeWaitsForACallInProgressAndNoCallFollows) {
  RecordingTransport t;
  t.start();
  Gate gate;
  gate.close();
  std::atomic<int> calls{0};
  std::atomic<bool> finished{false};
  const auto id = t.subscribe("a.>", {}, [&](n::Delivery&&) {
    ++calls;
    gate.pass();
    finished = true;
  });
  n::DeliveryHandler deliver = t.handler;
  Deliverer delivering;
  delivering.thread = std::thread([&] { deliver(n::Delivery{}); });
  ASSERT_TRUE(gate.wait_arrived(1));
  std::atomic<bool> returned{false};
  std::atomic<bool> finished_before_return{false};
  Deliverer unsubscribing;
  unsubscribing.thread = std::thread([&] {
    t.unsubscribe(id);
    finished_before_return = finished.load();
    returned = true;
  });
  std::this_thread::sleep_for(100ms);  // unsubscribe() has had time to return if it did not wait
  EXPECT_FALSE(returned.load()) << "unsubscribe() returned while the handler was still running";
  gate.open();
  unsubscribing.thread.join();
  EXPECT_TRUE(finished_before_return.load());
  // A late call from the transport reaches nothing, and a delivery it could redeliver goes back.
  bool nak = false;
  n::Delivery late;
  late.settle = [&](n::Settlement s) { nak = s.outcome == n::Settle::nak; };
  deliver(std::move(late));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_TRUE(nak);
}

TEST(TransportBase, TransportBasePromise10_AHandlerMayUnsubscribeItselfWithoutWaitingForItself) {
  RecordingTransport t;
  t.start();
  std::atomic<std::uint64_t> id{0};
  std::atomic<int> calls{0};
  id = t.subscribe("a.>", {}, [&](n::Delivery&&) {
    ++calls;
    t.unsubscribe(id.load());  // would wait forever for this very call if it counted it
  });
  n::DeliveryHandler deliver = t.handler;
  deliver(n::Delivery{});
  deliver(n::Delivery{});
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(t.unsubscribes.load(), 1);
}

TEST(TransportBase, TransportBasePromise10_StopWaitsForHandlersUntilItsDeadlineAndCountsTheRest) {
  RecordingTransport t;
  t.start();
  Gate gate;
  gate.close();
  std::atomic<int> calls{0};
  t.subscribe("a.>", {}, [&](n::Delivery&&) {
    ++calls;
    gate.pass();
  });
  n::DeliveryHandler deliver = t.handler;
  Deliverer delivering;
  delivering.thread = std::thread([&] { deliver(n::Delivery{}); });
  ASSERT_TRUE(gate.wait_arrived(1));
  t.stop(std::chrono::steady_clock::now() + 200ms);  // the handler is held past this deadline
  const auto health = t.health();
  EXPECT_EQ(health.value("handlers_running_at_stop", 0), 1) << health.dump();
  gate.open();
  delivering.thread.join();
  deliver(n::Delivery{});  // after stop: the handler is not called again
  EXPECT_EQ(calls.load(), 1);

  // A call that ends before the deadline is waited for, and nothing is counted.
  RecordingTransport u;
  u.start();
  std::atomic<bool> finished{false};
  u.subscribe("a.>", {}, [&](n::Delivery&&) {
    gate.pass();
    finished = true;
  });
  gate.close();
  n::DeliveryHandler deliver_u = u.handler;
  Deliverer delivering_u;
  delivering_u.thread = std::thread([&] { deliver_u(n::Delivery{}); });
  ASSERT_TRUE(gate.wait_arrived(2));
  Deliverer opener;
  opener.thread = std::thread([&] {
    std::this_thread::sleep_for(100ms);
    gate.open();
  });
  u.stop(std::chrono::steady_clock::now() + 10s);
  EXPECT_TRUE(finished.load()) << "stop() returned while a handler was running";
  EXPECT_FALSE(u.health().contains("handlers_running_at_stop")) << u.health().dump();
}

TEST(TransportBase, TransportBasePromise10_StopWaitsForAHandlerThatUnsubscribedItselfAndWentOn) {
  RecordingTransport t;
  t.start();
  Gate gate;
  gate.close();
  std::atomic<std::uint64_t> id{0};
  std::atomic<bool> finished{false};
  id = t.subscribe("a.>", {}, [&](n::Delivery&&) {
    t.unsubscribe(id.load());  // its own: returns at once
    gate.pass();               // ... and the call goes on
    finished = true;
  });
  n::DeliveryHandler deliver = t.handler;
  Deliverer delivering;
  delivering.thread = std::thread([&] { deliver(n::Delivery{}); });
  ASSERT_TRUE(gate.wait_arrived(1));
  // A second unsubscribe() of the same id, from another thread, waits for that call.
  std::atomic<bool> unsubscribe_returned{false};
  Deliverer unsubscribing;
  unsubscribing.thread = std::thread([&] {
    t.unsubscribe(id.load());
    unsubscribe_returned = true;
  });
  Deliverer opener;
  opener.thread = std::thread([&] {
    std::this_thread::sleep_for(100ms);
    EXPECT_FALSE(unsubscribe_returned.load()) << "a second unsubscribe() returned while the call ran";
    gate.open();
  });
  t.stop(std::chrono::steady_clock::now() + 10s);
  EXPECT_TRUE(finished.load()) << "stop() returned while a handler that had unsubscribed itself was running";
  EXPECT_FALSE(t.health().contains("handlers_running_at_stop")) << t.health().dump();
}

TEST(TransportBase, TransportBasePromise10_AForkedChildDoesNotWaitForCallsOfThreadsItHasNot) {
  RecordingTransport t;
  t.start();
  Gate gate;
  gate.close();
  const auto id = t.subscribe("a.>", {}, [&](n::Delivery&&) { gate.pass(); });
  n::DeliveryHandler deliver = t.handler;
  Deliverer delivering;
  delivering.thread = std::thread([&] { deliver(n::Delivery{}); });
  ASSERT_TRUE(gate.wait_arrived(1));  // a call runs on another thread at fork()
  t.prepare_fork(soon());
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    t.after_fork(true);
    t.unsubscribe(id);  // would wait for ever for the parent's call
    t.stop(std::chrono::steady_clock::now() + 5s);
    ::_exit(t.health().contains("handlers_running_at_stop") ? 1 : 0);
  }
  t.after_fork(false);
  const auto child = test_support::wait_for_child(pid, 20s);
  gate.open();
  ASSERT_FALSE(child.timed_out) << "the child waited for a handler call of a thread it does not have";
  EXPECT_TRUE(child.exited);
  EXPECT_EQ(child.exit_code, 0) << "the child counted the parent's call as running at stop";
}
