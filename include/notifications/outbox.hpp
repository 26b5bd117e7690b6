// Outbox: where a Bridge keeps the events it accepted until the transport confirmed them. The
// default is a bounded in-memory queue (make_memory_outbox); another implementation (a durable
// one) is given to a Bridge through BridgeHooks::outbox.
//
// Thread-safety: OutboxEvent and OutboxStats are values, OutboxError an immutable exception. An
// Outbox's push(), close(), drain(), stats() and
// depth_unlocked() may be called from any thread, concurrently; take(), settle() and release()
// from one consumer thread at a time (the Bridge's sender). reset_in_forked_child() runs while no
// other thread uses the outbox. prepare_fork() and after_fork_in_parent() run on the thread that
// forks, the one after the other.
//
// Promises of every Outbox (tests/remote/test_outbox.cpp checks each against make_memory_outbox(), in a
// test named OutboxPromise<n>_...):
//   1. Order. take() hands out items in the order push() accepted them.
//   2. Take, then settle. A taken item stays in the outbox, in flight, until settle() removes it:
//      the Bridge settles an item as confirmed only once the transport reported it published
//      (PublishResult::published), or as dropped with the reason it counted. Nothing else
//      removes an accepted item except eviction (promise 4) and drain() or
//      reset_in_forked_child().
//   3. Release keeps order. release() puts the taken, unsettled items back ahead of every other
//      item, in their order; the next take() returns them first. A take() while items are still
//      taken and unsettled (the taker failed before settling) releases them first: they are
//      taken again, in the same order, before anything newer.
//   4. Bounds. At most `capacity` items and, when max_bytes is not 0, max_bytes (as
//      OutboxEvent::queued_bytes() counts them) wait to be taken; in-flight items do not count.
//      An item is always accepted into an empty outbox. Past a bound: block waits up to
//      block_timeout for room, then refuses the new item (dropped_newest); drop_newest refuses it;
//      drop_oldest evicts the oldest item not in flight (never a taken one) and hands it back
//      through `evicted`, except past the byte bound, where the new item is refused.
//   5. Close. After close(), push() refuses (closed); items already in stay takeable, and take()
//      returns false only when nothing is left to take. take() also returns (true, with an empty
//      batch) at `until`.
//   6. Drain. drain() removes and returns the items not in flight, oldest first (shutdown counts
//      them); in-flight items stay with the taker, which settles them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "notifications/errors.hpp"

namespace notifications {

enum class OverflowPolicy {
  block,        // wait up to block_timeout for room, then drop the new event (counted)
  drop_newest,  // drop the new event (counted)
  drop_oldest,  // drop the oldest queued event (never one in flight) to make room (counted)
  // Past the memory bound, write to the outbox's file instead of dropping (an outbox that keeps
  // events in a file: Outbox::persistent(); the memory outbox refuses it as drop_newest).
  spill,
};

// How a Bridge keeps the events it accepted until the transport confirmed them
// (docs/outbox.md). Every mode but none needs an outbox file (BridgeConfig::outbox.path).
enum class Durability {
  none,   // in memory; past the bound, the overflow policy (spill: to the file)
  async,  // the sender commits each batch to the file before sending it; a crash loses at most
          // what was still in memory (the memory bound, plus the batch being committed)
  sync,   // instrument() returns after its event is committed; concurrent callers share commits
};

// A local event as an outbox keeps it: what its envelope needs, with the payload already
// serialised (compact JSON). Name, payload and traceparent are kept back to back inside the
// object when together they fit in kInlineBytes (most events), so creating one allocates
// nothing; longer texts go to one heap buffer. Move-only.
// Thread-safety: a value; distinct objects may be used from distinct threads.
class OutboxEvent {
 public:
  static constexpr std::size_t kInlineBytes = 184;  // makes the whole object 256 bytes

  OutboxEvent() noexcept = default;
  OutboxEvent(OutboxEvent&& other) noexcept { take(other); }
  OutboxEvent& operator=(OutboxEvent&& other) noexcept {
    if (this != &other) take(other);
    return *this;
  }
  OutboxEvent(const OutboxEvent&) = delete;
  OutboxEvent& operator=(const OutboxEvent&) = delete;
  ~OutboxEvent() = default;

