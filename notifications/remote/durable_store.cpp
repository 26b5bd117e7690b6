// The parts of include/notifications/durable.hpp that every store shares (backoff, claim owners)
// and the memory store.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>

#include "notifications/durable.hpp"
#include "process/ids.hpp"

namespace notifications {

// ---- Backoff ----------------------------------------------------------------------------------

std::chrono::milliseconds Backoff::delay(std::uint32_t failed_attempts) const {
  if (failed_attempts == 0) return std::chrono::milliseconds(0);
  const double base = static_cast<double>(initial.count());
  const double grown = base * std::pow(std::max(multiplier, 1.0), static_cast<double>(failed_attempts - 1));
  const double capped = std::min(grown, static_cast<double>(max.count()));
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::max(capped, 0.0)));
}

std::chrono::milliseconds Backoff::jittered(std::uint32_t failed_attempts) const {
  const std::chrono::milliseconds full = delay(failed_attempts);
  const double part = std::clamp(jitter, 0.0, 1.0);
  if (part <= 0.0 || full.count() <= 0) return full;
  thread_local std::minstd_rand random{std::random_device{}()};
  std::uniform_real_distribution<double> cut(0.0, part);
  return std::chrono::milliseconds(
      static_cast<std::int64_t>(static_cast<double>(full.count()) * (1.0 - cut(random))));
}

// ---- owners -----------------------------------------------------------------------------------

namespace {

struct Owners {
  std::mutex mutex;
  std::set<std::string> live;
};

Owners& owners() {
  static auto* registry = new Owners;  // never destroyed: used by threads that outlive main()
  return *registry;
}

}  // namespace

DeadLetterInUse::DeadLetterInUse(const DeadLetter& letter, const std::string& owner)
    : DurableError("dead letter " + std::to_string(letter.id) + " of handler \"" + letter.handler + "\" (event " +
                   letter.event_id + ") is being run again by a replay (its inbox entry is claimed by " + owner +
                   "): nothing was changed; take it back once that replay finished") {}

std::string durable_owner() {
  std::string owner = std::to_string(::getpid()) + ":" + detail::random_uuid();
  std::lock_guard<std::mutex> lock(owners().mutex);
  owners().live.insert(owner);
  return owner;
}

void release_durable_owner(const std::string& owner) {
  std::lock_guard<std::mutex> lock(owners().mutex);
  owners().live.erase(owner);
}

