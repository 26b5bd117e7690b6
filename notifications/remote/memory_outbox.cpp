// The default Outbox: a BoundedQueue of waiting items and, on the consumer's side, the batch it
// took. See notifications/outbox.hpp for the promises.
#include <algorithm>
#include <atomic>
#include <stdexcept>

#include "notifications/outbox.hpp"
#include "transport/bounded_queue.hpp"

namespace notifications {
namespace {

struct QueuedBytes {
  std::size_t operator()(const OutboxEvent& event) const noexcept { return event.queued_bytes(); }
};

using Queue = detail::BoundedQueue<OutboxEvent, QueuedBytes>;

static_assert(static_cast<int>(Queue::Push::accepted) == static_cast<int>(Outbox::Push::accepted) &&
              static_cast<int>(Queue::Push::accepted_dropped_oldest) ==
                  static_cast<int>(Outbox::Push::accepted_dropped_oldest) &&
              static_cast<int>(Queue::Push::dropped_newest) == static_cast<int>(Outbox::Push::dropped_newest) &&
              static_cast<int>(Queue::Push::closed) == static_cast<int>(Outbox::Push::closed));

// How long take() polls an empty queue before blocking (see BoundedQueue).
constexpr std::chrono::microseconds kIdleSpin{50};

// Thread-safety: as Outbox. held_, settled_ and taken_ belong to the consumer (take, settle,
// release); in_flight_ mirrors them for stats() on other threads.
class MemoryOutbox final : public Outbox {
 public:
  MemoryOutbox(std::size_t capacity, std::size_t max_bytes, std::size_t batch_items)
      : queue_(capacity, kIdleSpin, batch_items, max_bytes) {}

  Push push(OutboxEvent&& event, OverflowPolicy policy, std::chrono::milliseconds block_timeout,
            std::optional<OutboxEvent>* evicted, bool* waited) override {
    // spill needs a file: here memory is all there is (a Bridge refuses spill over this outbox).
    if (policy == OverflowPolicy::spill) policy = OverflowPolicy::drop_newest;
    return static_cast<Push>(queue_.push(std::move(event), policy, block_timeout, evicted, waited));
  }

  bool take(std::span<OutboxEvent>& batch, std::size_t max, std::chrono::steady_clock::time_point until) override {
    max = std::max<std::size_t>(max, 1);
    bool open = true;
    if (settled_ < held_.size()) {  // released (or never settled): these come first, in order
      if (settled_ > 0) held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(settled_));
    } else {
      open = queue_.pop_batch(held_, max, until);  // recycles the settled batch's buffer
    }
    settled_ = 0;
    taken_ = std::min(max, held_.size());
    in_flight_.store(held_.size(), std::memory_order_relaxed);
    batch = std::span<OutboxEvent>(held_.data(), taken_);
    return open;
  }

  void settle(std::size_t count, Settled, std::string_view) override {
    settled_ = std::min(settled_ + count, taken_);
    in_flight_.store(held_.size() - settled_, std::memory_order_relaxed);
  }

  void release() override { taken_ = settled_; }

  void close() override { queue_.close(); }

  bool wakes() const noexcept override { return true; }
  void wake() override { queue_.wake(); }

  std::vector<OutboxEvent> drain() override {
    auto rest = queue_.take_all();
    return std::vector<OutboxEvent>(std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
  }

  OutboxStats stats() const override {
    return {queue_.size(), in_flight_.load(std::memory_order_relaxed), queue_.capacity(), queue_.bytes(),
            queue_.max_bytes()};
  }

  std::size_t depth_unlocked() const noexcept override { return queue_.size_unlocked(); }

  void reset_in_forked_child() override {
    queue_.take_all();
    held_.clear();
    settled_ = 0;
    taken_ = 0;
    in_flight_.store(0, std::memory_order_relaxed);
  }

 private:
  Queue queue_;
  Queue::Batch held_;        // the last batch taken: [0, settled_) settled, [settled_, taken_) in flight,
                             // the rest released
  std::size_t settled_ = 0;
  std::size_t taken_ = 0;
  std::atomic<std::size_t> in_flight_{0};
};

}  // namespace

std::shared_ptr<Outbox> make_memory_outbox(std::size_t capacity, std::size_t max_bytes, std::size_t batch_items) {
  if (capacity == 0) throw std::invalid_argument("make_memory_outbox: capacity must be at least 1");
  return std::make_shared<MemoryOutbox>(capacity, max_bytes, batch_items);
}

}  // namespace notifications
