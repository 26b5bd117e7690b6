// Private: the bounded, thread-safe handoff queue between threads that must not wait on each
// other (instrumenting threads -> the Bridge's sender; transport callbacks -> its dispatcher).
//
// Thread-safety: every member may be called from any thread. One mutex guards the items; pushes
// never call out while holding it.
//
// Bounds: `capacity` items, and, when `max_bytes` is not 0, `max_bytes` as SizeOf counts them
// (an item is always accepted into an empty queue, so that one large item is not refused for
// ever). Past the byte bound the new item is refused (drop_newest and drop_oldest alike: evicting
// many small items for one large one would lose more than it keeps) or, with block, waits.
//
// Storage is a chain of segments of `segment_items` items each. A consumer whose batch fits takes
// the oldest segment whole (O(1) under the lock) and hands its previous batch back as a spare, so
// in steady state nothing is allocated or moved. A segment is allocated with its pages already
// touched (PrefaultingAllocator): during a burst that outgrows the spares, the page faults of new
// memory are paid by one push per segment instead of one push in every few.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "notifications/outbox.hpp"  // OverflowPolicy
#include "process/thread_safety.hpp"

namespace notifications::detail {

// std::allocator whose allocations come back with every page written once, so that first-touch
// page faults happen inside allocate() rather than on later, scattered writes.
// Thread-safety: stateless; safe from any thread.
template <class T>
struct PrefaultingAllocator {
  using value_type = T;
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "over-aligned items need an aligned operator new");
  static constexpr std::size_t kPageBytes = 4096;  // touching more often than the page size is harmless

  PrefaultingAllocator() noexcept = default;
  template <class U>
  PrefaultingAllocator(const PrefaultingAllocator<U>&) noexcept {}  // NOLINT: rebinding is implicit

  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    void* memory = ::operator new(bytes);
    auto* page = static_cast<volatile unsigned char*>(memory);
    for (std::size_t offset = 0; offset < bytes; offset += kPageBytes) page[offset] = 0;
    if (bytes > 0) page[bytes - 1] = 0;  // the last page, when the block does not start on a page
    return static_cast<T*>(memory);
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p); }

  template <class U>
  bool operator==(const PrefaultingAllocator<U>&) const noexcept {
    return true;
  }
};

// The default SizeOf: items count nothing towards a byte bound.
struct NoBytes {
  template <class T>
  constexpr std::size_t operator()(const T&) const noexcept {
    return 0;
  }
};

// For tests: when set, called by pop_batch while it holds the queue's mutex (a test forks while
// the consumer holds the lock). One load of a global per pop_batch when unset.
inline std::atomic<void (*)()> queue_locked_test_hook{nullptr};

template <class T, class SizeOf = NoBytes>
class BoundedQueue {
  static_assert(std::is_nothrow_move_constructible_v<T>, "items move between segments under the lock");

 public:
  using Batch = std::vector<T, PrefaultingAllocator<T>>;
  // Hinted pushes in a row that may leave a blocked consumer asleep (see push()).
  static constexpr std::uint32_t kMaxDeferredWakes = 64;

  enum class Push {
    accepted,
    accepted_dropped_oldest,  // accepted; the oldest item was removed to make room
    dropped_newest,           // full (drop_newest, or block timed out): the new item was refused
    closed,                   // close() was called: the new item was refused
  };

