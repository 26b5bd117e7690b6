// The in-process broker shared by the memory and mock transports (loopback_broker.hpp).
#include "transports/memory/loopback_broker.hpp"

#include "notifications/transports/memory.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

#include "transport/kit.hpp"
#include "notifications/subject.hpp"

namespace notifications::loopback {

namespace {

// A message dropped at max_deliveries is counted in health() and said here, at most once a second
// (a flood of them must not flood the log).
void log_max_deliveries(const std::string& subject, std::uint64_t total) {
  static std::atomic<std::int64_t> last_ms{0};
  const std::int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  std::int64_t last = last_ms.load(std::memory_order_relaxed);
  if ((last != 0 && now_ms - last < 1000) || !last_ms.compare_exchange_strong(last, now_ms)) return;
  detail::log(detail::LogLevel::warn,
              "notifications memory transport: a message on \"{}\" reached max_deliveries without an ack and is "
              "not delivered again (max_deliveries_reached: {})",
              detail::wire_text(subject, 120), total);
}

}  // namespace


namespace {

using Clock = std::chrono::steady_clock;
using detail::Mutex;
using detail::MutexLock;
using detail::MutexUnlock;
using detail::UniqueMutexLock;

// Messages one endpoint routed that are not handed to a handler (or discarded) yet.
struct Outstanding {
  std::atomic<std::size_t> count{0};
  Mutex mutex;  // only for waiting: guards no data
  std::condition_variable changed;

  void add(std::size_t n) { count.fetch_add(n); }
  void done() {
    if (count.fetch_sub(1) == 1) {
      MutexLock lock(mutex);  // orders the notify after a waiter's predicate check
      changed.notify_all();
    }
  }
  bool wait(Deadline deadline) {
    UniqueMutexLock lock(mutex);
    while (count.load() != 0) {
      if (lock.wait_until(changed, deadline) == std::cv_status::timeout) break;
    }
    return count.load() == 0;
  }
};

// One endpoint's counters; shared with its subscriptions, which may outlive it briefly.
struct Stats {
  std::atomic<std::uint64_t> published{0};
  std::atomic<std::uint64_t> delivered{0};
  std::atomic<std::uint64_t> refused_full{0};
  std::atomic<std::uint64_t> refused_invalid{0};
  std::atomic<std::uint64_t> discarded{0};
  std::atomic<std::uint64_t> handler_errors{0};

  // wait_delivered(): waiters registers first, then checks under mutex; on_delivered() counts,
  // then notifies only when someone waits (all seq_cst, so neither side misses the other).
  std::atomic<int> waiters{0};
  Mutex mutex;  // only for waiting: guards no data
  std::condition_variable changed;

  void on_delivered() {
    delivered.fetch_add(1);
    if (waiters.load() != 0) {
      MutexLock lock(mutex);
      changed.notify_all();
    }
  }
};

struct Item {
  Message message;
  std::shared_ptr<Outstanding> from;  // null for a redelivery (acknowledgements)
  bool redeliver = false;  // mock fault: handed over twice, the second time as redelivery 1
  std::uint32_t delivered_before = 0;  // acknowledgements: Delivery::redelivery of this one
};

struct Acks;

// One subscription. Its handler is called by one thread at a time: the delivery thread (queued)
// or the thread that set `delivering` (inline).
struct Sub : std::enable_shared_from_this<Sub> {
  Sub(std::uint64_t id_, std::string pattern_, std::string group_, DeliveryHandler handler_,
      const EndpointOptions& options, std::shared_ptr<Stats> stats_, std::shared_ptr<Acks> acks_,
      std::chrono::milliseconds ack_wait_, std::uint32_t max_deliveries_)
      : id(id_),
        pattern(std::move(pattern_)),
        tokens(pattern_tokens(pattern)),
        group(std::move(group_)),
        inline_mode(options.inline_delivery),
        max_pending(options.max_pending),
        handler(std::move(handler_)),
        stats(std::move(stats_)),
        acks(std::move(acks_)),
        ack_wait(ack_wait_),
        max_deliveries(max_deliveries_) {}

  const std::uint64_t id;
  const std::string pattern;
  const std::vector<std::string> tokens;
  const std::string group;
  const bool inline_mode;
  const std::size_t max_pending;
  const DeliveryHandler handler;
  const std::shared_ptr<Stats> stats;
  // Acknowledgements: the endpoint's timers and counters (null when off), and this
  // subscription's ack wait and max deliveries (0: no limit).
  const std::shared_ptr<Acks> acks;
  const std::chrono::milliseconds ack_wait;
  const std::uint32_t max_deliveries;

  // A delivery handed over and not settled yet (acknowledgements): kept to be redelivered.
  struct Unsettled {
    Message message;
    std::uint32_t deliveries = 1;  // how often it was delivered, this delivery included
    Clock::time_point due;         // when its armed timer fires (ack wait or nak delay)
    bool naked = false;            // settled with nak: waits for its redelivery, settles no more
  };

  Mutex mutex;
  std::condition_variable changed;  // queue, paused, closing, delivering, finished, cancelled
  std::deque<Item> queue NOTIFICATIONS_GUARDED_BY(mutex);
  bool paused NOTIFICATIONS_GUARDED_BY(mutex) = false;      // hold deliveries (mock disconnect)
  bool closing NOTIFICATIONS_GUARDED_BY(mutex) = false;     // off the broker: deliver the rest, then finish
  bool delivering NOTIFICATIONS_GUARDED_BY(mutex) = false;  // inline: a thread is in drain()
  bool finished NOTIFICATIONS_GUARDED_BY(mutex) = false;    // queued: the thread has left its loop
  bool parking NOTIFICATIONS_GUARDED_BY(mutex) = false;     // queued: leave the loop for a fork, keep the queue
  // Set under mutex; the queue is already discarded. Atomic: hand_over() reads it without mutex.
  std::atomic<bool> cancelled{false};
  // Acknowledgements: the unsettled deliveries by key (one key per delivery), and the source of
  // keys.
  std::unordered_map<std::uint64_t, Unsettled> unsettled NOTIFICATIONS_GUARDED_BY(mutex);
  std::uint64_t next_key NOTIFICATIONS_GUARDED_BY(mutex) = 0;

