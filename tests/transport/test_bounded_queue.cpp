// The bounded handoff queue between the Bridge's threads (notifications/bounded_queue.hpp): order,
// the three overflow policies, close and take_all, and two producers against one consumer.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <new>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "transport/bounded_queue.hpp"
#include "scale.hpp"
#include "wait.hpp"

// Allocation-failure injection for this test program: when armed on a thread, the allocation
// that many allocations later (0: the next one) throws std::bad_alloc, once.
thread_local long allocations_before_failure = -1;  // -1: disarmed

// clang's ThreadSanitizer links its runtime statically, operator new and delete included, so this
// program cannot replace them there: the injection is off and the case that needs it is skipped
// (the release and ASan builds run it). GCC's links its runtime as a shared library, which a
// replacement here overrides.
#if defined(__clang__) && defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NOTIFICATIONS_TEST_NO_NEW_REPLACEMENT 1
#endif
#endif

#ifndef NOTIFICATIONS_TEST_NO_NEW_REPLACEMENT
void* operator new(std::size_t size) {
  if (allocations_before_failure == 0) {
    allocations_before_failure = -1;
    throw std::bad_alloc();
  }
  if (allocations_before_failure > 0) --allocations_before_failure;
  if (void* memory = std::malloc(size == 0 ? 1 : size)) return memory;
  throw std::bad_alloc();
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // this operator new is malloc
#endif
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // NOTIFICATIONS_TEST_NO_NEW_REPLACEMENT

namespace {

using namespace std::chrono_literals;
using notifications::OverflowPolicy;
using Queue = notifications::detail::BoundedQueue<int>;
using Clock = std::chrono::steady_clock;

// Pops everything that is there now, `max` at a time, appending to `out`.
void drain(Queue& q, std::vector<int>& out, std::size_t max) {
  Queue::Batch batch;
  while (q.size() > 0) {
    ASSERT_TRUE(q.pop_batch(batch, max, Clock::now() + 1s));
    ASSERT_LE(batch.size(), max);
    out.insert(out.end(), batch.begin(), batch.end());
  }
}

// Segments of 1, 5 and 256 items against takes of 3 and 64: partial segments, whole segments
// taken over, and takes that span several segments.
TEST(BoundedQueue, KeepsOrderAcrossWholeAndPartialBatches) {
  for (const std::size_t segment : {1u, 5u, 256u}) {
    SCOPED_TRACE(segment);
    Queue q(1000, 0us, segment);
    std::vector<int> got;
    int next = 0;
    for (std::size_t round = 0; round < 50; ++round) {
      for (int i = 0; i < static_cast<int>(round % 13) + 1; ++i) {
        ASSERT_EQ(q.push(int(next++), OverflowPolicy::drop_newest, 0ms), Queue::Push::accepted);
      }
      drain(q, got, round % 2 == 0 ? 3 : 64);
    }
    ASSERT_EQ(got.size(), static_cast<std::size_t>(next));
    for (int i = 0; i < next; ++i) ASSERT_EQ(got[static_cast<std::size_t>(i)], i);
  }
}

TEST(BoundedQueue, DropNewestRefusesWhenFull) {
  Queue q(3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(q.push(int(i), OverflowPolicy::drop_newest, 0ms), Queue::Push::accepted);
  EXPECT_EQ(q.push(3, OverflowPolicy::drop_newest, 0ms), Queue::Push::dropped_newest);
  std::vector<int> got;
  drain(q, got, 10);
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2}));
}

TEST(BoundedQueue, DropOldestEvictsInOrderAndStaysBounded) {
  Queue q(4, 0us, 3);  // evictions cross segment boundaries
  std::vector<int> evicted_values;
  for (int i = 0; i < 1000; ++i) {
    std::optional<int> evicted;
    const auto result = q.push(int(i), OverflowPolicy::drop_oldest, 0ms, &evicted);
    if (i < 4) {
      ASSERT_EQ(result, Queue::Push::accepted);
    } else {
      ASSERT_EQ(result, Queue::Push::accepted_dropped_oldest);
      ASSERT_TRUE(evicted.has_value());
      evicted_values.push_back(*evicted);
    }
    ASSERT_LE(q.size(), 4u);
  }
  ASSERT_EQ(evicted_values.size(), 996u);
  for (std::size_t i = 0; i < evicted_values.size(); ++i) ASSERT_EQ(evicted_values[i], static_cast<int>(i));
  std::vector<int> got;
  drain(q, got, 2);
  EXPECT_EQ(got, (std::vector<int>{996, 997, 998, 999}));
}

