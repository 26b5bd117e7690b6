// TransportBase (lifecycle checks and locking), the factory registry, and redact_url.
//
// Contracts TransportBase gives the hooks of a transport:
//   1. do_start runs once, under the lifecycle mutex, and only from `created`. When it throws, the
//      transport stays `created` and start() may be called again.
//   2. do_subscribe / do_unsubscribe run under the lifecycle mutex and only while `started`:
//      subscribe() before start() or after stop() throws TransportError (it is refused, not
//      queued); unsubscribe() then is a no-op. Patterns and group names are validated here first.
//   3. do_publish runs without any lock of the base, possibly on several threads at once, and only
//      while `started`. Before start it returns {0, transient=false, "transport not started"},
//      after stop {0, transient=false, "transport stopped"}; it never throws.
//   4. do_stop runs once, only if do_start succeeded, with no lock of the base held, after every
//      publish() that saw `started` has returned; no do_publish, do_subscribe or do_unsubscribe
//      runs during or after it. A handler may therefore call publish() or unsubscribe() while
//      stop() drains: they return "transport stopped" / do nothing instead of deadlocking.
//   5. do_flush runs only while `started`, without a lock; it may overlap do_stop (which must wake
//      it) and is the one hook that may.
//   6. stop() from `created` moves to `stopped` without calling any hook. A second stop() waits
//      until the first one has finished, so "stop returned" always means "stopped".
//
// How state_ is read without the lifecycle mutex: it is only ever accessed through
// std::atomic_ref and holds a packed word: bits 0-1 are the phase (created, started, stopping,
// stopped), the bits above count publish() calls that passed the state check and have not
// returned yet. One compare-and-swap both checks the phase and registers the call, so stop()
// can switch the phase and then wait for the count to reach zero.
#include "notifications/transport.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <exception>
#include <map>
#include <stdexcept>

#include "process/thread_safety.hpp"
#include "transport/kit.hpp"
#include "notifications/subject.hpp"

namespace notifications {

namespace {

// ---- the packed state word -------------------------------------------------------------------

constexpr int kCreated = 0;
constexpr int kStarted = 1;
constexpr int kStopping = 2;  // do_stop is running; state() reports `stopped`
constexpr int kStopped = 3;
constexpr int kPhaseMask = 3;
constexpr int kOneCall = 4;  // one publish() in flight

using StateRef = std::atomic_ref<TransportBase::State>;
static_assert(StateRef::required_alignment <= alignof(TransportBase::State));

int word(TransportBase::State s) { return static_cast<int>(s); }
TransportBase::State make_word(int w) { return static_cast<TransportBase::State>(w); }
int phase(TransportBase::State s) { return word(s) & kPhaseMask; }
int calls(TransportBase::State s) { return word(s) / kOneCall; }

// Replaces the phase bits, keeping the count of publish() calls in flight.
void set_phase(StateRef ref, int new_phase) {
  TransportBase::State w = ref.load(std::memory_order_acquire);
  while (!ref.compare_exchange_weak(w, make_word((word(w) & ~kPhaseMask) | new_phase),
                                    std::memory_order_acq_rel, std::memory_order_acquire)) {
  }
  ref.notify_all();
}

// Blocks while `done(word)` is false. Wakes on every change of the word.
template <class Pred>
void wait_word(StateRef ref, Pred done) {
  for (TransportBase::State w = ref.load(std::memory_order_acquire); !done(w);
       w = ref.load(std::memory_order_acquire)) {
    ref.wait(w, std::memory_order_acquire);
  }
}

const char* phase_name(int p) {
  switch (p) {
    case kCreated: return "created";
    case kStarted: return "started";
    case kStopping: return "stopping";
    default: return "stopped";
  }
}

// The text after the bracketed id of one of our errors ("[notifications.transport] x" -> "x").
std::string without_id(const std::string& what) {
  if (what.rfind("[notifications.", 0) == 0) {
    const auto end = what.find("] ");
    if (end != std::string::npos) return what.substr(end + 2);
  }
  return what;
}

std::string group_problem(std::string_view group) {
  if (group.size() > kMaxSubjectBytes) {
    return "longer than " + std::to_string(kMaxSubjectBytes) + " bytes";
  }
  for (const char c : group) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) == 0 && c != '_' && c != '-' && c != '.') {
      return std::string("has '") + c + "' (allowed: letters, digits, '_', '-', '.')";
    }
  }
  return {};
}

// ---- the factory registry --------------------------------------------------------------------