  // What counts against max_pending: queued messages, and with acknowledgements the unsettled
  // deliveries too.
  std::size_t held() const NOTIFICATIONS_REQUIRES(mutex) {
    return acks ? queue.size() + unsettled.size() : queue.size();
  }
};

struct Group {
  std::string pattern;
  std::vector<std::string> tokens;
  std::string name;
  std::vector<std::shared_ptr<Sub>> members;  // in subscription order
  std::size_t next = 0;                       // round-robin position
};

struct Broker {
  std::string space;
  std::string name;
  Mutex mutex;
  std::vector<std::shared_ptr<Sub>> plain NOTIFICATIONS_GUARDED_BY(mutex);  // in subscription order
  std::vector<Group> groups NOTIFICATIONS_GUARDED_BY(mutex);
};

// Where an armed timer sits: the unsettled delivery `key` of the subscription at address `sub`
// is due at `due`. Ordered by time first.
struct TimerKey {
  Clock::time_point due;
  std::uintptr_t sub = 0;
  std::uint64_t key = 0;
  auto operator<=>(const TimerKey&) const = default;
};

// One armed timer, taken out of its endpoint's timers to fire.
struct Timer {
  TimerKey at;
  std::shared_ptr<Sub> sub;  // keeps a subscription whose delivery is due alive past unsubscribe
};

// The acknowledgements of one endpoint: the timers of its subscriptions' unsettled deliveries,
// the thread that fires them (ack wait ended, nak delay passed), and the counters. Shared with
// its subscriptions, which may outlive the endpoint briefly.
struct Acks {
  Acks(std::string space_, std::shared_ptr<Broker> broker_, std::shared_ptr<Stats> stats_)
      : space(std::move(space_)), broker(std::move(broker_)), stats(std::move(stats_)) {}

  const std::string space;
  const std::shared_ptr<Broker> broker;
  const std::shared_ptr<Stats> stats;

  Mutex mutex;
  std::condition_variable changed;  // timers, closed, parking, running
  // Exactly the armed timers: one per unsettled delivery; settling, in_progress and nak disarm
  // the one they replace, so nothing stale piles up.
  std::map<TimerKey, std::shared_ptr<Sub>> timers NOTIFICATIONS_GUARDED_BY(mutex);
  bool closed NOTIFICATIONS_GUARDED_BY(mutex) = false;   // close(): no timer is armed any more
  bool parking NOTIFICATIONS_GUARDED_BY(mutex) = false;  // prepare_fork(): leave the loop
  bool running NOTIFICATIONS_GUARDED_BY(mutex) = false;  // the thread is in its loop
  std::thread thread;  // started by the first subscribe; touched under the endpoint's mutex

  std::atomic<std::uint64_t> unsettled{0};  // a gauge: deliveries not acked or terminated yet
  std::atomic<std::uint64_t> acked{0};
  std::atomic<std::uint64_t> naked{0};
  std::atomic<std::uint64_t> terminated{0};
  std::atomic<std::uint64_t> in_progress{0};
  std::atomic<std::uint64_t> redelivered{0};
  std::atomic<std::uint64_t> expired{0};
  std::atomic<std::uint64_t> max_deliveries_reached{0};
  std::atomic<std::uint64_t> unsettled_discarded{0};
  std::atomic<std::uint64_t> stale_settlements{0};
};

// Process-wide brokers by namespace and name; an entry lives while an endpoint holds it.
std::shared_ptr<Broker> broker_for(const std::string& space, const std::string& name) {
  struct Brokers {
    Mutex mutex;
    std::map<std::pair<std::string, std::string>, std::weak_ptr<Broker>> by_name NOTIFICATIONS_GUARDED_BY(mutex);
  };
  static Brokers* const brokers = new Brokers;  // never destroyed: endpoints may outlive statics
  MutexLock lock(brokers->mutex);
  std::erase_if(brokers->by_name, [](const auto& entry) { return entry.second.expired(); });
  auto& slot = brokers->by_name[{space, name}];
  if (auto broker = slot.lock()) return broker;
  auto broker = std::make_shared<Broker>();
  broker->space = space;
  broker->name = name;
  slot = broker;
  return broker;
}

void discard(std::deque<Item>& items, Stats& stats) {
  stats.discarded.fetch_add(items.size());
  for (auto& item : items) {
    if (item.from) item.from->done();
  }
  items.clear();
}

// Arms a timer, unless the endpoint's acknowledgements were closed (false then).
bool arm(Acks& acks, const std::shared_ptr<Sub>& s, std::uint64_t key, Clock::time_point due)
    NOTIFICATIONS_EXCLUDES(acks.mutex) {
  bool earliest = false;
  {
    MutexLock lock(acks.mutex);
    if (acks.closed) return false;
    const TimerKey at{due, reinterpret_cast<std::uintptr_t>(s.get()), key};
    earliest = acks.timers.empty() || at < acks.timers.begin()->first;
    acks.timers.emplace(at, s);
  }
  if (earliest) acks.changed.notify_all();
  return true;
}

// Removes the timer of delivery `key` of `s` that is due at `due`, if it is still armed. The
// caller holds s.mutex, so the subscription outlives the reference dropped here.
void disarm(Acks& acks, const Sub& s, std::uint64_t key, Clock::time_point due) NOTIFICATIONS_EXCLUDES(acks.mutex) {
  MutexLock lock(acks.mutex);
  acks.timers.erase(TimerKey{due, reinterpret_cast<std::uintptr_t>(&s), key});
}

// What a Delivery's settle and in_progress functions hold: weak references, so that a delivery
// kept by a user keeps neither its subscription (and handler) nor its endpoint alive.
struct DeliveryRef {
  std::weak_ptr<Sub> sub;
  std::weak_ptr<Acks> acks;  // to count a settlement that comes after the subscription is gone
  std::uint64_t key = 0;