TEST(BoundedQueue, BlockWaitsForRoomOrTimesOut) {
  Queue q(1);
  ASSERT_EQ(q.push(1, OverflowPolicy::block, 0ms), Queue::Push::accepted);
  EXPECT_EQ(q.push(2, OverflowPolicy::block, 20ms), Queue::Push::dropped_newest);
  std::thread consumer([&] {
    std::this_thread::sleep_for(50ms);
    Queue::Batch batch;
    q.pop_batch(batch, 1, Clock::now() + 1s);
  });
  EXPECT_EQ(q.push(3, OverflowPolicy::block, 10s), Queue::Push::accepted);  // once the consumer took 1
  consumer.join();
  std::vector<int> got;
  drain(q, got, 1);
  EXPECT_EQ(got, (std::vector<int>{3}));
}

TEST(BoundedQueue, CloseRefusesPushesButKeepsItemsThenTakeAllEmpties) {
  Queue q(10);
  for (int i = 0; i < 6; ++i) q.push(int(i), OverflowPolicy::drop_newest, 0ms);
  Queue::Batch batch;
  ASSERT_TRUE(q.pop_batch(batch, 2, Clock::now() + 1s));  // a partial take first
  EXPECT_EQ(batch, (Queue::Batch{0, 1}));
  q.close();
  EXPECT_EQ(q.push(9, OverflowPolicy::drop_newest, 0ms), Queue::Push::closed);
  EXPECT_EQ(q.take_all(), (Queue::Batch{2, 3, 4, 5}));
  EXPECT_EQ(q.size(), 0u);
  EXPECT_FALSE(q.pop_batch(batch, 10, Clock::now() + 1s));  // closed and empty
}

TEST(BoundedQueue, PopWaitsUntilItsDeadlineOnAnEmptyQueue) {
  Queue q(10, 50us);  // with the idle spin the Bridge uses
  Queue::Batch batch;
  const auto start = Clock::now();
  EXPECT_TRUE(q.pop_batch(batch, 10, start + 30ms));  // open: true, nothing taken
  EXPECT_TRUE(batch.empty());
  EXPECT_GE(Clock::now() - start, 30ms);
}

// A consumer that polls only while it pays stops polling once the queue has stayed empty for
// long on a few waits in a row; one that always polls keeps polling. Either still returns
// what comes, and at its deadline.
TEST(BoundedQueue, AConsumerThatPollsOnlyWhenItPaysStopsAfterLongWaits) {
  constexpr int kPops = 30;
  Queue adaptive(10, 50us, 256, 0, /*spin_only_when_it_pays=*/true);
  Queue always(10, 50us);
  Queue::Batch batch;
  for (int i = 0; i < kPops; ++i) {
    EXPECT_TRUE(adaptive.pop_batch(batch, 10, Clock::now() + 2ms));
    EXPECT_TRUE(always.pop_batch(batch, 10, Clock::now() + 2ms));
  }
  EXPECT_EQ(always.polls(), static_cast<std::uint64_t>(kPops));
  // The first pop polls; its 2 ms wait pulls the average past the threshold. After that only
  // one empty pop in 16 polls, as a probe.
  EXPECT_GE(adaptive.polls(), 1u);
  EXPECT_LE(adaptive.polls(), 5u);
  // Not polling, it still takes an item pushed while it waits.
  std::thread producer([&] {
    std::this_thread::sleep_for(5ms);
    EXPECT_EQ(adaptive.push(7, OverflowPolicy::drop_newest, 0ms), Queue::Push::accepted);
  });
  EXPECT_TRUE(adaptive.pop_batch(batch, 10, Clock::now() + 10s));
  producer.join();
  EXPECT_EQ(batch.size(), 1u);
}