  // `idle_spin`: how long pop_batch polls an empty queue, yielding the CPU, before it blocks.
  // While the consumer polls, a push wakes nobody: in a burst the producer never pays for a
  // futex wake-up (several microseconds, often with its own preemption). Zero blocks at once.
  // `spin_only_when_it_pays`: the poll runs only while an empty queue has lately filled again
  // within half of `idle_spin` on average (see spin_pays()), so items that come in groups far
  // apart (a steady rate) find the consumer blocked instead of burning a core between them. For
  // a consumer that trades CPU for latency, leave it false: on a virtual machine even a poll that
  // finds nothing keeps a core awake, and waking an idle one costs tens of microseconds.
  // `segment_items`: items per storage segment; a consumer taking `segment_items` per pop_batch
  // takes whole segments. Clamped to [1, capacity].
  explicit BoundedQueue(std::size_t capacity,
                        std::chrono::microseconds idle_spin = std::chrono::microseconds(0),
                        std::size_t segment_items = 256, std::size_t max_bytes = 0,
                        bool spin_only_when_it_pays = false)
      : capacity_(capacity),
        max_bytes_(max_bytes),
        idle_spin_(idle_spin),
        adaptive_spin_(spin_only_when_it_pays),
        segment_items_(std::clamp<std::size_t>(segment_items, 1, std::max<std::size_t>(capacity, 1))),
        max_spares_(std::max<std::size_t>(2, kKeptItems / segment_items_)) {
    spares_.reserve(max_spares_);  // keep_spare() never allocates
  }

  // Adds `item` under `policy`. With OverflowPolicy::block, waits up to `block_timeout` for room.
  // `evicted` receives the removed item for accepted_dropped_oldest; `waited` is set to true when
  // the call had to wait for room (block). Throws std::bad_alloc when there is no memory for a
  // new segment; then nothing changed and `item` was not queued.
  // `more_follows`: the producer pushes again right after this call (a transport's hint,
  // Delivery::more_follows). A blocked consumer is then not woken by this push but by the next one
  // without the hint, by a hinted push after kMaxDeferredWakes of them in a row, by wake() or close():
  // one wake-up per burst instead of one per item. A producer that passes it must push again, or
  // see that the queue is woken or closed.
  Push push(T&& item, OverflowPolicy policy, std::chrono::milliseconds block_timeout,
            std::optional<T>* evicted = nullptr, bool* waited = nullptr, bool more_follows = false)
      NOTIFICATIONS_EXCLUDES(mutex_) {
    const std::size_t item_bytes = SizeOf{}(item);
    Batch fresh;  // a new segment, allocated (pages touched) without holding the lock
    UniqueMutexLock lock(mutex_);
    std::optional<std::chrono::steady_clock::time_point> give_up;  // block: set at the first wait
    const auto bytes_full = [&]() NOTIFICATIONS_REQUIRES(mutex_) {
      return max_bytes_ != 0 && live_ > 0 && bytes_ + item_bytes > max_bytes_;
    };
    const auto has_room = [&]() NOTIFICATIONS_REQUIRES(mutex_) {
      return closed_ || (live_ < capacity_ && !bytes_full());
    };
    while (true) {  // every check again after the lock was released (waiting, or allocating)
      if (closed_) return Push::closed;
      const bool count_full = live_ >= capacity_;
      if ((count_full || bytes_full()) && policy == OverflowPolicy::block) {
        if (!give_up) give_up = std::chrono::steady_clock::now() + block_timeout;
        if (waited != nullptr) *waited = true;
        while (!has_room()) {
          if (lock.wait_until(not_full_, *give_up) == std::cv_status::timeout) break;
        }
        if (!has_room()) return Push::dropped_newest;
        continue;
      }
      if (bytes_full()) return Push::dropped_newest;
      if (count_full && policy == OverflowPolicy::drop_newest) return Push::dropped_newest;
      if (!tail_full() || !spares_.empty() || fresh.capacity() > 0) break;  // room for the item
      lock.unlock();
      fresh.reserve(segment_items_);
      lock.lock();
    }
    if (tail_full()) reserve_segment_slot();  // the last step that may throw: nothing changed yet
    Push result = Push::accepted;
    if (live_ >= capacity_) {  // drop_oldest: the only policy that gets here with the queue full
      bytes_ -= SizeOf{}(front()[head_]);
      if (evicted != nullptr) evicted->emplace(std::move(front()[head_]));
      ++head_;
      --live_;
      retire_front_if_spent();
      result = Push::accepted_dropped_oldest;
    }
    // No allocation: the loop above left room in the last segment, a spare or `fresh`, under
    // this same hold of the lock (an eviction only adds spares).
    if (tail_full()) segments_.push_back(next_segment(fresh));
    segments_.back().push_back(std::move(item));  // within the segment's reserved room
    ++live_;
    bytes_ += item_bytes;
    size_.store(live_, std::memory_order_release);
    if (fresh.capacity() > 0) keep_spare(std::move(fresh));
    bool wake = consumers_blocked_ > 0;
    if (wake && more_follows && deferred_wakes_ < kMaxDeferredWakes) {
      ++deferred_wakes_;
      wake = false;
    } else if (wake) {
      deferred_wakes_ = 0;
    }
    lock.unlock();
    if (wake) not_empty_.notify_one();
    return result;
  }