  // The subscription, or null (then counted as a stale settlement while the endpoint lives).
  std::shared_ptr<Sub> lock() const {
    std::shared_ptr<Sub> s = sub.lock();
    if (!s) {
      if (const auto a = acks.lock()) a->stale_settlements.fetch_add(1);
    }
    return s;
  }
};

// Settles the delivery, if it is still unsettled (else counted as stale).
void settle_delivery(const DeliveryRef& ref, Settlement how) {
  const std::shared_ptr<Sub> s = ref.lock();
  if (!s) return;  // the subscription is gone, and what it kept with it
  const std::uint64_t key = ref.key;
  Acks& acks = *s->acks;
  MutexLock lock(s->mutex);
  const auto it = s->unsettled.find(key);
  if (it == s->unsettled.end() || it->second.naked) {
    acks.stale_settlements.fetch_add(1);
    return;
  }
  switch (how.outcome) {
    case Settle::ack:
    case Settle::term:
      (how.outcome == Settle::ack ? acks.acked : acks.terminated).fetch_add(1);
      disarm(acks, *s, key, it->second.due);
      s->unsettled.erase(it);
      acks.unsettled.fetch_sub(1);
      break;
    case Settle::nak:
      acks.naked.fetch_add(1);
      disarm(acks, *s, key, it->second.due);
      if (s->max_deliveries != 0 && it->second.deliveries >= s->max_deliveries) {
        const std::uint64_t reached = acks.max_deliveries_reached.fetch_add(1) + 1;  // its last delivery: not redelivered
        log_max_deliveries(it->second.message.subject, reached);
        s->unsettled.erase(it);
        acks.unsettled.fetch_sub(1);
        break;
      }
      it->second.naked = true;
      it->second.due = Clock::now() + std::max(how.delay, std::chrono::milliseconds{0});
      arm(acks, s, key, it->second.due);  // not once closed: close() discards (and counts) it
      break;
  }
}

// Restarts the ack wait of the delivery, if it is still unsettled (else counted as stale).
void touch_delivery(const DeliveryRef& ref) {
  const std::shared_ptr<Sub> s = ref.lock();
  if (!s) return;
  const std::uint64_t key = ref.key;
  Acks& acks = *s->acks;
  MutexLock lock(s->mutex);
  const auto it = s->unsettled.find(key);
  if (it == s->unsettled.end() || it->second.naked) {
    acks.stale_settlements.fetch_add(1);
    return;
  }
  acks.in_progress.fetch_add(1);
  disarm(acks, *s, key, it->second.due);
  it->second.due = Clock::now() + s->ack_wait;
  arm(acks, s, key, it->second.due);
}

// With acknowledgements: records the delivery as unsettled, arms its ack wait, gives it settle and
// in_progress functions, then calls the handler through `call`.
template <class Call>
void hand_over_acked(Sub& s, Message message, std::uint32_t delivered_before, const Call& call) {
  std::uint64_t key = 0;
  {
    MutexLock lock(s.mutex);
    key = ++s.next_key;
    const Clock::time_point due = Clock::now() + s.ack_wait;
    s.unsettled.emplace(key, Sub::Unsettled{message, delivered_before + 1, due, false});
    s.acks->unsettled.fetch_add(1);
    arm(*s.acks, s.shared_from_this(), key, due);
  }
  Delivery delivery;
  delivery.message = std::move(message);
  delivery.redelivery = delivered_before;
  DeliveryRef ref{s.weak_from_this(), s.acks, key};
  delivery.settle = [ref](Settlement how) { settle_delivery(ref, how); };
  delivery.in_progress = [ref = std::move(ref)] { touch_delivery(ref); };
  call(std::move(delivery));
}

// Hands one message to the handler, or discards it when the subscription was cancelled after
// the message left the queue.
void hand_over(Sub& s, Item&& item) {
  if (s.cancelled.load()) {
    s.stats->discarded.fetch_add(1);
  } else {
    auto call = [&s](Delivery&& delivery) {
      try {
        s.handler(std::move(delivery));
      } catch (...) {  // handlers must not throw; count it and keep delivering
        s.stats->handler_errors.fetch_add(1);
      }
      s.stats->on_delivered();
    };
    if (s.acks) {
      if (item.redeliver) hand_over_acked(s, item.message, 0, call);
      hand_over_acked(s, std::move(item.message), item.redeliver ? 1 : item.delivered_before, call);
    } else if (item.redeliver) {
      Delivery first;
      first.message = item.message;
      call(std::move(first));
      Delivery again;
      again.message = std::move(item.message);
      again.redelivery = 1;
      call(std::move(again));
    } else {
      Delivery delivery;
      delivery.message = std::move(item.message);
      call(std::move(delivery));
    }
  }
  if (item.from) item.from->done();
}

// Delivers queued messages in order, releasing s.mutex around each handler call, until the queue
// is empty, the subscription is paused (and not closing), cancelled or parking, or the deadline
// passed.
void drain(Sub& s, Deadline deadline = Deadline::max()) NOTIFICATIONS_REQUIRES(s.mutex) {
  while (!s.cancelled.load() && !s.parking && (!s.paused || s.closing) && !s.queue.empty()) {
    if (deadline != Deadline::max() && Clock::now() >= deadline) return;
    Item item = std::move(s.queue.front());
    s.queue.pop_front();
    MutexUnlock unlocked(s.mutex);
    hand_over(s, std::move(item));
  }
}

// Inline mode: the calling thread set s.delivering and now delivers until nothing is left.
void deliver_inline(Sub& s) NOTIFICATIONS_EXCLUDES(s.mutex) {
  MutexLock lock(s.mutex);
  drain(s);
  s.delivering = false;  // under the same lock as drain's last check: no message is stranded
  s.changed.notify_all();
}

// Queued mode: the delivery thread of one subscription.
void run_delivery(const std::shared_ptr<Sub>& s) {
  detail::name_this_thread("ntf-memory");
  UniqueMutexLock lock(s->mutex);
  for (;;) {
    while (!(s->parking || s->cancelled.load() || s->closing || (!s->paused && !s->queue.empty()))) {
      lock.wait(s->changed);
    }
    if (!s->parking) drain(*s);
    if (s->parking || s->cancelled.load() || (s->closing && s->queue.empty())) break;
  }
  s->finished = true;
  s->changed.notify_all();
}

// Marks s cancelled and returns what it still held.
std::deque<Item> cancel(Sub& s) NOTIFICATIONS_EXCLUDES(s.mutex) {
  std::deque<Item> left;
  MutexLock lock(s.mutex);
  s.cancelled.store(true);
  left.swap(s.queue);
  s.changed.notify_all();
  return left;
}

bool has_room(Sub& s) NOTIFICATIONS_EXCLUDES(s.mutex) {
  MutexLock lock(s.mutex);
  return s.held() < s.max_pending;
}

void remove_from_broker(Broker& broker, const Sub* s) NOTIFICATIONS_REQUIRES(broker.mutex) {
  std::erase_if(broker.plain, [&](const auto& p) { return p.get() == s; });
  for (auto& g : broker.groups) {
    std::erase_if(g.members, [&](const auto& p) { return p.get() == s; });
  }
  std::erase_if(broker.groups, [](const Group& g) { return g.members.empty(); });
}

std::string full_error(const Broker& broker, const Sub& s, bool whole_group) {
  std::string text = whole_group ? "every member of group \"" + s.group + "\" on \"" + s.pattern + "\""
                                 : "subscription \"" + s.pattern + "\"";
  return text + " (" + broker.space + " broker \"" + broker.name + "\") already holds max_pending=" +
         std::to_string(s.max_pending) + " undelivered messages; retry later";
}

// Where a queued item goes next on one subscription.
enum class Queued { waits, deliver_here, cancelled };

// Queues `item` on `s` (as route() does) and says whether the caller must deliver it inline.
Queued enqueue(Sub& s, Item&& item) NOTIFICATIONS_EXCLUDES(s.mutex) {
  MutexLock lock(s.mutex);
  if (s.cancelled.load()) return Queued::cancelled;
  const bool was_empty = s.queue.empty();
  s.queue.push_back(std::move(item));
  if (s.inline_mode) {
    if (!s.delivering && !s.paused) {
      s.delivering = true;
      return Queued::deliver_here;
    }
  } else if (was_empty && !s.paused) {
    s.changed.notify_one();
  }
  return Queued::waits;
}

// Redelivers `item`, which subscription `from` held unsettled: to `from` itself when it is a plain
// subscription, else to one member of its group, round-robin among those with room (`from` when
// none has room and it is still a member; the next in turn when it is not). Inline subscriptions
// are delivered on this thread. Counted as unsettled_discarded when nobody can get it.
void requeue(Acks& acks, const std::shared_ptr<Sub>& from, Item&& item) {
  // Counted before it is queued: a delivery thread may hand it over at once.
  acks.redelivered.fetch_add(1);
  std::shared_ptr<Sub> target;
  Queued queued = Queued::cancelled;
  if (from->group.empty()) {
    target = from;
    queued = enqueue(*target, std::move(item));
  } else {
    Broker& broker = *acks.broker;
    MutexLock lock(broker.mutex);
    const auto g = std::find_if(broker.groups.begin(), broker.groups.end(), [&](const Group& x) {
      return x.pattern == from->pattern && x.name == from->group;
    });
    if (g != broker.groups.end() && !g->members.empty()) {
      const std::size_t n = g->members.size();
      std::size_t chosen = n;
      for (std::size_t k = 0; k < n && chosen == n; ++k) {
        const std::size_t i = (g->next + k) % n;
        if (has_room(*g->members[i])) chosen = i;
      }
      if (chosen == n) {
        const auto self = std::find(g->members.begin(), g->members.end(), from);
        chosen = self != g->members.end() ? static_cast<std::size_t>(self - g->members.begin()) : g->next % n;
      }
      g->next = chosen + 1;
      target = g->members[chosen];
      queued = enqueue(*target, std::move(item));
    }
  }
  if (queued == Queued::cancelled) {
    acks.redelivered.fetch_sub(1);
    acks.unsettled_discarded.fetch_add(1);
    return;
  }
  if (queued == Queued::deliver_here) deliver_inline(*target);
}

// A timer is due: redelivers its delivery (ack wait ended, or nak delay passed) unless it was
// settled or touched since it was taken out, or drops it when it reached max_deliveries (counted).
void fire(Acks& acks, const Timer& timer) {
  Sub& s = *timer.sub;
  Item item;
  {
    MutexLock lock(s.mutex);
    const auto it = s.unsettled.find(timer.at.key);
    if (it == s.unsettled.end() || it->second.due != timer.at.due) return;  // settled or re-armed since
    Sub::Unsettled u = std::move(it->second);
    s.unsettled.erase(it);
    acks.unsettled.fetch_sub(1);
    if (!u.naked) {
      acks.expired.fetch_add(1);
      if (s.max_deliveries != 0 && u.deliveries >= s.max_deliveries) {
        log_max_deliveries(u.message.subject, acks.max_deliveries_reached.fetch_add(1) + 1);
        return;
      }
    }
    item.message = std::move(u.message);
    item.delivered_before = u.deliveries;
  }
  requeue(acks, timer.sub, std::move(item));
}

// The timer thread of one endpoint's acknowledgements: fires due timers until closed or parked.
void run_timers(const std::shared_ptr<Acks>& acks) {
  detail::name_this_thread(acks->space == "mock" ? "ntf-mock-acks" : "ntf-memory-acks");
  UniqueMutexLock lock(acks->mutex);
  while (!acks->closed && !acks->parking) {
    if (acks->timers.empty()) {
      lock.wait(acks->changed);
      continue;
    }
    const auto first = acks->timers.begin();
    if (const Clock::time_point due = first->first.due; Clock::now() < due) {
      lock.wait_until(acks->changed, due);
      continue;
    }
    Timer timer{first->first, std::move(first->second)};
    acks->timers.erase(first);
    lock.unlock();
    fire(*acks, timer);
    timer = Timer{};  // drops the subscription (maybe its last reference) with no lock held
    lock.lock();
  }
  acks->running = false;
  acks->changed.notify_all();
}

// Discards (and counts) what the subscriptions in `subs` hold unsettled, and disarms its timers.
void discard_unsettled(Acks& acks, const std::vector<Sub*>& subs) {
  for (Sub* s : subs) {
    MutexLock lock(s->mutex);
    for (const auto& [key, u] : s->unsettled) disarm(acks, *s, key, u.due);
    acks.unsettled_discarded.fetch_add(s->unsettled.size());
    acks.unsettled.fetch_sub(s->unsettled.size());
    s->unsettled.clear();
  }
}

void join_or_detach(std::thread& thread) {
  if (!thread.joinable()) return;
  if (thread.get_id() == std::this_thread::get_id()) {
    thread.detach();  // stop() from this subscription's own handler (a contract breach): the
                      // thread holds its subscription and finishes on its own
  } else {
    thread.join();
  }
}

std::string name_problem(std::string_view name) {
  if (name.empty()) return "is empty";
  if (name.size() > kMaxSubjectBytes) return "is longer than " + std::to_string(kMaxSubjectBytes) + " bytes";
  for (const char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '_' && c != '-' && c != '.') {
      if (c == '@' || c == ':') return "has '" + std::string(1, c) + "' (credentials are not supported; allowed: letters, digits, '_', '-', '.')";
      return "has '" + std::string(1, c) + "' (allowed: letters, digits, '_', '-', '.')";
    }
  }
  return {};
}

std::string quoted_list(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) out += (out.empty() ? "\"" : ", \"") + k + "\"";
  return out;
}

}  // namespace