  // The views must not point into this event's own text. Throws std::length_error past 4 GiB in
  // one text, std::bad_alloc when out of memory.
  // `attributes`: the event's context and tags as one compact JSON object
  // {"context":{...},"tags":{...}} (either member absent when empty), or empty for neither.
  void set_text(std::string_view name, std::string_view payload, std::string_view traceparent,
                std::string_view attributes = {});

  std::string_view name() const noexcept { return {text(), name_size_}; }
  std::string_view payload() const noexcept { return {text() + name_size_, payload_size_}; }  // compact JSON
  // Well-formed, or empty (malformed ones do not travel).
  std::string_view traceparent() const noexcept { return {text() + name_size_ + payload_size_, traceparent_size_}; }
  // The context and tags as set_text() took them: a compact JSON object, or empty.
  std::string_view attributes() const noexcept {
    return {text() + name_size_ + payload_size_ + traceparent_size_, attributes_size_};
  }
  // What this event holds in memory: the object, its heap text and its exception.
  std::size_t queued_bytes() const noexcept {
    std::size_t bytes = sizeof(OutboxEvent) + (heap_ ? text_size() : 0);
    if (exception) bytes += exception->first.size() + exception->second.size() + sizeof(*exception);
    return bytes;
  }

  std::uint64_t id_sequence = 0;  // formats the envelope id, with id_salt
  // The process salt the envelope id is formatted with; 0: this process's. An outbox that
  // outlives the process stores this_process_id_salt() for 0, so a replay after a restart sends
  // the same Message::id (a dedupe window or a receiver's redelivery window recognises it).
  std::uint64_t id_salt = 0;
  static std::uint64_t this_process_id_salt() noexcept;
  // The envelope sequence the Bridge gave the event when it first sent it (0: not yet), so that a
  // retry after release() sends the same one. It belongs to one producer instance: an outbox that
  // outlives the process stores 0.
  std::uint64_t sequence = 0;
  std::chrono::system_clock::time_point time{};
  std::chrono::microseconds duration{0};
  std::unique_ptr<std::pair<std::string, std::string>> exception;  // type and message; null: none

 private:
  const char* text() const noexcept { return heap_ ? heap_.get() : inline_; }
  std::size_t text_size() const noexcept {
    return std::size_t{name_size_} + payload_size_ + traceparent_size_ + attributes_size_;
  }
  void take(OutboxEvent& other) noexcept;

  std::unique_ptr<char[]> heap_;  // null: the text is in inline_
  std::uint32_t name_size_ = 0;
  std::uint32_t payload_size_ = 0;
  std::uint32_t traceparent_size_ = 0;
  std::uint32_t attributes_size_ = 0;
  char inline_[kInlineBytes];
};

// What an outbox holds, for Bridge::health()["queue"].
struct OutboxStats {
  std::size_t depth = 0;      // items waiting to be taken
  std::size_t in_flight = 0;  // taken (or taken and released), not yet settled
  std::size_t capacity = 0;
  std::size_t bytes = 0;      // of the items waiting
  std::size_t max_bytes = 0;  // 0: no byte bound
  // Outboxes that keep events in a file (persistent()): rows in the file, sent or not yet, and
  // the events kept there for a later run at close.
  std::size_t stored = 0;
  std::uint64_t spilled = 0;  // pushes written to the file because memory was full (spill)
  // Write transactions the outbox committed to its file (inserts, and deletes of settled rows),
  // since it was made: commits per event show how many pushes share a commit. 0 for memory.
  std::uint64_t commits = 0;
  // Commits to the file that failed (disk full, I/O error, lock held too long): the events stay in
  // memory and are sent from there; the outbox retries the file (docs/outbox.md). 0 for memory.
  std::uint64_t store_failures = 0;
};

// The outbound store of one Bridge (see the promises above). An outbox serves one Bridge.
class Outbox {
 public:
  enum class Push {
    accepted,
    accepted_dropped_oldest,  // accepted; the oldest item not in flight was evicted
    dropped_newest,           // full (drop_newest, byte bound, or block timed out): refused
    closed,                   // close() was called: refused
  };
  enum class Settled { confirmed, dropped };