  // Replaces the content of `out` with up to `max` of the oldest items, waiting until at least
  // one is there, the queue is closed, wake() is called, or `until` (time_point::max(): no
  // deadline, no timer). Returns false only when the queue is closed and empty. With `max` at most segment_items, a whole segment changes hands and `out`'s
  // previous buffer becomes a spare: a consumer reusing one Batch runs without allocating. A
  // larger `max` moves the items into `out`, whose buffer it keeps and grows to what it needed.
  // Throws std::bad_alloc (nothing taken) when `out` cannot grow.
  bool pop_batch(Batch& out, std::size_t max, std::chrono::steady_clock::time_point until)
      NOTIFICATIONS_EXCLUDES(mutex_) {
    out.clear();
    // Set when the queue was empty on entry: how long it took to fill again is measured.
    std::optional<std::chrono::steady_clock::time_point> empty_since;
    if (idle_spin_.count() > 0 && size_.load(std::memory_order_acquire) == 0) {
      if (adaptive_spin_) empty_since = std::chrono::steady_clock::now();
      if (spin_pays()) {
        polls_.fetch_add(1, std::memory_order_relaxed);
        const auto spin_until = std::min(until, std::chrono::steady_clock::now() + idle_spin_);
        while (size_.load(std::memory_order_acquire) == 0 && !closed_flag_.load(std::memory_order_acquire) &&
               !wake_flag_.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < spin_until) {
          std::this_thread::yield();
        }
      }
    }
    UniqueMutexLock lock(mutex_);
    if (auto hook = queue_locked_test_hook.load(std::memory_order_relaxed)) hook();
    ++consumers_blocked_;
    while (!closed_ && live_ == 0 && !wake_) {
      if (until == std::chrono::steady_clock::time_point::max()) {
        lock.wait(not_empty_);
      } else if (lock.wait_until(not_empty_, until) == std::cv_status::timeout) {
        break;
      }
    }
    --consumers_blocked_;
    deferred_wakes_ = 0;
    if (wake_) {  // one wake() returns one waiting (or the next) pop_batch
      wake_ = false;
      wake_flag_.store(false, std::memory_order_release);
    } else if (empty_since && !closed_) {
      note_refill(std::chrono::steady_clock::now() - *empty_since);
    }
    if (live_ == 0) return !closed_;
    if (max <= segment_items_ && head_ == 0 && front().size() <= max) {
      keep_spare(std::move(out));
      out = std::move(front());
      pop_front_segment();
      live_ -= out.size();
      if constexpr (!std::is_same_v<SizeOf, NoBytes>) {
        for (const T& item : out) bytes_ -= SizeOf{}(item);
      }
    } else {
      const std::size_t count = std::min(max, live_);
      out.reserve(count);
      for (std::size_t i = 0; i < count; ++i) {
        bytes_ -= SizeOf{}(front()[head_]);
        out.push_back(std::move(front()[head_]));
        ++head_;
        --live_;
        retire_front_if_spent();
      }
    }
    if (live_ == 0) bytes_ = 0;
    size_.store(live_, std::memory_order_release);
    lock.unlock();
    not_full_.notify_all();
    return true;
  }