// ---- subjects ----------------------------------------------------------------------------------

std::vector<std::string> pattern_tokens(std::string_view pattern) {
  std::vector<std::string> tokens;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t dot = pattern.find('.', pos);
    tokens.emplace_back(pattern.substr(pos, dot == std::string_view::npos ? std::string_view::npos : dot - pos));
    if (dot == std::string_view::npos) return tokens;
    pos = dot + 1;
  }
}

bool subject_matches(const std::vector<std::string>& pattern, std::string_view subject) {
  std::size_t pos = 0;  // start of the next subject token; subject.size() + 1 once all are used
  for (const std::string& token : pattern) {
    if (pos > subject.size()) return false;  // the pattern is longer than the subject
    if (token == ">") return pos < subject.size();  // at least one token left
    std::size_t end = subject.find('.', pos);
    if (end == std::string_view::npos) end = subject.size();
    if (token != "*" && subject.substr(pos, end - pos) != token) return false;
    pos = end + 1;
  }
  return pos == subject.size() + 1;
}

bool subject_matches(std::string_view pattern, std::string_view subject) {
  return subject_matches(pattern_tokens(pattern), subject);
}

// ---- configuration -----------------------------------------------------------------------------

void validate(const EndpointOptions& options) {
  if (const std::string problem = name_problem(options.broker); !problem.empty()) {
    throw TransportError(options.space + " broker name \"" + redact_url(options.broker) + "\" " + problem);
  }
  if (options.max_pending == 0) throw TransportError(options.space + " max_pending: expected >= 1, got 0");
  if (options.ack_wait.count() < 1) {
    throw TransportError(options.space + " ack_wait: expected >= 1 ms, got " + std::to_string(options.ack_wait.count()));
  }
}

