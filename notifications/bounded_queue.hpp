// Private: the bounded, thread-safe handoff queue between threads that must not wait on each
// other (instrumenting threads -> the Bridge's sender; transport callbacks -> its dispatcher).
//
// Thread-safety: every member may be called from any thread. One mutex guards the deque; pushes
// never call out while holding it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
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

  explicit BoundedQueue(std::size_t capacity) : capacity_(capacity) {}

  // Adds `item` under `policy`. With OverflowPolicy::block, waits up to `block_timeout` for room.
  // `evicted` receives the removed item for accepted_dropped_oldest.
  Push push(T&& item, OverflowPolicy policy, std::chrono::milliseconds block_timeout,
            std::optional<T>* evicted = nullptr) {
    std::unique_lock lock(mutex_);
    if (closed_) return Push::closed;
    Push result = Push::accepted;
    if (items_.size() >= capacity_) {
      switch (policy) {
        case OverflowPolicy::drop_newest:
          return Push::dropped_newest;
        case OverflowPolicy::drop_oldest:
          if (evicted != nullptr) evicted->emplace(std::move(items_.front()));
          items_.pop_front();
          result = Push::accepted_dropped_oldest;
          break;
        case OverflowPolicy::block:
          if (!not_full_.wait_for(lock, block_timeout,
                                  [&] { return closed_ || items_.size() < capacity_; })) {
            return Push::dropped_newest;
          }
          if (closed_) return Push::closed;
          break;
      }
    }
    items_.push_back(std::move(item));
    lock.unlock();
    not_empty_.notify_one();
    return result;
  }

  // Moves up to `max` items into `out` (appending), waiting until at least one is there, the
  // queue is closed, or `until`. Returns false only when the queue is closed and empty.
  bool pop_batch(std::vector<T>& out, std::size_t max, std::chrono::steady_clock::time_point until) {
    std::unique_lock lock(mutex_);
    not_empty_.wait_until(lock, until, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return !closed_;
    const std::size_t count = std::min(max, items_.size());
    for (std::size_t i = 0; i < count; ++i) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    lock.unlock();
    not_full_.notify_all();
    return true;
  }

  // Refuses further pushes and wakes every waiter. Items already queued stay poppable.
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  // Removes and returns everything still queued.
  std::deque<T> take_all() {
    std::deque<T> rest;
    {
      std::lock_guard lock(mutex_);
      rest.swap(items_);
    }
    not_full_.notify_all();
    return rest;
  }

  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return items_.size();
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::deque<T> items_;  // guarded by mutex_
  bool closed_ = false;  // guarded by mutex_
};

}  // namespace notifications::detail