// A consumer waiting with no deadline returns for an item, for wake() (with nothing), and for
// close(); a wake() while nobody waits makes the next pop return at once, once.
TEST(BoundedQueue, PopWithoutDeadlineReturnsForAnItemAWakeOrClose) {
  Queue q(10, 50us);
  const auto forever = Clock::time_point::max();
  std::atomic<int> phase{0};
  std::thread consumer([&] {
    Queue::Batch batch;
    EXPECT_TRUE(q.pop_batch(batch, 10, forever));
    EXPECT_EQ(batch.size(), 1u);
    phase = 1;
    EXPECT_TRUE(q.pop_batch(batch, 10, forever));  // woken
    EXPECT_TRUE(batch.empty());
    phase = 2;
    EXPECT_FALSE(q.pop_batch(batch, 10, forever));  // closed and empty
    phase = 3;
  });
  struct Join {
    std::thread& t;
    ~Join() { t.join(); }
  } join{consumer};
  std::this_thread::sleep_for(20ms);
  q.push(1, OverflowPolicy::drop_newest, 0ms);
  ASSERT_TRUE(test_support::wait_until([&] { return phase.load() == 1; }, 10s));
  std::this_thread::sleep_for(20ms);  // most likely blocked by now; either way wake() reaches it
  q.wake();
  ASSERT_TRUE(test_support::wait_until([&] { return phase.load() == 2; }, 10s));
  std::this_thread::sleep_for(20ms);
  q.close();
  ASSERT_TRUE(test_support::wait_until([&] { return phase.load() == 3; }, 10s));

  Queue r(10);
  r.wake();  // nobody waits: the next pop returns at once, and only that one
  Queue::Batch batch;
  EXPECT_TRUE(r.pop_batch(batch, 10, forever));
  EXPECT_TRUE(batch.empty());
  const auto start = Clock::now();
  EXPECT_TRUE(r.pop_batch(batch, 10, start + 30ms));
  EXPECT_GE(Clock::now() - start, 30ms) << "a second pop returned early: one wake() counted twice";
}

// Random pushes (all three policies), pops of random size and take_all against a std::deque
// model, over random capacities and segment sizes: same results, same order, bounded size. With
// `inject_failures`, an allocation fails now and then inside an operation, which must then throw
// std::bad_alloc and leave the queue exactly as it was. Returns the number of such failures.
std::size_t check_against_model(std::uint32_t seed, int trials, int steps, bool inject_failures) {
  std::mt19937 rng(seed);
  auto pick = [&](std::size_t low, std::size_t high) { return std::uniform_int_distribution<std::size_t>(low, high)(rng); };
  const OverflowPolicy policies[] = {OverflowPolicy::drop_newest, OverflowPolicy::drop_oldest, OverflowPolicy::block};
  std::size_t failures = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const std::size_t capacity = pick(1, 40);
    const std::size_t segment = pick(1, 12);
    SCOPED_TRACE("trial " + std::to_string(trial) + ", capacity " + std::to_string(capacity) + ", segment " +
                 std::to_string(segment));
    Queue q(capacity, 0us, segment);
    std::deque<int> model;
    Queue::Batch batch;
    int next = 0;
    for (int step = 0; step < steps; ++step) {
      const std::size_t op = pick(0, 9);
      const long arm = inject_failures && pick(0, 2) == 0 ? static_cast<long>(pick(0, 2)) : -1;
      bool threw = false;
      try {
        allocations_before_failure = arm;
        if (op < 6) {
          const OverflowPolicy policy = policies[pick(0, 2)];
          std::optional<int> evicted;
          const auto result = q.push(int(next), policy, 0ms, &evicted);
          allocations_before_failure = -1;
          if (model.size() < capacity) {
            EXPECT_EQ(result, Queue::Push::accepted);
            model.push_back(next);
          } else if (policy == OverflowPolicy::drop_oldest) {
            EXPECT_EQ(result, Queue::Push::accepted_dropped_oldest);
            EXPECT_EQ(evicted, model.front());
            model.pop_front();
            model.push_back(next);
          } else {
            EXPECT_EQ(result, Queue::Push::dropped_newest);  // block with a zero timeout, or drop_newest
          }
          ++next;
        } else if (op < 9) {
          const std::size_t max = pick(1, 3 * segment);
          EXPECT_TRUE(q.pop_batch(batch, max, Clock::now()));
          allocations_before_failure = -1;
          EXPECT_EQ(batch.size(), std::min(max, model.size()));
          for (const int item : batch) {
            EXPECT_EQ(item, model.front());
            model.pop_front();
          }
        } else {
          const Queue::Batch rest = q.take_all();
          allocations_before_failure = -1;
          EXPECT_EQ(std::vector<int>(rest.begin(), rest.end()), std::vector<int>(model.begin(), model.end()));
          model.clear();
        }
      } catch (const std::bad_alloc&) {
        threw = true;
        ++failures;
      }
      allocations_before_failure = -1;
      EXPECT_EQ(q.size(), model.size()) << (threw ? "after a failed allocation" : "");
      EXPECT_LE(q.size(), capacity);
      if (::testing::Test::HasFailure()) return failures;  // one report, not hundreds
    }
    std::vector<int> rest;
    drain(q, rest, segment);
    EXPECT_EQ(rest, std::vector<int>(model.begin(), model.end()));
  }
  return failures;
}