bool durable_owner_gone(std::string_view owner) {
  const auto colon = owner.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;  // not ours to judge
  long pid = 0;
  const auto [end, error] = std::from_chars(owner.data(), owner.data() + colon, pid);
  if (error != std::errc() || end != owner.data() + colon || pid <= 0) return false;
  if (pid == ::getpid()) {
    std::lock_guard<std::mutex> lock(owners().mutex);
    return owners().live.count(std::string(owner)) == 0;
  }
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// ---- the memory store ---------------------------------------------------------------------------

namespace {

using SteadyClock = std::chrono::steady_clock;

class MemoryDurableStore final : public DurableStore, public std::enable_shared_from_this<MemoryDurableStore> {
 public:
  enum class State { pending, done, dead };
  struct Row {
    State state = State::pending;
    std::string owner;  // empty: pending and claimable by anyone
    std::uint32_t failed = 0;
    std::string last_error;
    SteadyClock::time_point renewed{};
    std::chrono::system_clock::time_point done_at{};
    std::chrono::system_clock::time_point first_failed{};  // epoch: no failure yet
  };
  using Key = std::pair<std::string, std::string>;  // handler, event id

  std::string description() const override { return "memory"; }

  InboxClaim claim(const std::string& handler, const std::string& event_id, const std::string& owner,
                   std::chrono::milliseconds revive_after, bool replay) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, inserted] = rows_.try_emplace(Key{handler, event_id});
    Row& row = it->second;
    InboxClaim result;
    if (!inserted) {
      result.failed_attempts = row.failed;
      result.last_error = row.last_error;
      if (row.state == State::done) {
        result.outcome = InboxClaim::Outcome::done;
        return result;
      }
      if (row.state == State::dead && !replay) {
        result.outcome = InboxClaim::Outcome::dead;
        return result;
      }
      if (row.state == State::pending && !row.owner.empty() && row.owner != owner &&
          !durable_owner_gone(row.owner) && SteadyClock::now() - row.renewed < revive_after) {
        result.outcome = InboxClaim::Outcome::held;
        return result;
      }
    }
    row.state = State::pending;
    row.owner = owner;
    row.renewed = SteadyClock::now();
    result.outcome = InboxClaim::Outcome::claimed;
    return result;
  }

  std::unique_ptr<InboxWork> work(const std::string& handler, const std::string& event_id,
                                  const std::string& owner) override;

  bool complete(const std::string& handler, const std::string& event_id, const std::string& owner) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = rows_.find(Key{handler, event_id});
    if (it == rows_.end() || it->second.state != State::pending || it->second.owner != owner) return false;
    it->second.state = State::done;
    it->second.owner.clear();
    it->second.done_at = std::chrono::system_clock::now();
    done_order_[handler].push_back(event_id);
    return true;
  }

  std::uint32_t fail(const std::string& handler, const std::string& event_id, const std::string& owner,
                     const std::string& error) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = rows_.find(Key{handler, event_id});
    if (it == rows_.end()) return 0;
    Row& row = it->second;
    if (row.state == State::pending && row.owner == owner) {
      if (row.failed == 0) row.first_failed = std::chrono::system_clock::now();
      ++row.failed;
      row.last_error = error;
      row.owner.clear();
    }
    return row.failed;
  }

  void release(const std::string& handler, const std::vector<std::string>& event_ids,
               const std::string& owner) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const std::string& event_id : event_ids) {
      auto it = rows_.find(Key{handler, event_id});
      if (it != rows_.end() && it->second.state == State::pending && it->second.owner == owner) it->second.owner.clear();
    }
  }

  void renew(const std::string& owner) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = SteadyClock::now();
    for (auto& [key, row] : rows_) {
      if (row.state == State::pending && row.owner == owner) row.renewed = now;
    }
  }

  std::size_t prune_done(const std::string& handler, std::size_t keep, std::chrono::hours keep_for) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto order = done_order_.find(handler);
    if (order == done_order_.end()) return 0;
    const auto cutoff = std::chrono::system_clock::now() - keep_for;
    std::size_t removed = 0;
    while (!order->second.empty()) {
      auto it = rows_.find(Key{handler, order->second.front()});
      const bool stale = it == rows_.end() || it->second.state != State::done;
      if (!stale && order->second.size() <= keep && it->second.done_at >= cutoff) break;
      if (!stale) {
        rows_.erase(it);
        ++removed;
      }
      order->second.pop_front();
    }
    return removed;
  }

  std::uint64_t add_dead_letter(const DeadLetter& letter, const std::string& owner) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeadLetter stored = letter;
    stored.id = ++last_letter_;
    if (auto row = rows_.find(Key{letter.handler, letter.event_id});
        row != rows_.end() && row->second.first_failed != std::chrono::system_clock::time_point{}) {
      stored.first_failed_at = row->second.first_failed;
    }
    letters_.emplace(stored.id, stored);
    if (!letter.event_id.empty()) mark_dead(letter.handler, letter.event_id, owner);
    return stored.id;
  }

  std::vector<DeadLetter> dead_letters(const DeadLetterQuery& query) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<DeadLetter> out;
    for (auto it = letters_.upper_bound(query.after_id); it != letters_.end() && out.size() < query.limit; ++it) {
      if (query.handler.empty() || it->second.handler == query.handler) out.push_back(it->second);
    }
    return out;
  }

  std::optional<DeadLetter> dead_letter(std::uint64_t id) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = letters_.find(id);
    if (it == letters_.end()) return std::nullopt;
    return it->second;
  }

  void update_dead_letter(std::uint64_t id, const std::string& error, const std::string& owner) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = letters_.find(id);
    if (it == letters_.end()) return;
    ++it->second.attempts;
    it->second.last_error = error;
    it->second.dead_at = std::chrono::system_clock::now();
    if (!it->second.event_id.empty()) mark_dead(it->second.handler, it->second.event_id, owner);
  }

  bool remove_dead_letter(std::uint64_t id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return letters_.erase(id) != 0;
  }

  std::size_t purge_dead_letters(const std::string& handler) override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t removed = 0;
    for (auto it = letters_.begin(); it != letters_.end();) {
      if (handler.empty() || it->second.handler == handler) {
        it = letters_.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
    return removed;
  }

  std::optional<DeadLetter> take_back_dead_letter(std::uint64_t id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = letters_.find(id);
    if (it == letters_.end()) return std::nullopt;
    auto row = it->second.event_id.empty() ? rows_.end() : rows_.find(Key{it->second.handler, it->second.event_id});
    if (row != rows_.end() && row->second.state == State::pending && !row->second.owner.empty()) {
      throw DeadLetterInUse(it->second, row->second.owner);
    }
    DeadLetter letter = std::move(it->second);
    letters_.erase(it);
    if (row != rows_.end() && row->second.state == State::dead) {
      row->second = Row{};  // pending, free, no failure recorded
      row->second.renewed = SteadyClock::now();
    }
    return letter;
  }

  nlohmann::json health() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::size_t pending = 0;
    std::size_t done = 0;
    for (const auto& [key, row] : rows_) {
      if (row.state == State::pending) ++pending;
      if (row.state == State::done) ++done;
    }
    return {{"kind", "memory"}, {"pending", pending}, {"done", done}, {"dead_letters", letters_.size()}};
  }

 private:
  void mark_dead(const std::string& handler, const std::string& event_id, const std::string& owner) {
    Row& row = rows_[Key{handler, event_id}];
    if (row.state == State::done) return;  // it ran: a dead letter does not undo that
    if (row.state == State::pending && !row.owner.empty() && row.owner != owner) return;  // someone else's now
    row.state = State::dead;
    row.owner.clear();
  }

  mutable std::mutex mutex_;
  std::map<Key, Row> rows_;
  std::map<std::string, std::deque<std::string>> done_order_;  // per handler, oldest first
  std::map<std::uint64_t, DeadLetter> letters_;
  std::uint64_t last_letter_ = 0;
};

class MemoryInboxWork final : public InboxWork {
 public:
  MemoryInboxWork(std::shared_ptr<MemoryDurableStore> store, std::string handler, std::string event_id,
                  std::string owner)
      : store_(std::move(store)), handler_(std::move(handler)), event_id_(std::move(event_id)), owner_(std::move(owner)) {}

  nlohmann::json execute(std::string_view, const nlohmann::json&) override {
    throw DurableError("the memory durable store has no SQL: give DurableOptions::store a store made by "
                       "make_sqlite_durable_store() (component notifications::sqlite) to run SQL in the inbox's "
                       "transaction");
  }
  bool complete() override { return store_->complete(handler_, event_id_, owner_); }

 private:
  std::shared_ptr<MemoryDurableStore> store_;
  std::string handler_;
  std::string event_id_;
  std::string owner_;
};

std::unique_ptr<InboxWork> MemoryDurableStore::work(const std::string& handler, const std::string& event_id,
                                                    const std::string& owner) {
  return std::make_unique<MemoryInboxWork>(shared_from_this(), handler, event_id, owner);
}

}  // namespace

std::shared_ptr<DurableStore> make_memory_durable_store() { return std::make_shared<MemoryDurableStore>(); }

}  // namespace notifications