  virtual ~Outbox() = default;

  // Adds `event` under `policy` (promise 4). `evicted` receives the evicted item for
  // accepted_dropped_oldest; `waited` is set when the call waited for room. Throws only when the
  // item could not be stored (std::bad_alloc, or an implementation's storage error); then
  // nothing changed.
  virtual Push push(OutboxEvent&& event, OverflowPolicy policy, std::chrono::milliseconds block_timeout,
                    std::optional<OutboxEvent>* evicted = nullptr, bool* waited = nullptr) = 0;

  // Sets `batch` to up to `max` (>= 1) of the oldest items, now in flight, waiting until there is
  // one, the outbox is closed, or `until` (then `batch` is empty). The span stays valid until the
  // next take(), release() or drain(); the taker may write the items' `sequence`. False only when
  // closed and nothing is left to take.
  virtual bool take(std::span<OutboxEvent>& batch, std::size_t max, std::chrono::steady_clock::time_point until) = 0;

  // The oldest `count` taken, unsettled items leave the outbox, as `how` (with `reason` when
  // dropped). `count` is at most the number of taken, unsettled items.
  virtual void settle(std::size_t count, Settled how, std::string_view reason = {}) = 0;

  // The taken, unsettled items go back ahead of all others, in order (promise 3).
  virtual void release() = 0;

  // Refuses later pushes and wakes a waiting take() and waiting pushes.
  virtual void close() = 0;

  // Removes and returns the items not in flight, oldest first (promise 6).
  virtual std::vector<OutboxEvent> drain() = 0;

  virtual OutboxStats stats() const = 0;
  // Items waiting, without taking any lock (may be a moment old): for a forked child, where a
  // lock may be held by a thread that does not exist.
  virtual std::size_t depth_unlocked() const noexcept = 0;

  // In a child forked with prepare_fork()/after_fork(): forgets every item, taken or not (the
  // parent delivers them).
  virtual void reset_in_forked_child() = 0;

  // True when the outbox keeps accepted events in a file until they are settled: then a Bridge
  // never settles an event as dropped for shutdown's deadline or for exhausted retries; it
  // releases it, and drain() keeps what waits for the next start (returning nothing). It also
  // settles an event as confirmed only after the transport confirmed it (flush() on a transport
  // that is not persistent). Default: false.
  virtual bool persistent() const noexcept { return false; }
  // Around fork() (notifications/fork.hpp), after the Bridge parked its sender: an outbox with a
  // thread of its own parks it holding no lock, or returns false at `deadline` (then the fork is
  // not prepared, and after_fork_in_parent() is not called). In the child, reset_in_forked_child()
  // follows instead. Defaults: nothing to park.
  virtual bool prepare_fork(std::chrono::steady_clock::time_point deadline) {
    (void)deadline;
    return true;
  }
  virtual void after_fork_in_parent() {}
  // Waking: wake() makes a take() waiting now, or else the next one, return at once (an empty
  // batch when nothing waits), so that a Bridge whose sender waits with no deadline can still
  // park it for fork(). An outbox that implements wake() says so with wakes(); a Bridge passes
  // take() a deadline no further than 100 ms away to one that does not. Defaults: no waking.
  virtual bool wakes() const noexcept { return false; }
  virtual void wake() {}
  // What this outbox is, for health and logs: "memory", or "sqlite <path>" and its mode.
  virtual std::string description() const { return "memory"; }
};

// An outbox's storage failed (a file that cannot be opened, written, or is not an outbox). The
// message names the file and what to do. Thread-safety: immutable once thrown.
class OutboxError : public Error {
 public:
  explicit OutboxError(const std::string& message) : Error("outbox", message) {}
};

// The default outbox: bounded, in memory (what a Bridge uses unless BridgeHooks::outbox is set).
// `batch_items`: the usual take() size, which lets a take hand over a whole storage segment
// without moving items. Throws std::invalid_argument when capacity is 0.
std::shared_ptr<Outbox> make_memory_outbox(std::size_t capacity, std::size_t max_bytes = 0, std::size_t batch_items = 256);

}  // namespace notifications