// A push with more_follows leaves a blocked consumer asleep; the next push without it wakes the
// consumer, which takes the whole run at once. After kMaxDeferredWakes hinted pushes in a row the
// next hinted one wakes it too, so a producer's hint never strands items for long.
TEST(BoundedQueue, PushesWithMoreToFollowWakeABlockedConsumerOncePerRun) {
  for (const bool bounded_run : {false, true}) {
    const std::size_t hinted = bounded_run ? Queue::kMaxDeferredWakes + 1 : 3;
    Queue q(1000);  // no spin: the consumer blocks at once
    std::atomic<std::size_t> taken{0};
    std::atomic<bool> returned{false};
    std::thread consumer([&] {
      Queue::Batch batch;
      EXPECT_TRUE(q.pop_batch(batch, 1000, Clock::time_point::max()));
      taken = batch.size();
      returned = true;
    });
    struct Join {
      std::thread& t;
      Queue& q;
      ~Join() {
        q.close();  // also when an assertion returns early
        t.join();
      }
    } join{consumer, q};
    ASSERT_TRUE(test_support::wait_until([&] { return q.blocked_consumers_for_tests() == 1; }, 10s));
    for (std::size_t i = 0; i + 1 < hinted; ++i) {
      q.push(static_cast<int>(i), OverflowPolicy::drop_newest, 0ms, nullptr, nullptr, /*more_follows=*/true);
    }
    std::this_thread::sleep_for(50ms);  // a wake-up, had there been one, would have ended the pop by now
    EXPECT_FALSE(returned.load()) << "woken by a push with more to follow";
    EXPECT_EQ(q.blocked_consumers_for_tests(), 1u);
    // The run's last push: without the hint, or the hinted one past the bound.
    q.push(-1, OverflowPolicy::drop_newest, 0ms, nullptr, nullptr, /*more_follows=*/bounded_run);
    ASSERT_TRUE(test_support::wait_until([&] { return returned.load(); }, 10s)) << "the consumer was never woken";
    EXPECT_EQ(taken.load(), hinted) << "one pop takes the whole run";
  }
}

TEST(BoundedQueue, BehavesLikeABoundedDequeUnderRandomOperations) {
  check_against_model(20261125, 300 / test_support::kScale, 400, false);
}

TEST(BoundedQueue, AnAllocationFailureChangesNothing) {
#ifdef NOTIFICATIONS_TEST_NO_NEW_REPLACEMENT
  GTEST_SKIP() << "operator new cannot be replaced under clang's ThreadSanitizer (static runtime)";
#endif
  const std::size_t failures = check_against_model(1125, 200 / test_support::kScale, 300, true);
  EXPECT_GT(failures, 0u);  // the injection did hit the queue's allocations
}

// Two producers, one consumer taking small and large batches: every item arrives once, each
// producer's items in the order it pushed them.
TEST(BoundedQueue, TwoProducersOneConsumerLoseNothing) {
  const int per_producer = 200'000 / test_support::kScale;
  Queue q(256, 50us);
  std::atomic<int> refused{0};
  auto produce = [&](int id) {
    for (int i = 0; i < per_producer; ++i) {
      if (q.push(id * per_producer + i, OverflowPolicy::block, 30s) != Queue::Push::accepted) refused.fetch_add(1);
    }
  };
  std::thread a(produce, 0), b(produce, 1);
  std::vector<int> last = {-1, -1};
  int received = 0;
  int out_of_order = 0;
  Queue::Batch batch;
  const auto deadline = Clock::now() + 60s;
  for (std::size_t round = 0; received < 2 * per_producer && Clock::now() < deadline; ++round) {
    if (!q.pop_batch(batch, round % 3 == 0 ? 7 : 1024, Clock::now() + 100ms)) break;
    for (const int item : batch) {
      int& previous = last[static_cast<std::size_t>(item / per_producer)];
      if (item <= previous) ++out_of_order;  // out of order, or twice
      previous = item;
      ++received;
    }
  }
  q.close();  // releases a producer still blocked if the consumer gave up
  a.join();
  b.join();
  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(out_of_order, 0);
  EXPECT_EQ(received, 2 * per_producer);
  EXPECT_EQ(q.size(), 0u);
}

}  // namespace

