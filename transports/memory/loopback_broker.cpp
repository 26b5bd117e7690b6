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
#include <system_error>
#include <thread>
#include <utility>

#include "transport/kit.hpp"
#include "notifications/subject.hpp"

namespace notifications::loopback {

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
  std::shared_ptr<Outstanding> from;
  bool redeliver = false;  // mock fault: handed over twice, the second time as redelivery 1
};

// One subscription. Its handler is called by one thread at a time: the delivery thread (queued)
// or the thread that set `delivering` (inline).
struct Sub : std::enable_shared_from_this<Sub> {
  Sub(std::uint64_t id_, std::string pattern_, std::string group_, DeliveryHandler handler_,
      const EndpointOptions& options, std::shared_ptr<Stats> stats_)
      : id(id_),
        pattern(std::move(pattern_)),
        tokens(pattern_tokens(pattern)),
        group(std::move(group_)),
        inline_mode(options.inline_delivery),
        max_pending(options.max_pending),
        handler(std::move(handler_)),
        stats(std::move(stats_)) {}

  const std::uint64_t id;
  const std::string pattern;
  const std::vector<std::string> tokens;
  const std::string group;
  const bool inline_mode;
  const std::size_t max_pending;
  const DeliveryHandler handler;
  const std::shared_ptr<Stats> stats;

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
    if (item.redeliver) {
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
  return s.queue.size() < s.max_pending;
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

  const std::string prefix = std::string(scheme) + "://";
  const std::string_view url = config.url;
  if (url.size() < prefix.size() || detail::ascii_lower(url.substr(0, prefix.size())) != prefix) {
    fail("expected " + prefix + "[<broker>][?mode=inline|queued&max_pending=<n>]");
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
      } else {
        unknown.push_back(key);
      }
    }
    if (!unknown.empty()) fail("unknown option keys " + quoted_list(unknown) + " (known: mode, max_pending)");
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
    if (key == "mode" || key == "max_pending") {
      known.emplace_back(std::move(key), std::move(value));
    } else {
      unknown.push_back(std::move(key));
    }
  }
  if (!unknown.empty()) fail("unknown query keys " + quoted_list(unknown) + " (known: mode, max_pending)");
  for (const auto& [key, value] : known) {
    if (key == "mode") {
      set_mode("query", value);
    } else {
      set_max_pending("query", value);
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

  mutable Mutex mutex;
  std::map<std::uint64_t, Entry> subs NOTIFICATIONS_GUARDED_BY(mutex);
  std::vector<Entry> retired NOTIFICATIONS_GUARDED_BY(mutex);  // unsubscribed; threads not joined yet
  bool paused NOTIFICATIONS_GUARDED_BY(mutex) = false;
  bool closed NOTIFICATIONS_GUARDED_BY(mutex) = false;

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

void Endpoint::subscribe(std::uint64_t id, const std::string& pattern, const std::string& group,
                         DeliveryHandler handler) {
  Impl& d = *impl_;
  auto s = std::make_shared<Sub>(id, pattern, group, std::move(handler), d.options, d.stats);
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
  return nlohmann::json{
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
}

}  // namespace notifications::loopback