void apply_config(const TransportConfig& config, std::string_view scheme, EndpointOptions& options) {
  const std::string shown = redact_url(config.url);
  const auto fail = [&](const std::string& why) {
    throw TransportError(std::string(scheme) + " url \"" + shown + "\": " + why);
  };
  const auto set_mode = [&](const std::string& where, const std::string& value) {
    if (value == "inline") {
      options.inline_delivery = true;
    } else if (value == "queued") {
      options.inline_delivery = false;
    } else {
      fail(where + " \"mode\": expected \"inline\" or \"queued\", got \"" + value + "\"");
    }
  };
  const auto set_max_pending = [&](const std::string& where, const std::string& text) {
    constexpr std::size_t kLimit = std::size_t{1} << 40;
    bool ok = !text.empty() && text.size() <= 13 &&
              std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    const std::size_t value = ok ? std::stoull(text) : 0;
    if (!ok || value == 0 || value > kLimit) {
      fail(where + " \"max_pending\": expected a whole number from 1 to " + std::to_string(kLimit) +
           ", got \"" + text + "\"");
    }
    options.max_pending = value;
  };
  const auto set_acknowledgements = [&](const std::string& where, const std::string& value) {
    if (value == "true") {
      options.acknowledgements = true;
    } else if (value == "false") {
      options.acknowledgements = false;
    } else {
      fail(where + " \"acknowledgements\": expected \"true\" or \"false\", got \"" + value + "\"");
    }
  };
  // A whole number from `low` to `high`, as written in a URL (digits only).
  const auto whole = [&](const std::string& where, const char* key, const std::string& text, std::uint64_t low,
                         std::uint64_t high) {
    const bool ok = !text.empty() && text.size() <= 10 &&
                    std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    const std::uint64_t value = ok ? std::stoull(text) : 0;
    if (!ok || value < low || value > high) {
      fail(where + " \"" + key + "\": expected a whole number from " + std::to_string(low) + " to " +
           std::to_string(high) + ", got \"" + text + "\"");
    }
    return value;
  };
  constexpr std::uint64_t kMaxAckWaitMs = 86'400'000;  // a day
  constexpr std::uint64_t kMaxDeliveries = std::numeric_limits<std::uint32_t>::max();
  const auto set_ack_wait = [&](const std::string& where, const std::string& text) {
    options.ack_wait = std::chrono::milliseconds(whole(where, "ack_wait_ms", text, 1, kMaxAckWaitMs));
  };
  const auto set_max_deliveries = [&](const std::string& where, const std::string& text) {
    options.max_deliveries = static_cast<std::uint32_t>(whole(where, "max_deliveries", text, 0, kMaxDeliveries));
  };
  // A JSON option that must be a whole number: as its digits, or failing with its JSON text.
  const auto json_whole = [&](const char* key, const nlohmann::json& value, std::uint64_t low, std::uint64_t high) {
    if (!value.is_number_integer() || value.get<std::int64_t>() < static_cast<std::int64_t>(low) ||
        (value.is_number_unsigned() ? value.get<std::uint64_t>() : static_cast<std::uint64_t>(value.get<std::int64_t>())) > high) {
      fail(std::string("option \"") + key + "\": expected a whole number from " + std::to_string(low) + " to " +
           std::to_string(high) + ", got " + value.dump());
    }
    return std::to_string(value.get<std::int64_t>());
  };
  static const std::string kKnown = "mode, max_pending, acknowledgements, ack_wait_ms, max_deliveries";

  const std::string prefix = std::string(scheme) + "://";
  const std::string_view url = config.url;
  if (url.size() < prefix.size() || detail::ascii_lower(url.substr(0, prefix.size())) != prefix) {
    fail("expected " + prefix +
         "[<broker>][?mode=inline|queued&max_pending=<n>&acknowledgements=true|false&ack_wait_ms=<n>&max_deliveries=<n>]");
  }

  // config.options first, so the URL wins.
  if (!config.options.is_null()) {
    if (!config.options.is_object()) fail("options: expected a JSON object, got " + config.options.dump());
    std::vector<std::string> unknown;
    for (const auto& [key, value] : config.options.items()) {
      if (key == "mode") {
        if (!value.is_string()) fail("option \"mode\": expected \"inline\" or \"queued\", got " + value.dump());
        set_mode("option", value.get<std::string>());
      } else if (key == "max_pending") {
        if (!value.is_number_integer() || value.get<std::int64_t>() < 1) {
          fail("option \"max_pending\": expected a whole number >= 1, got " + value.dump());
        }
        set_max_pending("option", std::to_string(value.get<std::int64_t>()));
      } else if (key == "acknowledgements") {
        if (!value.is_boolean()) fail("option \"acknowledgements\": expected true or false, got " + value.dump());
        options.acknowledgements = value.get<bool>();
      } else if (key == "ack_wait_ms") {
        set_ack_wait("option", json_whole("ack_wait_ms", value, 1, kMaxAckWaitMs));
      } else if (key == "max_deliveries") {
        set_max_deliveries("option", json_whole("max_deliveries", value, 0, kMaxDeliveries));
      } else {
        unknown.push_back(key);
      }
    }
    if (!unknown.empty()) fail("unknown option keys " + quoted_list(unknown) + " (known: " + kKnown + ")");
  }

  const std::string_view rest = url.substr(prefix.size());
  const std::size_t q = rest.find('?');
  const std::string_view name = rest.substr(0, q);
  if (!name.empty()) {
    if (const std::string problem = name_problem(name); !problem.empty()) {
      fail("broker name \"" + redact_url(name) + "\" " + problem);
    }
    options.broker = std::string(name);
  }
  if (q == std::string_view::npos) return;

  std::vector<std::string> unknown;
  std::vector<std::pair<std::string, std::string>> known;
  for (auto& [key, value] : url_query(rest)) {
    if (key == "mode" || key == "max_pending" || key == "acknowledgements" || key == "ack_wait_ms" ||
        key == "max_deliveries") {
      known.emplace_back(std::move(key), std::move(value));
    } else {
      unknown.push_back(std::move(key));
    }
  }
  if (!unknown.empty()) fail("unknown query keys " + quoted_list(unknown) + " (known: " + kKnown + ")");
  for (const auto& [key, value] : known) {
    if (key == "mode") {
      set_mode("query", value);
    } else if (key == "max_pending") {
      set_max_pending("query", value);
    } else if (key == "acknowledgements") {
      set_acknowledgements("query", value);
    } else if (key == "ack_wait_ms") {
      set_ack_wait("query", value);
    } else {
      set_max_deliveries("query", value);
    }
  }
}