// ---- the byte bound ------------------------------------------------------------------------------

namespace {

// Items are strings; each counts its length.
struct StringBytes {
  std::size_t operator()(const std::string& s) const noexcept { return s.size(); }
};
using ByteQueue = notifications::detail::BoundedQueue<std::string, StringBytes>;
using notifications::OverflowPolicy;

}  // namespace

TEST(BoundedQueueBytes, RefusesAnItemThatWouldPassTheByteBoundUnderEveryNonBlockingPolicy) {
  for (const auto policy : {OverflowPolicy::drop_newest, OverflowPolicy::drop_oldest}) {
    ByteQueue queue(100, std::chrono::microseconds(0), 8, 1000);
    EXPECT_EQ(queue.push(std::string(600, 'a'), policy, std::chrono::milliseconds(0)), ByteQueue::Push::accepted);
    EXPECT_EQ(queue.push(std::string(500, 'b'), policy, std::chrono::milliseconds(0)), ByteQueue::Push::dropped_newest);
    EXPECT_EQ(queue.push(std::string(400, 'c'), policy, std::chrono::milliseconds(0)), ByteQueue::Push::accepted);
    EXPECT_EQ(queue.bytes(), 1000u);
    EXPECT_EQ(queue.size(), 2u);
  }
}

TEST(BoundedQueueBytes, AnEmptyQueueTakesOneItemLargerThanTheBound) {
  ByteQueue queue(100, std::chrono::microseconds(0), 8, 1000);
  EXPECT_EQ(queue.push(std::string(5000, 'a'), OverflowPolicy::drop_newest, std::chrono::milliseconds(0)),
            ByteQueue::Push::accepted);
  EXPECT_EQ(queue.push(std::string(1, 'b'), OverflowPolicy::drop_newest, std::chrono::milliseconds(0)),
            ByteQueue::Push::dropped_newest);
}

TEST(BoundedQueueBytes, PopsTakeAllAndEvictionsGiveTheBytesBack) {
  ByteQueue queue(4, std::chrono::microseconds(0), 2, 10'000);
  for (int i = 0; i < 4; ++i) queue.push(std::string(100, 'a'), OverflowPolicy::drop_newest, std::chrono::milliseconds(0));
  std::optional<std::string> evicted;
  EXPECT_EQ(queue.push(std::string(50, 'b'), OverflowPolicy::drop_oldest, std::chrono::milliseconds(0), &evicted),
            ByteQueue::Push::accepted_dropped_oldest);
  EXPECT_EQ(queue.bytes(), 350u);
  ByteQueue::Batch batch;
  ASSERT_TRUE(queue.pop_batch(batch, 2, std::chrono::steady_clock::now()));
  EXPECT_EQ(queue.bytes(), 150u);
  queue.take_all();
  EXPECT_EQ(queue.bytes(), 0u);
}

TEST(BoundedQueueBytes, BlockWaitsForBytesAndSaysItWaited) {
  ByteQueue queue(100, std::chrono::microseconds(0), 8, 1000);
  queue.push(std::string(900, 'a'), OverflowPolicy::block, std::chrono::milliseconds(0));
  bool waited = false;
  EXPECT_EQ(queue.push(std::string(200, 'b'), OverflowPolicy::block, std::chrono::milliseconds(20), nullptr, &waited),
            ByteQueue::Push::dropped_newest);
  EXPECT_TRUE(waited);
  std::thread consumer([&] {
    ByteQueue::Batch batch;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    queue.pop_batch(batch, 1, std::chrono::steady_clock::now() + std::chrono::seconds(5));
  });
  waited = false;
  EXPECT_EQ(queue.push(std::string(200, 'c'), OverflowPolicy::block, std::chrono::seconds(10), nullptr, &waited),
            ByteQueue::Push::accepted);
  EXPECT_TRUE(waited);
  consumer.join();
  EXPECT_EQ(queue.bytes(), 200u);
}