  // Consumers blocked in pop_batch now (tests wait for one to block).
  std::size_t blocked_consumers_for_tests() const NOTIFICATIONS_EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    return consumers_blocked_;
  }

  // Makes the pop_batch waiting now, or else the next one, return at once (with what is queued,
  // possibly nothing): a consumer that waits with no deadline is asked to look at something else
  // (a pause request).
  void wake() NOTIFICATIONS_EXCLUDES(mutex_) {
    {
      MutexLock lock(mutex_);
      wake_ = true;
      wake_flag_.store(true, std::memory_order_release);
    }
    not_empty_.notify_all();
  }

  // Refuses further pushes and wakes every waiter. Items already queued stay poppable.
  void close() NOTIFICATIONS_EXCLUDES(mutex_) {
    {
      MutexLock lock(mutex_);
      closed_ = true;
      closed_flag_.store(true, std::memory_order_release);
    }
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  // Removes and returns everything still queued, oldest first. Throws std::bad_alloc (nothing
  // taken) when there is no memory for the result.
  Batch take_all() NOTIFICATIONS_EXCLUDES(mutex_) {
    Batch rest;
    {
      MutexLock lock(mutex_);
      rest.reserve(live_);
      for (std::size_t s = first_; s < segments_.size(); ++s) {
        for (std::size_t i = s == first_ ? head_ : 0; i < segments_[s].size(); ++i) rest.push_back(std::move(segments_[s][i]));
      }
      segments_.clear();
      first_ = 0;
      head_ = 0;
      live_ = 0;
      bytes_ = 0;
      size_.store(0, std::memory_order_release);
    }
    not_full_.notify_all();
    return rest;
  }

  std::size_t size() const NOTIFICATIONS_EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    return live_;
  }
  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t bytes() const NOTIFICATIONS_EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    return bytes_;
  }
  std::size_t max_bytes() const noexcept { return max_bytes_; }
  // How many pop_batch calls polled an empty queue before taking the lock.
  std::uint64_t polls() const noexcept { return polls_.load(std::memory_order_relaxed); }
  // The item count without taking the lock (may be a moment old): for a forked child, where the
  // lock may be held by a thread that does not exist.
  std::size_t size_unlocked() const noexcept { return size_.load(std::memory_order_acquire); }

 private:
  static constexpr std::size_t kKeptItems = 4096;  // spare room an idle queue keeps, in items
  static constexpr std::uint64_t kProbeEvery = 16;  // see spin_pays()

  // Spinning pays when an empty queue fills again sooner than blocking and being woken would
  // cost; half of idle_spin is taken as that cost. refill_ns_ is a moving average (weight 1/8)
  // of how long the queue took to fill again after pop_batch found it empty, each sample capped
  // at four times idle_spin: after the longest wait, about 16 quick refills in a row bring it
  // back under the threshold. A blocked consumer's sample includes its own wake-up, which
  // overstates the refill time; so every kProbeEvery-th empty pop polls anyway, and a quick
  // refill seen by a poll pulls the average down.
  bool spin_pays() noexcept {
    if (!adaptive_spin_) return true;
    if (refill_ns_.load(std::memory_order_relaxed) < std::chrono::nanoseconds(idle_spin_).count() / 2) return true;
    return empty_pops_.fetch_add(1, std::memory_order_relaxed) % kProbeEvery == kProbeEvery - 1;
  }
  void note_refill(std::chrono::steady_clock::duration took) noexcept {
    const std::int64_t cap = 4 * std::chrono::nanoseconds(idle_spin_).count();
    const std::int64_t sample = std::min<std::int64_t>(std::chrono::nanoseconds(took).count(), cap);
    const std::int64_t average = refill_ns_.load(std::memory_order_relaxed);
    refill_ns_.store(average + (sample - average) / 8, std::memory_order_relaxed);
  }

  // All with mutex_ held.
  Batch& front() noexcept NOTIFICATIONS_REQUIRES(mutex_) { return segments_[first_]; }
  bool tail_full() const noexcept NOTIFICATIONS_REQUIRES(mutex_) { return segments_.empty() || segments_.back().size() >= segment_items_; }

  // Room for one more segment in segments_, so that adding one cannot throw.
  void reserve_segment_slot() NOTIFICATIONS_REQUIRES(mutex_) {
    if (segments_.size() < segments_.capacity()) return;
    if (first_ > 0) {  // reuse the slots of segments already taken
      segments_.erase(segments_.begin(), segments_.begin() + static_cast<std::ptrdiff_t>(first_));
      first_ = 0;
      return;
    }
    segments_.reserve(std::max<std::size_t>(8, 2 * segments_.size()));
  }

  void pop_front_segment() noexcept NOTIFICATIONS_REQUIRES(mutex_) {
    ++first_;
    if (first_ == segments_.size()) {
      segments_.clear();
      first_ = 0;
    }
  }

  // `fresh` when it was allocated, else a spare (push() made sure there is one of the two).
  Batch next_segment(Batch& fresh) noexcept NOTIFICATIONS_REQUIRES(mutex_) {
    if (fresh.capacity() > 0) return std::move(fresh);
    Batch spare = std::move(spares_.back());
    spares_.pop_back();
    return spare;
  }

  // Keeps an emptied buffer with room for a segment (up to four), while there are fewer than
  // max_spares_; frees it otherwise.
  void keep_spare(Batch&& buffer) noexcept NOTIFICATIONS_REQUIRES(mutex_) {
    buffer.clear();
    if (buffer.capacity() >= segment_items_ && buffer.capacity() <= 4 * segment_items_ &&
        spares_.size() < max_spares_) {
      spares_.push_back(std::move(buffer));  // within the room reserved at construction
    } else {
      Batch().swap(buffer);
    }
  }

  // Recycles the oldest segment once every item in it has been moved out.
  void retire_front_if_spent() noexcept NOTIFICATIONS_REQUIRES(mutex_) {
    if (first_ == segments_.size() || head_ < front().size()) return;
    Batch spent = std::move(front());
    head_ = 0;
    pop_front_segment();
    keep_spare(std::move(spent));
  }

  const std::size_t capacity_;
  const std::size_t max_bytes_;
  const std::chrono::microseconds idle_spin_;
  const bool adaptive_spin_;
  const std::size_t segment_items_;
  const std::size_t max_spares_;
  mutable Mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;

  // segments_[first_ ..] hold the items, oldest first; only the last is partly filled. Slots
  // before first_ were taken and are reused by reserve_segment_slot().
  std::vector<Batch> segments_ NOTIFICATIONS_GUARDED_BY(mutex_);
  std::size_t first_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;
  std::size_t head_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // items already moved out of front()
  std::size_t live_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // items queued
  std::size_t bytes_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // SizeOf of the items queued
  // Emptied buffers with room for a segment, at most max_spares_.
  std::vector<Batch> spares_ NOTIFICATIONS_GUARDED_BY(mutex_);
  bool closed_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;
  bool wake_ NOTIFICATIONS_GUARDED_BY(mutex_) = false;  // wake() called, no pop_batch returned since
  std::size_t consumers_blocked_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // consumers inside wait_until
  std::uint32_t deferred_wakes_ NOTIFICATIONS_GUARDED_BY(mutex_) = 0;  // see push(): more_follows
  // Written under mutex_, read without it by a spinning consumer.
  std::atomic<std::size_t> size_{0};
  std::atomic<bool> closed_flag_{false};
  std::atomic<bool> wake_flag_{false};
  // See spin_pays(). Written by consumers after their wait, without ordering: a heuristic.
  std::atomic<std::int64_t> refill_ns_{0};
  std::atomic<std::uint64_t> polls_{0};
  std::atomic<std::uint64_t> empty_pops_{0};  // empty pops that did not poll (see spin_pays())
};

}  // namespace notifications::detail