// ---- Endpoint ----------------------------------------------------------------------------------

struct Endpoint::Impl {
  struct Entry {
    std::shared_ptr<Sub> sub;
    std::thread thread;  // queued mode
  };

  explicit Impl(EndpointOptions o) : options(std::move(o)), broker(broker_for(options.space, options.broker)) {}

  const EndpointOptions options;
  const std::shared_ptr<Broker> broker;
  const std::shared_ptr<Stats> stats = std::make_shared<Stats>();
  const std::shared_ptr<Outstanding> outstanding = std::make_shared<Outstanding>();
  // Null without acknowledgements: nothing below about them runs then.
  const std::shared_ptr<Acks> acks =
      options.acknowledgements ? std::make_shared<Acks>(options.space, broker, stats) : nullptr;

  mutable Mutex mutex;
  std::map<std::uint64_t, Entry> subs NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<Entry> retired NOTIFICATIONS_GUARDED_BY(mutex);  // unsubscribed; threads not joined yet
  bool paused NOTIFICATIONS_GUARDED_BY(mutex) = false;
  bool closed NOTIFICATIONS_GUARDED_BY(mutex) = false;
  // prepare_fork() parked the timer thread of acknowledgements: after_fork() starts it again.
  // Read and written under the transport's lifecycle lock only.
  bool acks_parked = false;

  // Joins the retired threads that have finished; returns their entries so the caller destroys
  // them (and the handlers) after unlocking.
  std::vector<Entry> reap() NOTIFICATIONS_REQUIRES(mutex) {
    std::vector<Entry> done;
    for (auto it = retired.begin(); it != retired.end();) {
      bool finished = false;
      {
        MutexLock lock(it->sub->mutex);
        finished = it->sub->finished;
      }
      if (finished) {
        join_or_detach(it->thread);  // the thread is past its last lock: returns at once
        done.push_back(std::move(*it));
        it = retired.erase(it);
      } else {
        ++it;
      }
    }
    return done;
  }
};

Endpoint::Endpoint(EndpointOptions options) {
  validate(options);
  impl_ = std::make_unique<Impl>(std::move(options));
}

Endpoint::~Endpoint() { close(Clock::now()); }

const EndpointOptions& Endpoint::options() const { return impl_->options; }

RouteResult Endpoint::route(const Message& message, bool count, bool redeliver) {
  Impl& d = *impl_;
  if (const std::string problem = subject_problem(message.subject); !problem.empty()) {
    d.stats->refused_invalid.fetch_add(1);
    return RouteResult{false, false, "subject \"" + message.subject + "\": " + problem};
  }
  std::vector<std::shared_ptr<Sub>> deliver_here;  // inline subscriptions this thread delivers to
  {
    Broker& broker = *d.broker;
    MutexLock lock(broker.mutex);
    std::vector<Sub*> targets;
    std::vector<std::pair<Group*, std::size_t>> picks;
    // Check every target first (room only grows while we hold the broker lock): all or none.
    for (const auto& s : broker.plain) {
      if (!subject_matches(s->tokens, message.subject)) continue;
      if (!has_room(*s)) return RouteResult{false, true, full_error(broker, *s, false)};
      targets.push_back(s.get());
    }
    for (auto& g : broker.groups) {
      if (!subject_matches(g.tokens, message.subject)) continue;
      const std::size_t n = g.members.size();
      std::size_t chosen = n;
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (g.next + k) % n;
        if (has_room(*g.members[i])) {
          chosen = i;
          break;
        }
      }
      if (chosen == n) return RouteResult{false, true, full_error(broker, *g.members.front(), true)};
      targets.push_back(g.members[chosen].get());
      picks.emplace_back(&g, chosen);
    }
    d.outstanding->add(targets.size());
    for (Sub* s : targets) {
      MutexLock sub_lock(s->mutex);
      const bool was_empty = s->queue.empty();
      s->queue.push_back(Item{message, d.outstanding, redeliver});
      if (s->inline_mode) {
        if (!s->delivering && !s->paused) {
          s->delivering = true;
          deliver_here.push_back(s->shared_from_this());
        }
      } else if (was_empty && !s->paused) {
        s->changed.notify_one();
      }
    }
    for (auto& [g, chosen] : picks) g->next = chosen + 1;
    if (count) d.stats->published.fetch_add(1);
  }
  for (const auto& s : deliver_here) deliver_inline(*s);
  return {};
}

PublishResult Endpoint::publish(std::span<const Message> batch) {
  for (std::size_t i = 0; i < batch.size(); ++i) {
    RouteResult r = route(batch[i]);
    if (!r.ok) {
      if (r.transient) impl_->stats->refused_full.fetch_add(batch.size() - i);
      return PublishResult{i, r.transient,
                           "message " + std::to_string(i + 1) + " of " + std::to_string(batch.size()) +
                               ": " + r.error};
    }
  }
  return PublishResult{batch.size(), true, {}};
}

void Endpoint::subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& delivery,
                         DeliveryHandler handler) {
  Impl& d = *impl_;
  const std::string& group = delivery.group;
  const auto ack_wait = delivery.ack_wait.count() > 0 ? delivery.ack_wait : d.options.ack_wait;
  const auto max_deliveries = delivery.max_deliveries != 0 ? delivery.max_deliveries : d.options.max_deliveries;
  auto s = std::make_shared<Sub>(id, pattern, group, std::move(handler), d.options, d.stats, d.acks, ack_wait,
                                 max_deliveries);
  std::vector<Impl::Entry> reaped;
  {
    MutexLock lock(d.mutex);
    if (d.closed) throw TransportError(d.options.space + " subscribe \"" + pattern + "\": transport stopped");
    if (d.subs.count(id) != 0) {
      throw TransportError(d.options.space + " subscribe: subscription id " + std::to_string(id) + " in use");
    }
    reaped = d.reap();
    {
      MutexLock sub_lock(s->mutex);  // no other thread knows s yet: never contended
      s->paused = d.paused;
    }
    if (d.acks && !d.acks->thread.joinable()) {
      {
        MutexLock acks_lock(d.acks->mutex);
        d.acks->running = true;
      }
      try {
        d.acks->thread = std::thread([acks = d.acks] { run_timers(acks); });
      } catch (const std::system_error& e) {
        MutexLock acks_lock(d.acks->mutex);
        d.acks->running = false;
        throw TransportError(d.options.space + " subscribe \"" + pattern +
                             "\": cannot start the acknowledgement timer thread: " + e.what());
      }
    }
    Impl::Entry entry{s, {}};
    if (!s->inline_mode) {
      try {
        entry.thread = std::thread([s] { run_delivery(s); });
      } catch (const std::system_error& e) {
        throw TransportError(d.options.space + " subscribe \"" + pattern +
                             "\": cannot start a delivery thread: " + e.what());
      }
    }
    {
      MutexLock broker_lock(d.broker->mutex);
      if (group.empty()) {
        d.broker->plain.push_back(s);
      } else {
        auto g = std::find_if(d.broker->groups.begin(), d.broker->groups.end(),
                              [&](const Group& x) { return x.pattern == pattern && x.name == group; });
        if (g == d.broker->groups.end()) {
          d.broker->groups.push_back(Group{pattern, s->tokens, group, {}, 0});
          g = std::prev(d.broker->groups.end());
        }
        g->members.push_back(s);
      }
    }
    d.subs.emplace(id, std::move(entry));
  }
}

