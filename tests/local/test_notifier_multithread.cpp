// Concurrency: many threads instrumenting while subscriptions churn. Every loop is bounded in
// count, and every wait is bounded by a watchdog that fails the test instead of hanging.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "notifications/notifications.hpp"
#include "scale.hpp"

namespace n = notifications;
using namespace std::chrono_literals;

namespace {

using test_support::kScale;  // tests/scale.hpp: a tenth of the counts in the sanitizer builds

// Runs `work` on `threads` threads and fails (instead of hanging) if they do not finish in time.
void run_threads(int threads, const std::function<void(int)>& work, std::chrono::seconds limit = 60s) {
  std::vector<std::future<void>> done;
  for (int t = 0; t < threads; ++t) done.push_back(std::async(std::launch::async, work, t));
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (auto& f : done) {
    if (f.wait_until(deadline) != std::future_status::ready) {
      ADD_FAILURE() << "threads did not finish within " << limit.count() << " s (deadlock?)";
      std::abort();  // a hung future cannot be joined; stop the run with a clear failure
    }
    f.get();
  }
}

TEST(NotifierMultithread, PermanentSubscriberSeesEveryEventDespiteChurn) {
  n::Notifier notifier;
  std::atomic<long> seen{0};
  auto permanent = notifier.subscribe("load.*", [&](const n::Event&) { seen.fetch_add(1, std::memory_order_relaxed); });
  const int per_thread = 50'000 / kScale;
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    std::mt19937 rng(7);
    for (int i = 0; i < 20'000 / kScale && !stop.load(); ++i) {
      auto a = notifier.subscribe("load.a", [](const n::Event&) {});
      auto b = notifier.subscribe(n::Pattern::regex("load"), [](const n::Event&) {});
      if (rng() % 2) notifier.unsubscribe("load.c");
    }
  });
  run_threads(3, [&](int t) {
    const std::string name = t == 0 ? "load.a" : (t == 1 ? "load.b" : "load.c");
    for (int i = 0; i < per_thread; ++i) notifier.instrument(name, [] {});
  });
  stop = true;
  churn.join();
  // unsubscribe("load.c") excludes load.c from the permanent wildcard subscriber from then on;
  // count only the names it cannot have excluded.
  EXPECT_GE(seen.load(), 2L * per_thread);
}

TEST(NotifierMultithread, ExactCountsWithoutExclusions) {
  n::Notifier notifier;
  std::atomic<long> seen{0};
  auto permanent = notifier.subscribe("count", [&](const n::Event&) { seen.fetch_add(1, std::memory_order_relaxed); });
  std::thread churn([&] {
    for (int i = 0; i < 5'000 / kScale; ++i) {
      auto extra = notifier.subscribe("count", [](const n::Event&) {});
    }
  });
  const int per_thread = 40'000 / kScale;
  run_threads(2, [&](int) {
    auto handle = notifier.handle("count");
    for (int i = 0; i < per_thread; ++i) {
      if (i % 2) {
        handle.instrument([] {});
      } else {
        notifier.instrument("count", {{"i", i}}, [] {});
      }
    }
  });
  churn.join();
  EXPECT_EQ(seen.load(), 2L * per_thread);
}

TEST(NotifierMultithread, NoCallAfterUnsubscribeReturnsAndThreadsSynchronise) {
  n::Notifier notifier;
  for (int round = 0; round < 200 / kScale; ++round) {
    std::atomic<bool> unsubscribed{false};
    std::atomic<int> late_calls{0};
    auto sub = notifier.subscribe("r", [&](const n::Event&) {
      if (unsubscribed.load(std::memory_order_acquire)) late_calls.fetch_add(1);
    });
    std::atomic<bool> go{false};
    std::thread producer([&] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < 200; ++i) notifier.instrument("r");
    });
    go = true;
    sub.unsubscribe();
    unsubscribed.store(true, std::memory_order_release);
    producer.join();
    // A call may already be running when unsubscribe returns (promise 4), but the listener never
    // starts a call for an event that began after it observed the flag. At most one straggler
    // call per producer thread is possible.
    EXPECT_LE(late_calls.load(), 1) << "round " << round;
  }
}

TEST(NotifierMultithread, DeadlockHuntListenersMutateTheNotifier) {
  n::Notifier notifier({.error_handler = [](const n::SubscriberFailure&) {}});
  std::atomic<long> calls{0};
  auto mutator = notifier.subscribe("hunt.>", [&](const n::Event& e) {
    calls.fetch_add(1, std::memory_order_relaxed);
    if (e.name() == "hunt.nested" || e.name() == "hunt.temp") return;  // no recursion
    auto temporary = notifier.subscribe("hunt.temp", [](const n::Event&) { throw std::runtime_error("x"); });
    notifier.instrument("hunt.nested", [] {});
    notifier.instrument("hunt.temp");
    if (calls.load(std::memory_order_relaxed) % 97 == 0) notifier.unsubscribe("hunt.never");
    (void)notifier.listening("hunt.other");
  });
  const int per_thread = 10'000 / kScale;
  run_threads(4, [&](int t) {
    auto handle = notifier.handle("hunt.h" + std::to_string(t));
    for (int i = 0; i < per_thread; ++i) {
      if (i % 3 == 0) {
        handle.instrument([] {});
      } else {
        notifier.instrument("hunt.t" + std::to_string(t), [] {});
      }
    }
  });
  EXPECT_EQ(calls.load(), 4L * per_thread * 3);  // each top-level event, its nested and its temp
}

TEST(NotifierMultithread, ConcurrentScopedSubscriptionsAllUnsubscribe) {
  n::Notifier notifier;
  run_threads(4, [&](int t) {
    for (int i = 0; i < 2'000 / kScale; ++i) {
      int calls = 0;
      {
        auto sub = notifier.subscribe("s." + std::to_string(t), [&](const n::Event&) { ++calls; });
        notifier.instrument("s." + std::to_string(t));
      }
      notifier.instrument("s." + std::to_string(t));
      ASSERT_EQ(calls, 1);
    }
  });
  EXPECT_EQ(notifier.stats().subscriptions, 0u);
}

TEST(NotifierMultithread, NameCacheStaysBounded) {
  n::Notifier notifier({.name_cache_capacity = 64});
  std::atomic<long> seen{0};
  auto sub = notifier.subscribe(n::Pattern::regex("^user\\."), [&](const n::Event&) { seen.fetch_add(1); });
  run_threads(2, [&](int t) {
    for (int i = 0; i < 5'000 / kScale; ++i) {
      notifier.instrument("user." + std::to_string(t) + "." + std::to_string(i));
      notifier.instrument("other." + std::to_string(i));
    }
  });
  EXPECT_EQ(seen.load(), 2L * (5'000 / kScale));
  EXPECT_LE(notifier.stats().cached_names, 64u);
}

}  // namespace
