// Private: the bounded, thread-safe handoff queue between threads that must not wait on each
// other (instrumenting threads -> the Bridge's sender; transport callbacks -> its dispatcher).
//
// Thread-safety: every member may be called from any thread. One mutex guards the items; pushes
// never call out while holding it.
//
// Storage is a vector that changes hands with the consumer's batch vector: in steady state
// neither side allocates, and buffers are not freed on a thread other than the one that made them.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "notifications/config.hpp"

namespace notifications::detail {

template <class T>
class BoundedQueue {
 public:
  enum class Push {
    accepted,
    accepted_dropped_oldest,  // accepted; the oldest item was removed to make room
    dropped_newest,           // full (drop_newest, or block timed out): the new item was refused
    closed,                   // close() was called: the new item was refused
  };

  // `idle_spin`: how long pop_batch polls an empty queue, yielding the CPU, before it blocks.
  // While the consumer polls, a push wakes nobody: at steady rates the producer never pays for a
  // futex wake-up (several microseconds, often with its own preemption). Zero blocks at once.
  explicit BoundedQueue(std::size_t capacity,
                        std::chrono::microseconds idle_spin = std::chrono::microseconds(0))
      : capacity_(capacity), idle_spin_(idle_spin) {}

  // Adds `item` under `policy`. With OverflowPolicy::block, waits up to `block_timeout` for room.
  // `evicted` receives the removed item for accepted_dropped_oldest.
  Push push(T&& item, OverflowPolicy policy, std::chrono::milliseconds block_timeout,
            std::optional<T>* evicted = nullptr) {
    std::unique_lock lock(mutex_);
    if (closed_) return Push::closed;
    Push result = Push::accepted;
    if (live() >= capacity_) {
      switch (policy) {
        case OverflowPolicy::drop_newest:
          return Push::dropped_newest;
        case OverflowPolicy::drop_oldest:
          if (evicted != nullptr) evicted->emplace(std::move(items_[head_]));
          ++head_;
          compact();
          result = Push::accepted_dropped_oldest;
          break;
        case OverflowPolicy::block:
          if (!not_full_.wait_for(lock, block_timeout, [&] { return closed_ || live() < capacity_; })) {
            return Push::dropped_newest;
          }
          if (closed_) return Push::closed;
          break;
      }
    }
    items_.push_back(std::move(item));
    size_.store(live(), std::memory_order_release);
    const bool wake = consumers_blocked_ > 0;
    lock.unlock();
    if (wake) not_empty_.notify_one();
    return result;
  }

  // Moves up to `max` items into `out` (appending), waiting until at least one is there, the
  // queue is closed, or `until`. Returns false only when the queue is closed and empty. An empty
  // `out` whose capacity is kept between calls is swapped in as the next storage when the whole
  // queue fits: the items move in O(1) under the lock and no buffer is allocated again.
  bool pop_batch(std::vector<T>& out, std::size_t max, std::chrono::steady_clock::time_point until) {
    if (idle_spin_.count() > 0 && size_.load(std::memory_order_acquire) == 0) {
      const auto spin_until = std::min(until, std::chrono::steady_clock::now() + idle_spin_);
      while (size_.load(std::memory_order_acquire) == 0 && !closed_flag_.load(std::memory_order_acquire) &&
             std::chrono::steady_clock::now() < spin_until) {
        std::this_thread::yield();
      }
    }
    std::unique_lock lock(mutex_);
    ++consumers_blocked_;
    not_empty_.wait_until(lock, until, [&] { return closed_ || live() > 0; });
    --consumers_blocked_;
    if (live() == 0) return !closed_;
    if (live() <= max && head_ == 0 && out.empty()) {
      items_.swap(out);
      if (items_.capacity() > kKeptCapacity) std::vector<T>().swap(items_);
    } else {
      const std::size_t count = std::min(max, live());
      out.reserve(out.size() + count);
      for (std::size_t i = 0; i < count; ++i) out.push_back(std::move(items_[head_ + i]));
      head_ += count;
      compact();
    }
    size_.store(live(), std::memory_order_release);
    lock.unlock();
    not_full_.notify_all();
    return true;
  }

  // Refuses further pushes and wakes every waiter. Items already queued stay poppable.
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      closed_flag_.store(true, std::memory_order_release);
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  // Removes and returns everything still queued.
  std::vector<T> take_all() {
    std::vector<T> rest;
    {
      std::lock_guard lock(mutex_);
      rest.swap(items_);
      rest.erase(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
      size_.store(0, std::memory_order_release);
    }
    not_full_.notify_all();
    return rest;
  }

  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return live();
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  const std::size_t capacity_;
  const std::chrono::microseconds idle_spin_;
  mutable std::mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  static constexpr std::size_t kKeptCapacity = 4096;  // items an empty queue keeps room for

  std::size_t live() const { return items_.size() - head_; }  // mutex_ held

  // Drops the moved-from prefix once it is at least half of the storage (amortised O(1)), and
  // the memory of a past burst once the queue is empty.
  void compact() {  // mutex_ held
    if (head_ == items_.size()) {
      if (items_.capacity() > kKeptCapacity) {
        std::vector<T>().swap(items_);
      } else {
        items_.clear();
      }
      head_ = 0;
    } else if (head_ >= items_.size() / 2) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
  }

  std::vector<T> items_;  // guarded by mutex_: [head_, size) are queued, [0, head_) moved from
  std::size_t head_ = 0;  // guarded by mutex_
  bool closed_ = false;  // guarded by mutex_
  std::size_t consumers_blocked_ = 0;  // guarded by mutex_: consumers inside wait_until
  // Written under mutex_, read without it by a spinning consumer.
  std::atomic<std::size_t> size_{0};
  std::atomic<bool> closed_flag_{false};
};

}  // namespace notifications::detail