struct Registry {
  detail::Mutex mutex;
  std::map<std::string, TransportFactory> factories NOTIFICATIONS_GUARDED_BY(mutex);  // by lower-case scheme
};

// Created on first use, never destroyed (factories may be looked up from static destructors).
// Every transport, the built-in memory:// and mock:// too, registers itself from its own folder.
Registry& registry() {
  static Registry* const instance = new Registry;
  return *instance;
}

bool valid_scheme(std::string_view scheme) {
  if (scheme.empty() || std::isalpha(static_cast<unsigned char>(scheme[0])) == 0) return false;
  return std::all_of(scheme.begin(), scheme.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
  });
}

// The length of a "<scheme>://" at the start of `text` (after spaces), or 0.
std::size_t scheme_prefix(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && text[i] == ' ') ++i;
  const std::size_t start = i;
  while (i < text.size() && (std::isalnum(static_cast<unsigned char>(text[i])) != 0 ||
                             text[i] == '+' || text[i] == '-' || text[i] == '.')) {
    ++i;
  }
  if (i == start || text.substr(i, 3) != "://") return 0;
  return i + 3;
}

bool secret_query_key(std::string_view key) {
  const std::string k = detail::ascii_lower(key);
  for (const char* word : {"pass", "pwd", "token", "secret", "key", "jwt", "cred", "auth"}) {
    if (k.find(word) != std::string::npos) return true;
  }
  return false;
}

std::string redact_one(std::string_view url);

// "?a=1&token=x#f" -> "?a=1&token=***#f"; a value that holds credentials itself
// ("servers=nats://u:pw@h") keeps only what follows them: "servers=nats://***@h".
std::string redact_query(std::string_view query) {
  std::string out;
  std::size_t fragment = query.find('#');
  std::string_view params = query.substr(0, fragment);
  std::size_t pos = 0;
  while (pos < params.size()) {
    std::size_t end = params.find('&', pos);
    if (end == std::string_view::npos) end = params.size();
    std::string_view param = params.substr(pos, end - pos);
    const std::size_t eq = param.find('=');
    if (eq != std::string_view::npos && secret_query_key(param.substr(0, eq))) {
      out.append(param.substr(0, eq + 1)).append("***");
    } else if (eq != std::string_view::npos && param.find('@', eq) != std::string_view::npos) {
      const std::string_view value = param.substr(eq + 1);
      out.append(param.substr(0, eq + 1));
      if (scheme_prefix(value) != 0) {
        out.append(redact_one(value));
      } else {
        out.append("***").append(value.substr(value.rfind('@')));
      }
    } else {
      out.append(param);
    }
    if (end < params.size()) out.push_back('&');
    pos = end + 1;
  }
  if (fragment != std::string_view::npos) out.append(query.substr(fragment));
  return out;
}

// One URL: "scheme://user:pass@host/path?token=x" -> "scheme://***@host/path?token=***".
// The user-info ends at the LAST '@' before the query, so an unencoded '@', '/' or ',' in a
// password cannot leak the rest of it.
std::string redact_one(std::string_view url) {
  const std::size_t prefix = scheme_prefix(url);
  std::size_t query = url.find_first_of("?#", prefix);
  if (query == std::string_view::npos) query = url.size();
  std::string out(url.substr(0, prefix));
  const std::string_view rest = url.substr(prefix, query - prefix);
  const std::size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    out.append("***").append(rest.substr(at));
  } else {
    out.append(rest);
  }
  if (query < url.size()) out.append(redact_query(url.substr(query)));
  return out;
}

std::string shipped_scheme_hint(std::string_view scheme) {
  const kit::ShippedScheme* shipped = kit::shipped_scheme(scheme);
  if (shipped == nullptr) return {};
  std::string hint = ": this program does not link its transport, provided by ";
  hint += shipped->component;
  if (!shipped->how_to_link.empty()) {
    hint += ": ";
    hint += shipped->how_to_link;
  }
  return hint;
}

std::string known_schemes(const Registry& r) NOTIFICATIONS_REQUIRES(r.mutex) {
  std::string out;
  for (const auto& [scheme, factory] : r.factories) {
    if (!out.empty()) out += ", ";
    out += scheme;
  }
  return out;
}

}  // namespace

// ---- TransportBase -----------------------------------------------------------------------------