void Endpoint::unsubscribe(std::uint64_t id) {
  Impl& d = *impl_;
  Impl::Entry entry;
  std::vector<Impl::Entry> reaped;
  {
    MutexLock lock(d.mutex);
    const auto it = d.subs.find(id);
    if (it == d.subs.end()) return;
    entry = std::move(it->second);
    d.subs.erase(it);
    reaped = d.reap();
  }
  {
    MutexLock broker_lock(d.broker->mutex);
    remove_from_broker(*d.broker, entry.sub.get());
  }
  std::deque<Item> left = cancel(*entry.sub);
  discard(left, *d.stats);
  // A plain subscription's unsettled deliveries go with it; a group member's stay with their
  // timers, which hand them to the group when due (requeue).
  if (d.acks && entry.sub->group.empty()) discard_unsettled(*d.acks, {entry.sub.get()});
  if (entry.thread.joinable()) {
    UniqueMutexLock lock(d.mutex);
    if (!d.closed) {
      d.retired.push_back(std::move(entry));  // joined later: it may be this very thread
      return;
    }
    lock.unlock();
    join_or_detach(entry.thread);
  }
  // `entry` and `reaped` (handlers included) are destroyed here, with no lock held.
}

bool Endpoint::flush(Deadline deadline) { return impl_->outstanding->wait(deadline); }

void Endpoint::close(Deadline deadline) {
  Impl& d = *impl_;
  std::vector<Impl::Entry> entries;
  {
    MutexLock lock(d.mutex);
    if (d.closed) return;
    d.closed = true;
    for (auto& [id, entry] : d.subs) entries.push_back(std::move(entry));
    d.subs.clear();
    for (auto& entry : d.retired) entries.push_back(std::move(entry));
    d.retired.clear();
  }
  {
    MutexLock broker_lock(d.broker->mutex);
    for (const auto& entry : entries) remove_from_broker(*d.broker, entry.sub.get());
  }
  // No redelivery is queued any more; the timers left (their subscriptions included) are
  // discarded with what is unsettled below.
  std::vector<Timer> timers;
  if (d.acks) {
    std::thread thread;
    {
      MutexLock lock(d.mutex);
      thread = std::move(d.acks->thread);
    }
    {
      MutexLock lock(d.acks->mutex);
      d.acks->closed = true;
      for (auto& [at, sub] : d.acks->timers) timers.push_back(Timer{at, std::move(sub)});
      d.acks->timers.clear();
    }
    d.acks->changed.notify_all();
    join_or_detach(thread);
  }
  // No message arrives any more: deliver what is held (paused ones too) until the deadline.
  for (const auto& entry : entries) {
    Sub& s = *entry.sub;
    MutexLock lock(s.mutex);
    s.closing = true;
    s.changed.notify_all();
  }
  for (const auto& entry : entries) {
    Sub& s = *entry.sub;
    if (!s.inline_mode) continue;
    MutexLock lock(s.mutex);
    if (s.delivering || s.cancelled.load()) continue;  // another thread delivers it
    s.delivering = true;
    drain(s, deadline);
    s.delivering = false;
    s.changed.notify_all();
  }
  for (const auto& entry : entries) {
    Sub& s = *entry.sub;
    UniqueMutexLock lock(s.mutex);
    while (!(s.cancelled.load() || (s.inline_mode ? !s.delivering && s.queue.empty() : s.finished))) {
      if (lock.wait_until(s.changed, deadline) == std::cv_status::timeout) break;
    }
  }
  // Past the deadline: discard what is left, then wait for handler calls in progress.
  for (auto& entry : entries) {
    std::deque<Item> left = cancel(*entry.sub);
    discard(left, *d.stats);
  }
  for (auto& entry : entries) {
    Sub& s = *entry.sub;
    if (s.inline_mode) {
      UniqueMutexLock lock(s.mutex);
      while (s.delivering) lock.wait(s.changed);
    } else {
      join_or_detach(entry.thread);
    }
  }
  if (d.acks) {
    std::set<Sub*> subs;
    for (const auto& entry : entries) subs.insert(entry.sub.get());
    for (const auto& timer : timers) subs.insert(timer.sub.get());
    discard_unsettled(*d.acks, std::vector<Sub*>(subs.begin(), subs.end()));
  }
  // `timers` and `entries` (handlers included) are destroyed here, with no lock held.
}

void Endpoint::prepare_fork(Deadline deadline) {
  Impl& d = *impl_;
  std::vector<Impl::Entry*> threads;
  {
    MutexLock lock(d.mutex);
    if (d.closed) return;
    for (auto& [id, entry] : d.subs) {
      if (entry.thread.joinable()) threads.push_back(&entry);
    }
    for (auto& entry : d.retired) {
      if (entry.thread.joinable()) threads.push_back(&entry);
    }
  }
  // The caller (TransportBase) holds the lifecycle lock: subs and retired do not change.
  for (Impl::Entry* entry : threads) {
    MutexLock lock(entry->sub->mutex);
    entry->sub->parking = true;
    entry->sub->changed.notify_all();
  }
  std::size_t running = 0;
  if (d.acks && d.acks->thread.joinable()) {
    d.acks_parked = true;  // after_fork restarts it
    bool parked = true;
    {
      UniqueMutexLock lock(d.acks->mutex);
      d.acks->parking = true;
      d.acks->changed.notify_all();
      while (d.acks->running) {
        if (lock.wait_until(d.acks->changed, deadline) == std::cv_status::timeout) break;
      }
      parked = !d.acks->running;
    }
    if (parked) {
      if (d.acks->thread.joinable()) d.acks->thread.join();  // past its last lock: returns at once
    } else {
      ++running;  // delivering a redelivery inline: leaves its loop when the handler returns
    }
  }
  for (Impl::Entry* entry : threads) {
    Sub& s = *entry->sub;
    bool finished = false;
    {
      UniqueMutexLock lock(s.mutex);
      while (!s.finished) {
        if (lock.wait_until(s.changed, deadline) == std::cv_status::timeout) break;
      }
      finished = s.finished;
    }
    if (finished) {
      entry->thread.join();  // past its last lock: returns at once
    } else {
      ++running;  // a handler still runs: it leaves the loop when it returns
    }
  }
  if (running != 0) {
    detail::log(detail::LogLevel::warn,
                "notifications {}: {} delivery thread(s) still in a handler at the fork deadline; "
                "a forked child restarts them, what their handlers were doing is lost there",
                d.options.space, running);
  }
}

