#include "notifications/notifier.hpp"

#include <cxxabi.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <new>
#include <utility>

#include "notifications/errors.hpp"
#include "local/event_access.hpp"
#include "local/event_context.hpp"
#include "local/registry.hpp"
#include "local/thread_cache.hpp"

extern "C" void* __dso_handle;  // this module, for the C++ runtime's thread-exit list

namespace notifications {

namespace detail {

namespace {
std::atomic<std::uint64_t> next_notifier_uid{1};

using SubscriberList = std::vector<std::shared_ptr<Subscriber>>;
using Memo = std::unordered_map<std::string, std::shared_ptr<const ListenerSet>>;

// Everything a registry change displaced. Released after the lock is dropped, because releasing
// a subscriber runs the user's listener destructor, which may call back into the notifier.
struct Displaced {
  SubscriberList subscribers;
  Memo memo;
};

// Publishes a change of the subscriber list to every thread.
void changed(NotifierCore& core, Displaced& displaced) NOTIFICATIONS_REQUIRES(core.state->mutex) {
  displaced.memo.swap(core.state->memo);
  core.subscriber_count.store(core.state->subscribers.size(), std::memory_order_release);
  core.generation.fetch_add(1, std::memory_order_acq_rel);
}

std::shared_ptr<const ListenerSet> build_set(const NotifierState& state, std::string_view name)
    NOTIFICATIONS_REQUIRES(state.mutex) {
  std::shared_ptr<ListenerSet> set;
  for (const auto& subscriber : state.subscribers) {
    if (!subscriber->receives(name)) continue;
    if (!set) set = std::make_shared<ListenerSet>();
    set->subscribers.push_back(subscriber);
    set->needs_cpu_time = set->needs_cpu_time || subscriber->cpu_time;
    set->has_start = set->has_start || subscriber->start_finish_shape();
  }
  return set;
}
}  // namespace

namespace {
// This thread's cache, or null before its first use and once it is released. Trivially
// destructible, so it stays readable while the thread exits.
constinit thread_local ThreadCache* current_cache = nullptr;

// Registered per cache with the C++ runtime's thread-exit list. A cache made while the thread
// exits (a thread_local destructor, or on the main thread a static one, that instruments) is
// registered then too, and released right after the destructor that made it: none is leaked, and
// none is used after its release.
void release_thread_cache(void* cache) noexcept {
  if (current_cache == cache) current_cache = nullptr;  // first: releasing sets may instrument
  delete static_cast<ThreadCache*>(cache);
}

[[gnu::noinline]] ThreadCache& make_thread_cache() {
  auto cache = std::make_unique<ThreadCache>();
  if (__cxxabiv1::__cxa_thread_atexit(release_thread_cache, cache.get(), &__dso_handle) != 0) {
    throw std::bad_alloc();
  }
  current_cache = cache.release();
  return *current_cache;
}
}  // namespace

ThreadCache& thread_cache() {
  if (ThreadCache* cache = current_cache) [[likely]] return *cache;
  return make_thread_cache();
}

void throw_empty_name() { throw InvalidName("event name \"\": empty"); }

bool Subscriber::receives(std::string_view name) const {
  if (!pattern.matches(name)) return false;
  return std::find(excluded.begin(), excluded.end(), name) == excluded.end();
}

NotifierState::NotifierState(NotifierOptions options)
    : name_cache_capacity(std::max<std::size_t>(options.name_cache_capacity, 1)) {
  if (options.error_handler) {
    error_handler = std::make_shared<const ErrorHandler>(std::move(options.error_handler));
  }
  strict.store(options.strict, std::memory_order_relaxed);
}

NotifierCore::NotifierCore() : uid(next_notifier_uid.fetch_add(1, std::memory_order_relaxed)) {}
NotifierCore::~NotifierCore() = default;

std::size_t NotifierCore::hash(std::string_view name) noexcept { return name_hash(name); }

namespace {
[[gnu::noinline]] void release_retired(ThreadCache& cache) {
  auto retired = std::move(cache.retired);
  cache.retired.clear();
  retired.clear();  // may run listener destructors; the cache is consistent here
}

// Resolves `name` under the registry's lock and stores it in `entry`. Out of line, so that the
// cache hit in find_hashed needs no stack frame.
[[gnu::noinline]] const ListenerSet* resolve(NotifierCore& core, ThreadCache& cache,
                                             ThreadCache::Entry& entry, std::string_view name,
                                             std::size_t hash) {
  NotifierState* const state = core.state.get();
  std::shared_ptr<const ListenerSet> set;
  std::uint64_t resolved_at = 0;
  Memo displaced_memo;
  {
    MutexLock lock(state->mutex);
    if (auto hook = registry_locked_test_hook.load(std::memory_order_relaxed)) [[unlikely]] hook();
    resolved_at = core.generation.load(std::memory_order_relaxed);
    if (state->memo_generation != resolved_at) {
      displaced_memo.swap(state->memo);
      state->memo_generation = resolved_at;
    }
    const auto found = state->memo.find(std::string(name));
    if (found != state->memo.end()) {
      set = found->second;
    } else {
      set = build_set(*state, name);
      if (state->memo.size() >= state->name_cache_capacity) displaced_memo.swap(state->memo);
      state->memo.emplace(std::string(name), set);
    }
  }
  if (entry.set) cache.retired.push_back(std::move(entry.set));
  entry.notifier = core.uid;
  entry.generation = resolved_at;
  entry.hash = hash;
  entry.name.assign(name);
  entry.set = std::move(set);
  // displaced_memo is released here; any set in it that this thread still uses is also held by
  // `entry` or by `retired`.
  return entry.set.get();
}

// The lookup both entry points share, inlined into each (a by-name call makes one call, not two).
[[gnu::always_inline]] inline const ListenerSet* find_in_cache(NotifierCore& core,
                                                               std::string_view name,
                                                               std::size_t hash) {
  const std::uint64_t uid = core.uid;
  ThreadCache& cache = thread_cache();
  if (cache.dispatch_depth == 0 && !cache.retired.empty()) [[unlikely]] release_retired(cache);
  ThreadCache::Entry& entry =
      cache.entries[(hash ^ (uid * 0x9E3779B97F4A7C15ull)) % ThreadCache::kEntries];
  const std::uint64_t current = core.generation.load(std::memory_order_acquire);
  if (entry.notifier == uid && entry.generation == current && entry.hash == hash &&
      same_name(entry.name, name)) [[likely]] {
    return entry.set.get();
  }
  return resolve(core, cache, entry, name, hash);
}
}  // namespace

const ListenerSet* NotifierCore::find_slow(std::string_view name) {
  return find_in_cache(*this, name, name_hash(name));
}

const ListenerSet* NotifierCore::find_hashed(std::string_view name, std::size_t hash) {
  return find_in_cache(*this, name, hash);
}

void report_failure(NotifierCore& core, const SubscriberFailure& failure) noexcept;

}  // namespace detail

// ---- Notifier -----------------------------------------------------------------------------------

Notifier::Notifier(NotifierOptions options) : core_(std::make_shared<detail::NotifierCore>()) {
  core_->state = std::make_unique<detail::NotifierState>(std::move(options));
}

Notifier::~Notifier() {
  detail::Displaced displaced;
  detail::MutexLock lock(core_->state->mutex);
  for (auto& subscriber : core_->state->subscribers) {
    subscriber->active.store(false, std::memory_order_release);
  }
  displaced.subscribers.swap(core_->state->subscribers);
  detail::changed(*core_, displaced);
}

namespace {
Subscription add(const std::shared_ptr<detail::NotifierCore>& core,
                 std::shared_ptr<detail::Subscriber> subscriber) {
  detail::Displaced displaced;
  std::uint64_t id = 0;
  {
    detail::MutexLock lock(core->state->mutex);
    id = core->state->next_id++;
    subscriber->id = id;
    core->state->subscribers.push_back(std::move(subscriber));
    detail::changed(*core, displaced);
  }
  return Subscription(core, id);
}
}  // namespace

Subscription Notifier::subscribe(Pattern pattern, EventListener listener,
                                 SubscribeOptions options) {
  auto subscriber = std::make_shared<detail::Subscriber>(std::move(pattern));
  subscriber->on_event = std::move(listener);
  subscriber->cpu_time = options.cpu_time;
  return add(core_, std::move(subscriber));
}

Subscription Notifier::subscribe(Pattern pattern, StartFinishListener listener,
                                 SubscribeOptions options) {
  auto subscriber = std::make_shared<detail::Subscriber>(std::move(pattern));
  subscriber->on_start = listener.start ? std::move(listener.start) : [](const Event&) {};
  subscriber->on_finish = listener.finish ? std::move(listener.finish) : [](const Event&) {};
  subscriber->cpu_time = options.cpu_time;
  return add(core_, std::move(subscriber));
}

Subscription Notifier::subscribe(EventListener listener, SubscribeOptions options) {
  auto subscriber = std::make_shared<detail::Subscriber>(Pattern::all());
  subscriber->on_event = std::move(listener);
  subscriber->cpu_time = options.cpu_time;
  return add(core_, std::move(subscriber));
}

void Notifier::unsubscribe(std::string_view name) {
  detail::Displaced displaced;
  detail::MutexLock lock(core_->state->mutex);
  auto& subscribers = core_->state->subscribers;
  for (auto it = subscribers.begin(); it != subscribers.end();) {
    detail::Subscriber& subscriber = **it;
    if (subscriber.pattern.kind() == Pattern::Kind::exact && subscriber.pattern.text() == name) {
      subscriber.active.store(false, std::memory_order_release);
      displaced.subscribers.push_back(std::move(*it));
      it = subscribers.erase(it);
      continue;
    }
    // As Rails: wildcard and regex subscribers stop receiving this name. Subscribers without a
    // pattern (Pattern::all(), in any listener shape) are never touched.
    if (subscriber.pattern.kind() != Pattern::Kind::all && subscriber.pattern.matches(name)) {
      subscriber.excluded.emplace_back(name);
    }
    ++it;
  }
  detail::changed(*core_, displaced);
}

void Notifier::publish(Event event) {
  const detail::ListenerSet* set = detail::find_listeners(*core_, event.name());
  if (set == nullptr) return;
  // Listeners instrument with the published event's context and tags (a remote event's too).
  const detail::AdoptedEventContext adopted(detail::EventAccess::captured_context(event));
  detail::ActiveEvent active(*core_, *set, std::move(event));
  active.finish(/*instant=*/true);
}

bool Notifier::listening(std::string_view name) {
  return detail::find_listeners(*core_, name) != nullptr;
}

Handle Notifier::handle(std::string name) {
  if (name.empty()) detail::throw_empty_name();
  const std::size_t hash = detail::NotifierCore::hash(name);
  return Handle(core_, std::move(name), hash);
}

void Notifier::set_error_handler(ErrorHandler handler) {
  std::shared_ptr<const ErrorHandler> replaced;
  detail::MutexLock lock(core_->state->mutex);
  replaced = std::move(core_->state->error_handler);
  if (handler) core_->state->error_handler = std::make_shared<const ErrorHandler>(std::move(handler));
}

void Notifier::set_strict(bool strict) {
  core_->state->strict.store(strict, std::memory_order_relaxed);
}

NotifierStats Notifier::stats() const {
  NotifierStats stats;
  detail::MutexLock lock(core_->state->mutex);
  stats.subscriptions = core_->state->subscribers.size();
  stats.cached_names = core_->state->memo.size();
  stats.subscriber_errors = core_->state->subscriber_errors.load(std::memory_order_relaxed);
  stats.error_handler_failures =
      core_->state->error_handler_failures.load(std::memory_order_relaxed);
  return stats;
}

// ---- Handle and Subscription ------------------------------------------------------------------

const detail::ListenerSet* Handle::refresh(std::uint64_t generation) const {
  const detail::ListenerSet* set =
      core_->subscriber_count.load(std::memory_order_acquire) == 0 ? nullptr
                                                                   : core_->find_hashed(name_, hash_);
  // Written only when it changes: threads sharing a handle do not write its cache line per call.
  const std::uint64_t seen = generation * 2 + (set != nullptr ? 1 : 0);
  if (seen_.load(std::memory_order_relaxed) != seen) seen_.store(seen, std::memory_order_relaxed);
  return set;
}

void Subscription::unsubscribe() noexcept {
  const std::shared_ptr<detail::NotifierCore> core = core_.lock();
  core_.reset();
  const std::uint64_t id = std::exchange(id_, 0);
  if (!core || id == 0) return;
  detail::Displaced displaced;
  detail::MutexLock lock(core->state->mutex);
  auto& subscribers = core->state->subscribers;
  const auto it = std::find_if(subscribers.begin(), subscribers.end(),
                               [id](const auto& subscriber) { return subscriber->id == id; });
  if (it == subscribers.end()) return;
  (*it)->active.store(false, std::memory_order_release);
  displaced.subscribers.push_back(std::move(*it));
  subscribers.erase(it);
  detail::changed(*core, displaced);
}

bool Subscription::active() const noexcept {
  const std::shared_ptr<detail::NotifierCore> core = core_.lock();
  if (!core || id_ == 0) return false;
  detail::MutexLock lock(core->state->mutex);
  return std::any_of(core->state->subscribers.begin(), core->state->subscribers.end(),
                     [this](const auto& subscriber) { return subscriber->id == id_; });
}

// ---- The default notifier ---------------------------------------------------------------------

Notifier& default_notifier() {
  static Notifier* const instance = new Notifier();  // never destroyed: see the header
  return *instance;
}

}  // namespace notifications