void TransportBase::start() {
  std::lock_guard lock(lifecycle_);
  StateRef ref(state_);
  const int p = phase(ref.load(std::memory_order_acquire));
  if (p == kStarted) return;
  if (p != kCreated) throw TransportError(kind() + ": start() after stop(); create a new transport");
  do_start();  // throws: stays created
  generation_ = detail::fork_generation();
  set_phase(ref, kStarted);
}

bool TransportBase::in_forked_child() const {
  // const member: atomic_ref needs a non-const object; the load does not modify it.
  const int p = phase(StateRef(const_cast<State&>(state_)).load(std::memory_order_acquire));
  return p != kCreated && generation_ != detail::fork_generation();
}

void TransportBase::after_fork(bool in_child) {
  if (in_child) generation_ = detail::fork_generation();  // the threads are parked: no reader
  do_after_fork(in_child);
}

PublishResult TransportBase::publish(std::span<const Message> batch) {
  if (in_forked_child()) {
    return PublishResult{0, false, kind() + ": used in a forked child without notifications::after_fork()"};
  }
  StateRef ref(state_);
  // Register this call, but only while started (one CAS checks and counts).
  State w = ref.load(std::memory_order_acquire);
  do {
    const int p = phase(w);
    if (p == kCreated) return PublishResult{0, false, "transport not started"};
    if (p != kStarted) return PublishResult{0, false, "transport stopped"};
  } while (!ref.compare_exchange_weak(w, make_word(word(w) + kOneCall), std::memory_order_acq_rel,
                                      std::memory_order_acquire));

  PublishResult result;
  if (!batch.empty()) {
    try {
      result = do_publish(batch);
    } catch (const std::exception& e) {  // a hook broke its contract; publish() still never throws
      result = PublishResult{0, true, std::string("publish failed: ") + e.what()};
    } catch (...) {
      result = PublishResult{0, true, "publish failed: unknown exception"};
    }
  }

  w = ref.load(std::memory_order_acquire);
  while (!ref.compare_exchange_weak(w, make_word(word(w) - kOneCall), std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
  }
  if (phase(w) != kStarted) ref.notify_all();  // stop() may be waiting for this call
  return result;
}

std::uint64_t TransportBase::subscribe(const std::string& pattern, const DeliveryOptions& options,
                                       DeliveryHandler handler) {
  const std::string& group = options.group;
  if (const std::string problem = subject_pattern_problem(pattern); !problem.empty()) {
    throw TransportError("subscribe pattern \"" + pattern + "\": " + problem);
  }
  if (const std::string problem = group_problem(group); !problem.empty()) {
    throw TransportError("subscribe group \"" + group + "\": " + problem);
  }
  if (!handler) throw TransportError("subscribe \"" + pattern + "\": empty handler");
  if (in_forked_child()) {
    throw TransportError("subscribe \"" + pattern + "\": " + kind() +
                         " transport used in a forked child without notifications::after_fork()");
  }

  std::lock_guard lock(lifecycle_);
  const int p = phase(StateRef(state_).load(std::memory_order_acquire));
  if (p == kCreated) {
    throw TransportError("subscribe \"" + pattern + "\": transport not started (call start() first)");
  }
  if (p != kStarted) throw TransportError("subscribe \"" + pattern + "\": transport stopped");
  const std::uint64_t id = next_subscription_;
  do_subscribe(id, pattern, options, std::move(handler));
  ++next_subscription_;  // only after success, so ids stay dense
  return id;
}

void TransportBase::unsubscribe(std::uint64_t id) {
  if (in_forked_child()) return;
  std::lock_guard lock(lifecycle_);
  if (phase(StateRef(state_).load(std::memory_order_acquire)) != kStarted) return;
  do_unsubscribe(id);
}

bool TransportBase::flush(Deadline deadline) {
  if (in_forked_child()) return false;
  if (phase(StateRef(state_).load(std::memory_order_acquire)) != kStarted) return true;
  return do_flush(deadline);
}

void TransportBase::stop(Deadline deadline) {
  StateRef ref(state_);
  if (in_forked_child()) {
    // No hook, no lock, no wait: a publish() in flight at fork() never returns in this process.
    ref.store(make_word(kStopped), std::memory_order_release);
    return;
  }
  {
    std::unique_lock lock(lifecycle_);
    const int p = phase(ref.load(std::memory_order_acquire));
    if (p == kCreated) {
      set_phase(ref, kStopped);
      return;
    }
    if (p == kStarted) {
      set_phase(ref, kStopping);  // from here on publish() refuses and subscribe() throws
    } else {
      lock.unlock();
      wait_word(ref, [](State w) { return phase(w) == kStopped; });
      return;
    }
  }
  // Without the lifecycle mutex: a handler that calls unsubscribe() must not deadlock with us.
  wait_word(ref, [](State w) { return calls(w) == 0; });
  try {
    do_stop(deadline);
  } catch (...) {
    set_phase(ref, kStopped);
    throw;
  }
  set_phase(ref, kStopped);
}

nlohmann::json TransportBase::health() const {
  if (in_forked_child()) {
    return {{"kind", kind()},
            {"state", "forked_child"},
            {"detail", "forked without notifications::after_fork(): this process does not use the transport"}};
  }
  nlohmann::json out;
  try {
    out = do_health();
  } catch (const std::exception& e) {
    out = {{"error", e.what()}};
  }
  if (!out.is_object()) out = {{"details", std::move(out)}};
  out["kind"] = kind();
  // const member: atomic_ref needs a non-const object; the load does not modify it.
  out["state"] = phase_name(phase(StateRef(const_cast<State&>(state_)).load(std::memory_order_acquire)));
  return out;
}

TransportBase::State TransportBase::state() const {
  const int p = phase(StateRef(const_cast<State&>(state_)).load(std::memory_order_acquire));
  if (p == kCreated) return State::created;
  if (p == kStarted) return State::started;
  return State::stopped;
}

// ---- factories ---------------------------------------------------------------------------------

void register_transport(const std::string& scheme, TransportFactory factory) {
  if (!valid_scheme(scheme)) {
    throw TransportError("register_transport: scheme \"" + scheme +
                         "\" is not a URL scheme (a letter, then letters, digits, '+', '-', '.')");
  }
  if (!factory) throw TransportError("register_transport: scheme \"" + scheme + "\": empty factory");
  Registry& r = registry();
  detail::MutexLock lock(r.mutex);
  r.factories[detail::ascii_lower(scheme)] = std::move(factory);
}

std::unique_ptr<Transport> make_transport(const TransportConfig& config) {
  const std::string shown = redact_url(config.url);
  const std::size_t sep = config.url.find("://");
  Registry& r = registry();
  TransportFactory factory;
  {
    detail::MutexLock lock(r.mutex);
    if (sep == std::string::npos || sep == 0) {
      throw TransportError("url \"" + shown + "\": no scheme (expected <scheme>://...; known schemes: " +
                           known_schemes(r) + ")");
    }
    const std::string scheme = detail::ascii_lower(std::string_view(config.url).substr(0, sep));
    const auto it = r.factories.find(scheme);
    if (it == r.factories.end()) {
      throw TransportError("url \"" + shown + "\": unknown scheme \"" + scheme + "\"" + shipped_scheme_hint(scheme) +
                           " (known schemes: " + known_schemes(r) + ")");
    }
    factory = it->second;  // called without the registry lock: it may use the registry itself
  }
  std::unique_ptr<Transport> transport;
  try {
    transport = factory(config);
  } catch (const TransportError& e) {
    const std::string what = e.what();
    if (what.find(shown) != std::string::npos) throw;
    throw TransportError("url \"" + shown + "\": " + without_id(what));
  } catch (const std::exception& e) {
    throw TransportError("url \"" + shown + "\": " + without_id(e.what()));
  }
  if (!transport) throw TransportError("url \"" + shown + "\": the factory returned no transport");
  return transport;
}

std::string redact_url(std::string_view url) {
  // A list "a://x,b://y": a new URL starts after a ',' followed by "<scheme>://"; any other ','
  // stays inside the current URL (it may be part of a password or of a host list).
  std::string out;
  std::size_t start = 0;
  for (std::size_t i = 0; i < url.size(); ++i) {
    if (url[i] == ',' && scheme_prefix(url.substr(i + 1)) != 0) {
      out += redact_one(url.substr(start, i - start));
      out += ',';
      start = i + 1;
    }
  }
  out += redact_one(url.substr(start));
  return out;
}

std::vector<std::pair<std::string, std::string>> url_query(std::string_view url) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::size_t q = url.find('?');
  if (q == std::string_view::npos) return out;
  std::string_view query = url.substr(q + 1);
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (param.empty()) continue;
    const std::size_t eq = param.find('=');
    out.emplace_back(std::string(param.substr(0, eq)),
                     std::string(eq == std::string_view::npos ? std::string_view{} : param.substr(eq + 1)));
  }
  return out;
}

}  // namespace notifications