void Endpoint::after_fork(bool in_child) {
  Impl& d = *impl_;
  MutexLock lock(d.mutex);
  if (d.closed) return;
  if (in_child) {
    // Only the forking thread exists here: threads of the parent are forgotten, not joined.
    for (auto& entry : d.retired) {
      if (entry.thread.joinable()) new std::thread(std::move(entry.thread));  // leaked on purpose
    }
    d.retired.clear();
  }
  for (auto& [id, entry] : d.subs) {
    Sub& s = *entry.sub;
    std::deque<Item> parents;
    {
      MutexLock sub_lock(s.mutex);
      if (in_child) {
        parents.swap(s.queue);  // the parent delivers these: discarded (and counted) here
        s.delivering = false;   // an inline delivery of the parent's does not exist here
      }
      if (s.inline_mode) continue;
      if (s.parking && !s.finished && !in_child) {
        s.parking = false;  // never left its loop (a handler ran past the deadline): runs on
        s.changed.notify_all();
        continue;
      }
      s.parking = false;
      s.finished = false;
    }
    discard(parents, *d.stats);
    if (entry.thread.joinable()) {
      if (in_child) {
        new std::thread(std::move(entry.thread));  // leaked on purpose: never joined
      } else {
        entry.thread.join();  // finished after the deadline
      }
    }
    entry.thread = std::thread([s = entry.sub] { run_delivery(s); });
  }
  if (d.acks) {
    std::vector<Timer> parents;  // in a child: the parent's timers, for the parent's deliveries
    bool start = false;
    {
      MutexLock acks_lock(d.acks->mutex);
      if (in_child) {
        for (auto& [at, sub] : d.acks->timers) parents.push_back(Timer{at, std::move(sub)});
        d.acks->timers.clear();
      }
      d.acks->parking = false;
      if (d.acks->running && !in_child) {
        d.acks->changed.notify_all();  // never left its loop (a handler ran past the deadline): runs on
      } else {
        start = d.acks_parked;
        if (start) d.acks->running = true;
      }
    }
    d.acks_parked = false;
    if (in_child) {
      // The parent's handlers hold these deliveries: discarded (and counted) here.
      std::set<Sub*> subs;
      for (const auto& [id, entry] : d.subs) subs.insert(entry.sub.get());
      for (const auto& timer : parents) subs.insert(timer.sub.get());
      discard_unsettled(*d.acks, std::vector<Sub*>(subs.begin(), subs.end()));
    }
    if (start) {
      if (d.acks->thread.joinable()) {
        if (in_child) {
          new std::thread(std::move(d.acks->thread));  // leaked on purpose: never joined
        } else {
          d.acks->thread.join();  // finished after the deadline
        }
      }
      d.acks->thread = std::thread([acks = d.acks] { run_timers(acks); });
    }
  }
}

void Endpoint::set_paused(bool paused) {
  Impl& d = *impl_;
  std::vector<std::shared_ptr<Sub>> subs;
  {
    MutexLock lock(d.mutex);
    if (d.closed) return;
    d.paused = paused;
    for (const auto& [id, entry] : d.subs) subs.push_back(entry.sub);
  }
  for (const auto& s : subs) {
    MutexLock lock(s->mutex);
    if (s->closing || s->cancelled.load()) continue;
    s->paused = paused;
    if (!paused && !s->inline_mode) s->changed.notify_all();
  }
}

void Endpoint::deliver_held() {
  Impl& d = *impl_;
  std::vector<std::shared_ptr<Sub>> subs;
  {
    MutexLock lock(d.mutex);
    for (const auto& [id, entry] : d.subs) {
      if (entry.sub->inline_mode) subs.push_back(entry.sub);
    }
  }
  for (const auto& s : subs) {
    {
      MutexLock lock(s->mutex);
      if (s->paused || s->delivering || s->closing || s->cancelled.load() || s->queue.empty()) continue;
      s->delivering = true;
    }
    deliver_inline(*s);
  }
}

std::size_t Endpoint::delivered() const { return impl_->stats->delivered.load(); }

bool Endpoint::wait_delivered(std::size_t count, Deadline deadline) const {
  Stats& stats = *impl_->stats;
  stats.waiters.fetch_add(1);
  bool reached = false;
  {
    UniqueMutexLock lock(stats.mutex);
    while (stats.delivered.load() < count) {
      if (lock.wait_until(stats.changed, deadline) == std::cv_status::timeout) break;
    }
    reached = stats.delivered.load() >= count;
  }
  stats.waiters.fetch_sub(1);
  return reached;
}

nlohmann::json Endpoint::health() const {
  const Impl& d = *impl_;
  std::size_t pending = 0;
  std::size_t subscriptions = 0;
  {
    MutexLock lock(d.mutex);
    subscriptions = d.subs.size();
    for (const auto& [id, entry] : d.subs) {
      MutexLock sub_lock(entry.sub->mutex);
      pending += entry.sub->queue.size();
    }
  }
  const Stats& s = *d.stats;
  nlohmann::json out{
      {"broker", d.options.broker},
      {"mode", d.options.inline_delivery ? "inline" : "queued"},
      {"max_pending", d.options.max_pending},
      {"subscriptions", subscriptions},
      {"published", s.published.load()},
      {"delivered", s.delivered.load()},
      {"pending", pending},
      {"unflushed", d.outstanding->count.load()},
      {"refused_full", s.refused_full.load()},
      {"refused_invalid", s.refused_invalid.load()},
      {"discarded", s.discarded.load()},
      {"handler_errors", s.handler_errors.load()},
  };
  if (const Acks* a = d.acks.get()) {
    out["acknowledgements"] = true;
    out["ack_wait_ms"] = d.options.ack_wait.count();
    out["max_deliveries"] = d.options.max_deliveries;
    out["unsettled"] = a->unsettled.load();
    out["acked"] = a->acked.load();
    out["naked"] = a->naked.load();
    out["terminated"] = a->terminated.load();
    out["in_progress"] = a->in_progress.load();
    out["redelivered"] = a->redelivered.load();
    out["expired"] = a->expired.load();
    out["max_deliveries_reached"] = a->max_deliveries_reached.load();
    out["unsettled_discarded"] = a->unsettled_discarded.load();
    out["stale_settlements"] = a->stale_settlements.load();
  }
  return out;
}

}  // namespace notifications::loopback
