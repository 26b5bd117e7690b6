// The sqlite:// transport (include/notifications/transports/sqlite.hpp): a writer connection for
// publish(), and a poller thread with its own connection that reads for every subscription,
// claims for named consumers and writes their settlements.
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "notifications/subject.hpp"
#include "notifications/transports/sqlite.hpp"
#include "sqlite_event_log.hpp"
#include "transport/kit.hpp"

namespace notifications {

namespace {

using sqlite::ConsumerKey;
using sqlite::EventLog;
using sqlite::StoredMessage;
using SteadyClock = std::chrono::steady_clock;

constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

std::int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t micros(std::chrono::milliseconds ms) { return static_cast<std::int64_t>(ms.count()) * 1000; }

// Whether a valid subject matches a pattern's tokens ('*' one token, '>' the rest).
bool subject_matches(const std::vector<std::string>& pattern, std::string_view subject) {
  std::size_t token = 0;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = subject.find('.', start);
    const std::string_view part = subject.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (token >= pattern.size()) return false;
    const std::string& want = pattern[token];
    if (want == ">") return true;
    if (want != "*" && want != part) return false;
    ++token;
    if (dot == std::string_view::npos) return token == pattern.size();
    start = dot + 1;
  }
}

std::vector<std::string> tokens_of(const std::string& pattern) {
  std::vector<std::string> tokens;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = pattern.find('.', start);
    tokens.push_back(pattern.substr(start, dot == std::string::npos ? dot : dot - start));
    if (dot == std::string::npos) return tokens;
    start = dot + 1;
  }
}

// ---- process-wide: wake-ups between transports on one file, and the live claim owners -------

// Wakes a poller: an eventfd, written by signal(), that the poller waits on beside the file
// watch. Shared between its transport and the process registry.
struct Wake {
  Wake() : fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~Wake() {
    if (fd >= 0) ::close(fd);
  }
  Wake(const Wake&) = delete;
  Wake& operator=(const Wake&) = delete;

  void signal() const noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(fd, &one, sizeof one);  // full counter: already signalled
  }
  // True when it had been signalled; clears it.
  bool drain() const noexcept {
    std::uint64_t count = 0;
    return ::read(fd, &count, sizeof count) == static_cast<ssize_t>(sizeof count);
  }

  const int fd;
  // The transport has subscriptions: writes to the file concern it (wake_file, the watch).
  std::atomic<bool> listening{false};
};

// Writes of any process to the file's write-ahead log ("<file>-wal"), seen through inotify on its
// folder: how a poller hears of another process's commit without polling for it. Best effort:
// where inotify is not available (fd() < 0) the poller's backoff alone finds new rows.
class FileWatch {
 public:
  FileWatch() = default;
  ~FileWatch() { close(); }
  FileWatch(const FileWatch&) = delete;
  FileWatch& operator=(const FileWatch&) = delete;

  void open(const std::string& file) {
    close();
    const auto slash = file.rfind('/');
    const std::string folder = slash == std::string::npos ? "." : (slash == 0 ? "/" : file.substr(0, slash));
    wal_name_ = (slash == std::string::npos ? file : file.substr(slash + 1)) + "-wal";
    fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd_ < 0) return;
    if (::inotify_add_watch(fd_, folder.c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0) close();
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const noexcept { return fd_; }

  // Reads the pending events; true when one was about the write-ahead log (or events were lost).
  bool drain() {
    bool news = false;
    alignas(inotify_event) char buffer[4096];
    for (int round = 0; round < 64; ++round) {  // bounded: a burst of writes is read in one go
      const ssize_t n = ::read(fd_, buffer, sizeof buffer);
      if (n <= 0) break;
      for (ssize_t at = 0; at < n;) {
        const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
        if ((event->mask & IN_Q_OVERFLOW) != 0 || (event->len > 0 && wal_name_ == event->name)) news = true;
        at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
      }
    }
    return news;
  }

 private:
  int fd_ = -1;
  std::string wal_name_;
};

struct ProcessRegistry {
  std::mutex mutex;
  std::map<std::string, std::vector<std::weak_ptr<Wake>>> wakes;  // by file
  std::set<std::string> live_owners;                                // claim owners alive here
};

ProcessRegistry& registry() {
  static auto* instance = new ProcessRegistry();  // never destroyed: used by threads at exit
  return *instance;
}

void wake_file(const std::string& file) {
  std::vector<std::shared_ptr<Wake>> targets;
  {
    std::lock_guard lock(registry().mutex);
    auto it = registry().wakes.find(file);
    if (it == registry().wakes.end()) return;
    auto& list = it->second;
    for (auto w = list.begin(); w != list.end();) {
      if (auto wake = w->lock()) {
        targets.push_back(std::move(wake));
        ++w;
      } else {
        w = list.erase(w);
      }
    }
  }
  for (auto& wake : targets) {
    if (wake->listening.load(std::memory_order_relaxed)) wake->signal();
  }
}

// "pid:nonce": unique per transport start in this process, and tells other processes the pid.
std::string new_owner() {
  static std::atomic<std::uint64_t> counter{0};
  std::random_device device;
  return std::to_string(::getpid()) + ":" + std::to_string(device()) + "-" + std::to_string(counter.fetch_add(1));
}

// Whether the member that holds claims as `owner` is gone: its process exited, or it is of this
// process and no longer live.
bool owner_gone(const std::string& owner) {
  const auto colon = owner.find(':');
  if (colon == std::string::npos) return true;
  const long pid = std::strtol(owner.substr(0, colon).c_str(), nullptr, 10);
  if (pid <= 0) return true;
  if (pid == ::getpid()) {
    std::lock_guard lock(registry().mutex);
    return registry().live_owners.count(owner) == 0;
  }
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// ---- subscriptions -----------------------------------------------------------------------------

enum class Outcome { ack, nak, term, progress };

// A settlement recorded by a named subscription, written with its next transaction.
struct PendingSettlement {
  std::int64_t seq;
  std::uint32_t deliveries;
  Outcome outcome;
  std::int64_t at_us;  // nak: available from; progress: lease until
};

// A plain subscription's delivery that is not settled yet.
struct InFlight {
  std::uint32_t deliveries = 1;
  std::int64_t due_us = 0;  // redelivered from then (ack wait, or the nak's delay)
  bool naked = false;
};

struct Subscription {
  std::uint64_t id = 0;
  std::string pattern;
  std::vector<std::string> tokens;
  bool named = false;
  ConsumerKey key;  // named only
  bool ordered = false;
  StartPosition start;
  std::int64_t ack_wait_us = 0;
  std::uint32_t max_deliveries = 0;
  DeliveryHandler handler;

  std::atomic<bool> active{true};
  std::atomic<std::int64_t> position{0};  // plain: last read; named: acknowledged up to
  std::atomic<std::int64_t> read_up_to{0};

  // Poller thread only.
  bool created = false;        // the consumer exists / the start position is resolved
  bool caught_up = false;      // the last read found fewer rows than it asked for

  // The earliest redelivery due (wall us): written by the poller and, for plain subscriptions,
  // by settle() under `mutex`; read by the poller to choose its wait.
  std::atomic<std::int64_t> next_due_us{kNever};

  std::mutex mutex;
  std::map<std::int64_t, InFlight> in_flight;  // plain
  std::size_t unsettled = 0;                   // named: handed out, not settled
  std::vector<PendingSettlement> pending;      // named
  bool direct = false;                         // named: no poller; settlements are written at once
};

struct Counters {
  std::atomic<std::uint64_t> published{0}, delivered{0}, redelivered{0}, acked{0}, naked{0}, terminated{0},
      exhausted{0}, expired{0}, poll_errors{0}, polls{0}, idle_wakeups{0}, retention_deleted{0}, stale_settlements{0},
      deleted_before_redelivery{0};
};

// Everything the poller, the transport and the settle callbacks share; the callbacks keep it
// alive after the transport is gone, so that a late settlement is still written.
struct Core : std::enable_shared_from_this<Core> {
  explicit Core(SqliteTransportOptions o) : options(std::move(o)), wake(std::make_shared<Wake>()) {}
  ~Core() {
    std::lock_guard lock(registry().mutex);
    registry().live_owners.erase(owner);
  }

  const SqliteTransportOptions options;
  std::string file;  // the canonical path (wake-ups between transports of this process)
  std::string owner;
  Counters counters;
  std::shared_ptr<Wake> wake;  // replaced only in a forked child, where no other thread runs

  std::mutex writer_mutex;
  std::unique_ptr<EventLog> writer;  // publish()

  std::mutex log_mutex;               // the poller's connection
  std::unique_ptr<EventLog> log;

  std::mutex subscriptions_mutex;
  std::vector<std::shared_ptr<Subscription>> subscriptions;
  std::vector<std::shared_ptr<Subscription>> retired;  // unsubscribed; settlements still to write

  FileWatch watch;  // the poller's; opened by start and after a fork, closed before one

  std::atomic<bool> stopping{false};
  std::atomic<std::int64_t> last_sequence{0};
  std::set<std::string> failures_logged;  // poller thread only

  // ---- settlements ------------------------------------------------------------------------

  void settle(const std::shared_ptr<Subscription>& sub, std::int64_t seq, std::uint32_t deliveries, Settlement how) {
    const Outcome outcome = how.outcome == Settle::ack ? Outcome::ack : how.outcome == Settle::nak ? Outcome::nak
                                                                                                    : Outcome::term;
    const std::int64_t delay_us = micros(how.delay.count() > 0 ? how.delay : options.nak_delay);
    if (outcome == Outcome::ack) counters.acked.fetch_add(1, std::memory_order_relaxed);
    if (outcome == Outcome::nak) counters.naked.fetch_add(1, std::memory_order_relaxed);
    if (outcome == Outcome::term) counters.terminated.fetch_add(1, std::memory_order_relaxed);
    bool signal = outcome == Outcome::nak;
    if (!sub->named) {
      std::lock_guard lock(sub->mutex);
      auto it = sub->in_flight.find(seq);
      if (it == sub->in_flight.end() || it->second.deliveries != deliveries || it->second.naked) {
        counters.stale_settlements.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      signal = signal || sub->in_flight.size() >= options.max_in_flight || sub->ordered;
      if (outcome == Outcome::nak) {
        it->second.naked = true;
        it->second.due_us = wall_us() + delay_us;
        sub->next_due_us.store(std::min(sub->next_due_us.load(), it->second.due_us));
      } else {
        sub->in_flight.erase(it);
      }
    } else {
      bool direct = false;
      {
        std::lock_guard lock(sub->mutex);
        signal = signal || sub->unsettled >= options.max_in_flight || sub->ordered ||
                 sub->pending.size() + 1 >= options.batch_size;
        if (sub->unsettled > 0) --sub->unsettled;
        direct = sub->direct;
        if (!direct) sub->pending.push_back({seq, deliveries, outcome, wall_us() + delay_us});
      }
      if (direct) {
        std::vector<PendingSettlement> one{{seq, deliveries, outcome, wall_us() + delay_us}};
        write_settlements_now(*sub, one);
        return;
      }
    }
    if (signal) wake->signal();
  }

  void in_progress(const std::shared_ptr<Subscription>& sub, std::int64_t seq, std::uint32_t deliveries) {
    const std::int64_t until = wall_us() + sub->ack_wait_us;
    if (!sub->named) {
      std::lock_guard lock(sub->mutex);
      auto it = sub->in_flight.find(seq);
      if (it != sub->in_flight.end() && it->second.deliveries == deliveries && !it->second.naked) {
        it->second.due_us = until;
      }
      return;
    }
    bool direct = false;
    {
      std::lock_guard lock(sub->mutex);
      direct = sub->direct;
      if (!direct) sub->pending.push_back({seq, deliveries, Outcome::progress, until});
    }
    if (direct) {
      std::vector<PendingSettlement> one{{seq, deliveries, Outcome::progress, until}};
      write_settlements_now(*sub, one);
    } else {
      wake->signal();  // the lease must be extended before it ends
    }
  }

  // Writes settlements of a named subscription; inside a transaction on `log`.
  void apply_settlements(EventLog& log, const Subscription& sub, const std::vector<PendingSettlement>& settlements) {
    for (const PendingSettlement& s : settlements) {
      bool current = true;
      switch (s.outcome) {
        case Outcome::ack:
        case Outcome::term:
          current = log.remove_claim(sub.key, s.seq, s.deliveries, owner);
          break;
        case Outcome::nak:
          current = log.free_claim_at(sub.key, s.seq, s.deliveries, owner, s.at_us);
          break;
        case Outcome::progress:
          current = log.extend_claim(sub.key, s.seq, s.deliveries, owner, s.at_us);
          break;
      }
      if (!current) counters.stale_settlements.fetch_add(1, std::memory_order_relaxed);
    }
  }

  // A settlement after the poller stopped (or the subscription was unsubscribed): written at once.
  void write_settlements_now(const Subscription& sub, const std::vector<PendingSettlement>& settlements) {
    if (settlements.empty()) return;
    std::lock_guard lock(log_mutex);
    if (!log) return;
    try {
      sqlite::WriteTransaction transaction(log->db());
      apply_settlements(*log, sub, settlements);
      update_position(*log, const_cast<Subscription&>(sub), wall_us());
      transaction.commit();
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::warn,
                  "notifications sqlite:// \"{}\": {} settlement(s) of consumer \"{}\" not written ({}); their "
                  "messages are delivered again when their ack wait ends",
                  options.path, settlements.size(), sub.key.name, e.what());
    }
  }

  // Moves the consumer's acknowledged position below its lowest claim; inside a transaction.
  void update_position(EventLog& log, Subscription& sub, std::int64_t now_us) {
    const std::int64_t next = log.next_seq(sub.key);
    const sqlite::ClaimSummary claims = log.claims(sub.key);
    const std::int64_t acked = claims.count > 0 ? claims.lowest_seq - 1 : next;
    log.advance(sub.key, next, acked, now_us);
    sub.position.store(acked, std::memory_order_relaxed);
    sub.read_up_to.store(next, std::memory_order_relaxed);
    sub.next_due_us.store(claims.count > 0 ? claims.earliest_lease_us : kNever);
  }

  // ---- the poller ----------------------------------------------------------------------------

  struct Handout {
    std::shared_ptr<Subscription> sub;
    std::int64_t seq;
    std::uint32_t deliveries;
    Message message;
  };

  // What a delivery's settle and in_progress need: one allocation shared by both (a shared_ptr
  // fits std::function's inline storage).
  struct Token {
    std::shared_ptr<Core> core;
    std::shared_ptr<Subscription> sub;
    std::int64_t seq;
    std::uint32_t deliveries;
  };

  Delivery delivery_for(Handout& handout) {
    Delivery delivery;
    delivery.message = std::move(handout.message);
    delivery.redelivery = handout.deliveries - 1;
    auto token = std::make_shared<Token>(Token{shared_from_this(), handout.sub, handout.seq, handout.deliveries});
    delivery.settle = [token](Settlement how) { token->core->settle(token->sub, token->seq, token->deliveries, how); };
    delivery.in_progress = [token = std::move(token)] { token->core->in_progress(token->sub, token->seq, token->deliveries); };
    return delivery;
  }

  // Resolves a start position to "the last sequence before the first message to deliver".
  std::int64_t resolve_start(EventLog& log, const StartPosition& start) {
    switch (start.kind) {
      case StartPosition::Kind::new_only:
        return log.last_sequence();
      case StartPosition::Kind::all_retained:
        return 0;
      case StartPosition::Kind::from_time:
        return log.position_before_time(std::chrono::duration_cast<std::chrono::microseconds>(
                                            start.time.time_since_epoch())
                                            .count());
      case StartPosition::Kind::from_sequence:
        return start.sequence > 0 ? static_cast<std::int64_t>(start.sequence) - 1 : 0;
    }
    return 0;
  }

  // Creates a named consumer (or joins it) and frees the claims of members that exited.
  void create_consumer(EventLog& log, Subscription& sub) {
    sqlite::WriteTransaction transaction(log.db());
    const std::int64_t now = wall_us();
    log.ensure_consumer(sub.key, resolve_start(log, sub.start), now);
    for (const std::string& holder : log.claim_owners(sub.key)) {
      if (holder != owner && owner_gone(holder)) {
        log.release_owner(sub.key, holder);
        detail::log(detail::LogLevel::info,
                    "notifications sqlite:// \"{}\": consumer \"{}\" ({}): released the claims of member {}, "
                    "which exited; they are delivered again",
                    options.path, sub.key.name, sub.key.pattern, holder);
      }
    }
    update_position(log, sub, now);
    transaction.commit();
  }

  // One plain subscription: due redeliveries, then new messages up to its in-flight limit.
  bool poll_plain(EventLog& log, const std::shared_ptr<Subscription>& sub, bool file_changed,
                  std::vector<Handout>& out) {
    Subscription& s = *sub;
    const std::int64_t now = wall_us();
    bool work = false;
    std::size_t room = 0;
    std::vector<std::pair<std::int64_t, std::uint32_t>> redeliveries;  // seq, deliveries
    {
      std::lock_guard lock(s.mutex);
      if (now >= s.next_due_us.load()) {
        std::int64_t next_due = kNever;
        for (auto it = s.in_flight.begin(); it != s.in_flight.end();) {
          InFlight& f = it->second;
          if (f.due_us <= now) {
            if (!f.naked) counters.expired.fetch_add(1, std::memory_order_relaxed);
            if (s.max_deliveries > 0 && f.deliveries >= s.max_deliveries) {
              counters.exhausted.fetch_add(1, std::memory_order_relaxed);
              detail::log(detail::LogLevel::warn,
                          "notifications sqlite:// \"{}\": message {} for \"{}\" was delivered {} time(s) without "
                          "an ack (max_deliveries); it is not delivered again",
                          options.path, it->first, s.pattern, f.deliveries);
              it = s.in_flight.erase(it);
              work = true;
              continue;
            }
            if (!s.ordered || it == s.in_flight.begin()) {
              ++f.deliveries;
              f.naked = false;
              f.due_us = now + s.ack_wait_us;
              redeliveries.emplace_back(it->first, f.deliveries);
              work = true;
            }
          }
          next_due = std::min(next_due, f.due_us);
          ++it;
        }
        s.next_due_us.store(next_due);
      }
      room = s.ordered ? (s.in_flight.empty() ? 1 : 0)
                       : (s.in_flight.size() < options.max_in_flight ? options.max_in_flight - s.in_flight.size() : 0);
    }
    // Redeliveries read their row again (in flight, a plain subscription keeps only its number).
    for (const auto& [seq, deliveries] : redeliveries) {
      if (auto row = log.read_one(seq)) {
        out.push_back({sub, seq, deliveries, std::move(row->message)});
        counters.redelivered.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      counters.deleted_before_redelivery.fetch_add(1, std::memory_order_relaxed);
      detail::log(detail::LogLevel::warn,
                  "notifications sqlite:// \"{}\": message {} for \"{}\" was deleted by retention before it could be "
                  "delivered again",
                  options.path, seq, s.pattern);
      std::lock_guard lock(s.mutex);
      auto it = s.in_flight.find(seq);
      if (it != s.in_flight.end() && it->second.deliveries == deliveries) s.in_flight.erase(it);
    }
    if (room == 0 || (!file_changed && s.caught_up)) return work;
    std::vector<StoredMessage> rows;
    const std::int64_t from = s.position.load(std::memory_order_relaxed);
    log.read_after(from, std::min(options.batch_size, s.ordered ? options.batch_size : room + options.batch_size), rows);
    std::int64_t last = from;
    std::size_t handed = 0;
    bool stopped_early = false;
    for (StoredMessage& row : rows) {
      if (handed == room) {
        stopped_early = true;
        break;
      }
      last = row.seq;
      if (!subject_matches(s.tokens, row.message.subject)) continue;
      {
        std::lock_guard lock(s.mutex);
        InFlight& f = s.in_flight[row.seq];
        f.deliveries = 1;
        f.due_us = now + s.ack_wait_us;
        s.next_due_us.store(std::min(s.next_due_us.load(), f.due_us));
      }
      out.push_back({sub, row.seq, 1, std::move(row.message)});
      ++handed;
    }
    s.caught_up = !stopped_early && rows.size() < options.batch_size;
    s.position.store(last, std::memory_order_relaxed);
    s.read_up_to.store(last, std::memory_order_relaxed);
    return work || !rows.empty();
  }

  // One named subscription, in one write transaction: its settlements, due claims, new claims.
  bool poll_named(EventLog& log, const std::shared_ptr<Subscription>& sub, bool file_changed,
                  std::vector<Handout>& out) {
    Subscription& s = *sub;
    std::vector<PendingSettlement> settlements;
    std::size_t unsettled = 0;
    {
      std::lock_guard lock(s.mutex);
      settlements.swap(s.pending);
      unsettled = s.unsettled;
    }
    const std::int64_t now = wall_us();
    const bool due = now >= s.next_due_us.load();
    const std::size_t room = unsettled < options.max_in_flight ? options.max_in_flight - unsettled : 0;
    if (settlements.empty() && !due && (room == 0 || (!file_changed && s.caught_up))) return false;
    const std::size_t before = out.size();
    bool read_rows = false;
    try {
      sqlite::WriteTransaction transaction(log.db());
      apply_settlements(log, s, settlements);
      std::size_t left = room;
      if (s.ordered) {
        const sqlite::ClaimSummary claims = log.claims(s.key);
        left = claims.count == 0 ? 1 : 0;
        if (claims.count > 0 && claims.earliest_lease_us <= now && unsettled == 0) {
          std::vector<sqlite::Claim> first;
          log.due_claims(s.key, now, 1, first);
          if (!first.empty() && first.front().seq == claims.lowest_seq) redeliver(log, sub, first.front(), now, out);
        }
      } else if (left > 0 && due) {
        std::vector<sqlite::Claim> claims;
        log.due_claims(s.key, now, left, claims);
        for (const sqlite::Claim& claim : claims) {
          if (redeliver(log, sub, claim, now, out)) --left;
        }
      }
      if (left > 0 && (file_changed || !s.caught_up)) {
        std::vector<StoredMessage> rows;
        const std::int64_t from = log.next_seq(s.key);
        log.read_after(from, s.ordered ? 1 : std::min(options.batch_size, left + options.batch_size), rows);
        std::int64_t last = from;
        bool stopped_early = false;
        for (StoredMessage& row : rows) {
          if (left == 0) {
            stopped_early = true;
            break;
          }
          last = row.seq;
          if (!subject_matches(s.tokens, row.message.subject)) continue;
          log.insert_claim(s.key, row.seq, owner, now + s.ack_wait_us);
          out.push_back({sub, row.seq, 1, std::move(row.message)});
          --left;
        }
        read_rows = !rows.empty();
        s.caught_up = !stopped_early && rows.size() < (s.ordered ? 1u : options.batch_size);
        if (s.ordered && !rows.empty()) s.caught_up = false;
        log.advance(s.key, last, s.position.load(std::memory_order_relaxed), now);
      }
      update_position(log, s, now);
      transaction.commit();
    } catch (...) {
      out.resize(before);  // nothing of the rolled-back transaction is handed out
      {
        std::lock_guard lock(s.mutex);
        s.pending.insert(s.pending.begin(), settlements.begin(), settlements.end());
      }
      throw;
    }
    {
      std::lock_guard lock(s.mutex);
      s.unsettled += out.size() - before;
    }
    return !settlements.empty() || out.size() > before || read_rows;
  }

  // Takes a due claim for this member; false when it was exhausted or its message is gone.
  bool redeliver(EventLog& log, const std::shared_ptr<Subscription>& sub, const sqlite::Claim& claim, std::int64_t now,
                 std::vector<Handout>& out) {
    Subscription& s = *sub;
    if (!claim.owner.empty()) counters.expired.fetch_add(1, std::memory_order_relaxed);  // its ack wait ended
    if (s.max_deliveries > 0 && claim.deliveries >= s.max_deliveries) {
      log.drop_claim(s.key, claim.seq);
      counters.exhausted.fetch_add(1, std::memory_order_relaxed);
      detail::log(detail::LogLevel::warn,
                  "notifications sqlite:// \"{}\": message {} of consumer \"{}\" was delivered {} time(s) without "
                  "an ack (max_deliveries); it is not delivered again",
                  options.path, claim.seq, s.key.name, claim.deliveries);
      return false;
    }
    auto row = log.read_one(claim.seq);
    if (!row) {
      log.drop_claim(s.key, claim.seq);
      counters.deleted_before_redelivery.fetch_add(1, std::memory_order_relaxed);
      detail::log(detail::LogLevel::warn,
                  "notifications sqlite:// \"{}\": message {} of consumer \"{}\" was deleted by retention before it "
                  "could be delivered again",
                  options.path, claim.seq, s.key.name);
      return false;
    }
    log.take_claim(s.key, claim.seq, owner, now + s.ack_wait_us);
    out.push_back({sub, claim.seq, claim.deliveries + 1, std::move(row->message)});
    counters.redelivered.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  void log_failure_once(const std::string& what, const std::exception& e) {
    counters.poll_errors.fetch_add(1, std::memory_order_relaxed);
    if (failures_logged.insert(what).second) {
      detail::log(detail::LogLevel::error, "notifications sqlite:// \"{}\": {} failed ({}); retrying",
                  options.path, what, e.what());
    }
  }

  // One round over every subscription; true when it did something (then it runs again at once).
  bool poll_once(std::int64_t& version, std::int64_t& next_cleanup_us) {
    std::vector<std::shared_ptr<Subscription>> subs;
    std::vector<std::shared_ptr<Subscription>> leaving;
    {
      std::lock_guard lock(subscriptions_mutex);
      subs = subscriptions;
      leaving.swap(retired);
    }
    std::vector<Handout> handouts;
    bool work = false;
    {
      std::lock_guard lock(log_mutex);
      if (!log) return false;
      counters.polls.fetch_add(1, std::memory_order_relaxed);
      for (const auto& sub : leaving) retire(*log, sub);
      bool changed = true;
      try {
        const std::int64_t now_version = log->data_version();
        changed = now_version != version;
        version = now_version;
        if (changed) last_sequence.store(log->last_sequence(), std::memory_order_relaxed);
      } catch (const std::exception& e) {
        log_failure_once("reading the file's version", e);
      }
      for (const auto& sub : subs) {
        if (!sub->active.load()) continue;
        try {
          if (!sub->created) {
            if (sub->named) {
              create_consumer(*log, *sub);
            } else {
              const std::int64_t start = resolve_start(*log, sub->start);
              sub->position.store(start, std::memory_order_relaxed);
              sub->read_up_to.store(start, std::memory_order_relaxed);
            }
            sub->created = true;
            work = true;
          }
          work |= sub->named ? poll_named(*log, sub, changed, handouts) : poll_plain(*log, sub, changed, handouts);
        } catch (const std::exception& e) {
          log_failure_once("reading for \"" + sub->pattern + "\"", e);
        }
      }
      const std::int64_t now = wall_us();
      if ((options.max_age.count() > 0 || options.delete_consumed) && now >= next_cleanup_us) {
        next_cleanup_us = now + micros(options.cleanup_interval);
        try {
          counters.retention_deleted.fetch_add(
              static_cast<std::uint64_t>(
                  log->delete_old(options.max_age.count() > 0 ? now - micros(options.max_age) : 0, options.delete_consumed)),
              std::memory_order_relaxed);
        } catch (const std::exception& e) {
          log_failure_once("retention", e);
        }
      }
    }
    for (Handout& handout : handouts) {
      if (!handout.sub->active.load()) {
        // Unsubscribed meanwhile: hand nothing over; a named claim is freed for the others.
        if (!handout.sub->named) continue;
        settle(handout.sub, handout.seq, handout.deliveries, Settle::nak);
        continue;
      }
      counters.delivered.fetch_add(1, std::memory_order_relaxed);
      handout.sub->handler(delivery_for(handout));
    }
    return work || !handouts.empty();
  }

  // An unsubscribed named subscription: its settlements so far are written; later ones at once.
  void retire(EventLog& log, const std::shared_ptr<Subscription>& sub) {
    if (!sub->named) return;
    std::vector<PendingSettlement> settlements;
    {
      std::lock_guard lock(sub->mutex);
      sub->direct = true;
      settlements.swap(sub->pending);
    }
    if (settlements.empty()) return;
    try {
      sqlite::WriteTransaction transaction(log.db());
      apply_settlements(log, *sub, settlements);
      update_position(log, *sub, wall_us());
      transaction.commit();
    } catch (const std::exception& e) {
      log_failure_once("writing settlements", e);
    }
  }

  // The least time until something is due: a redelivery, or the retention run.
  std::int64_t next_due_us(std::int64_t next_cleanup_us) {
    std::int64_t due = (options.max_age.count() > 0 || options.delete_consumed) ? next_cleanup_us : kNever;
    std::lock_guard lock(subscriptions_mutex);
    for (const auto& sub : subscriptions) {
      due = std::min(due, sub->next_due_us.load());
    }
    return due;
  }

  enum class News { none, signal, file };

  // Waits up to `timeout` for a signal of this process (a publish on the file, a settlement, a
  // subscription, stop) or a write of any process to the file's log.
  News wait_for_news(SteadyClock::duration timeout) {
    const auto deadline = SteadyClock::now() + timeout;
    while (!stopping.load()) {
      const auto left = deadline - SteadyClock::now();
      if (left <= SteadyClock::duration::zero()) return News::none;
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      const timespec wait{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
      // Without subscriptions, other processes' writes concern nobody here.
      const bool watching = watch.fd() >= 0 && wake->listening.load(std::memory_order_relaxed);
      pollfd fds[2] = {{wake->fd, POLLIN, 0}, {watch.fd(), POLLIN, 0}};
      const int rc = ::ppoll(fds, watching ? 2 : 1, &wait, nullptr);
      if (rc < 0 && errno != EINTR) return News::none;
      if (rc <= 0) continue;
      const bool signalled = (fds[0].revents & POLLIN) != 0 && wake->drain();
      const bool written = watching && (fds[1].revents & POLLIN) != 0 && watch.drain();
      if (signalled) return News::signal;
      if (written) return News::file;
    }
    return News::signal;
  }

  void run_poller() {
    detail::name_this_thread("ntf-sqlite-poll");
    const auto min_wait = std::chrono::duration_cast<SteadyClock::duration>(options.min_poll_interval);
    const auto max_wait = std::chrono::duration_cast<SteadyClock::duration>(options.idle_interval);
    auto wait = min_wait;
    std::int64_t version = -1;
    std::int64_t next_cleanup_us = 0;
    constexpr int kRechecks = 3;
    constexpr auto kRecheck = std::chrono::microseconds(20);
    int rechecks = 0;
    while (!stopping.load()) {
      bool work = false;
      try {
        work = poll_once(version, next_cleanup_us);
      } catch (const std::exception& e) {
        log_failure_once("polling", e);
      }
      if (work) {
        wait = min_wait;
        rechecks = 0;
        continue;
      }
      const std::int64_t due = next_due_us(next_cleanup_us);
      auto this_wait = wait;
      if (due != kNever) {
        const std::int64_t until = std::max<std::int64_t>(0, due - wall_us());
        this_wait = std::min<SteadyClock::duration>(this_wait, std::chrono::microseconds(until + 100));
      }
      if (rechecks > 0) {
        // The log is written before the commit is visible to readers: after a write seen by the
        // watch that a poll did not find yet, look again shortly, a few times.
        --rechecks;
        this_wait = std::min<SteadyClock::duration>(this_wait, kRecheck);
      }
      const News news = wait_for_news(this_wait);
      if (news == News::file) rechecks = kRechecks;
      if (news != News::none) {
        wait = min_wait;
      } else if (this_wait > kRecheck) {
        counters.idle_wakeups.fetch_add(1, std::memory_order_relaxed);
        wait = std::min(wait * 2, max_wait);
      }
    }
  }
};

// ---- the transport ------------------------------------------------------------------------------

class SqliteTransport final : public TransportBase {
 public:
  explicit SqliteTransport(SqliteTransportOptions options) : core_(std::make_shared<Core>(std::move(options))) {}
  ~SqliteTransport() override { stop(SteadyClock::now() + std::chrono::seconds(5)); }

  std::string kind() const override { return "sqlite"; }
  TransportCapabilities capabilities() const override { return kSqliteCapabilities; }

 protected:
  void do_start() override {
    open();
    start_poller();
  }

  PublishResult do_publish(std::span<const Message> batch) override {
    PublishResult result;
    if (batch.empty()) return result;
    std::lock_guard lock(core_->writer_mutex);
    if (!core_->writer) {
      result.transient = true;
      result.error = "sqlite:// \"" + core_->options.path + "\": not open";
      return result;
    }
    try {
      core_->writer->append(batch, wall_us());
      result.published = batch.size();
    } catch (const std::exception& e) {
      result.transient = sqlite::Database::transient(core_->writer->db().last_failure());
      result.error = e.what();
      return result;
    }
    core_->counters.published.fetch_add(batch.size(), std::memory_order_relaxed);
    wake_file(core_->file);
    return result;
  }

  void do_subscribe(std::uint64_t id, const std::string& pattern, const DeliveryOptions& options,
                    DeliveryHandler handler) override {
    validate_subject_pattern(pattern, "sqlite:// subscribe pattern");
    auto sub = std::make_shared<Subscription>();
    sub->id = id;
    sub->pattern = pattern;
    sub->tokens = tokens_of(pattern);
    sub->named = !options.durable.empty() || !options.group.empty();
    if (sub->named) {
      const std::string& name = options.durable.empty() ? options.group : options.durable;
      if (name.size() > 255 || name.find_first_of("\n\r\t") != std::string::npos) {
        throw TransportError("sqlite:// subscribe: consumer name \"" + name +
                             "\" must be at most 255 bytes without control characters");
      }
      sub->key = ConsumerKey{name, pattern};
    }
    sub->ordered = options.ordered;
    sub->start = options.start;
    sub->ack_wait_us = micros(options.ack_wait.count() > 0 ? options.ack_wait : core_->options.ack_wait);
    sub->max_deliveries = options.max_deliveries > 0 ? options.max_deliveries : core_->options.max_deliveries;
    sub->handler = std::move(handler);
    // The start position is resolved (and a named consumer created) now, so that what is
    // published after subscribe() returns is delivered.
    {
      std::lock_guard lock(core_->log_mutex);
      if (core_->log) {
        if (sub->named) {
          core_->create_consumer(*core_->log, *sub);
        } else {
          const std::int64_t start = core_->resolve_start(*core_->log, sub->start);
          sub->position.store(start);
          sub->read_up_to.store(start);
        }
        sub->created = true;
      }
    }
    {
      std::lock_guard lock(core_->subscriptions_mutex);
      core_->subscriptions.push_back(std::move(sub));
      core_->wake->listening.store(true);
    }
    core_->wake->signal();
  }

  void do_unsubscribe(std::uint64_t id) override {
    {
      std::lock_guard lock(core_->subscriptions_mutex);
      auto& subs = core_->subscriptions;
      auto it = std::find_if(subs.begin(), subs.end(), [id](const auto& s) { return s->id == id; });
      if (it == subs.end()) return;
      (*it)->active.store(false);
      core_->retired.push_back(*it);
      subs.erase(it);
      core_->wake->listening.store(!subs.empty());
    }
    core_->wake->signal();
  }

  bool do_flush(Deadline) override { return true; }  // publish() returns once committed

  void do_stop(Deadline) override {
    stop_poller();
    // Named subscriptions: what was settled is written; what is settled from now on, at once.
    std::vector<std::shared_ptr<Subscription>> subs;
    {
      std::lock_guard lock(core_->subscriptions_mutex);
      subs = core_->subscriptions;
      subs.insert(subs.end(), core_->retired.begin(), core_->retired.end());
      core_->retired.clear();
    }
    {
      std::lock_guard lock(core_->log_mutex);
      if (core_->log) {
        for (const auto& sub : subs) core_->retire(*core_->log, sub);
      }
    }
    {
      std::lock_guard lock(core_->writer_mutex);
      core_->writer.reset();
    }
    if (!poller_detached_) core_->watch.close();
    unregister_wake();
  }

  nlohmann::json do_health() const override {
    const Counters& c = core_->counters;
    nlohmann::json subscriptions = nlohmann::json::array();
    {
      std::lock_guard lock(core_->subscriptions_mutex);
      for (const auto& sub : core_->subscriptions) {
        std::size_t in_flight = 0;
        {
          std::lock_guard sub_lock(sub->mutex);
          in_flight = sub->named ? sub->unsettled : sub->in_flight.size();
        }
        const std::int64_t position = sub->position.load();
        subscriptions.push_back({{"pattern", sub->pattern},
                                 {"consumer", sub->named ? sub->key.name : ""},
                                 {"position", position},
                                 {"lag", std::max<std::int64_t>(0, core_->last_sequence.load() - position)},
                                 {"in_flight", in_flight}});
      }
    }
    return {{"path", core_->options.path},
            {"published", c.published.load()},
            {"delivered", c.delivered.load()},
            {"redelivered", c.redelivered.load()},
            {"acked", c.acked.load()},
            {"naked", c.naked.load()},
            {"terminated", c.terminated.load()},
            {"exhausted", c.exhausted.load()},
            {"expired", c.expired.load()},
            {"stale_settlements", c.stale_settlements.load()},
            {"retention_deleted", c.retention_deleted.load()},
            {"deleted_before_redelivery", c.deleted_before_redelivery.load()},
            {"poll_errors", c.poll_errors.load()},
            {"polls", c.polls.load()},
            {"idle_wakeups", c.idle_wakeups.load()},
            {"last_sequence", core_->last_sequence.load()},
            {"subscriptions", std::move(subscriptions)}};
  }

  void do_prepare_fork(Deadline) override {
    stop_poller();
    std::lock_guard writer_lock(core_->writer_mutex);
    std::lock_guard log_lock(core_->log_mutex);
    core_->writer.reset();
    core_->log.reset();
    core_->watch.close();
  }

  void do_after_fork(bool in_child) override {
    if (in_child) {
      // A new member, and a wake-up of its own: the eventfd is shared with the parent.
      unregister_wake();
      const bool listening = core_->wake->listening.load();
      core_->wake = std::make_shared<Wake>();
      core_->wake->listening.store(listening);
      std::lock_guard lock(registry().mutex);
      registry().live_owners.erase(core_->owner);
      core_->owner = new_owner();
      registry().live_owners.insert(core_->owner);
      registry().wakes[core_->file].push_back(core_->wake);
    }
    core_->watch.open(core_->file);
    try {
      std::lock_guard writer_lock(core_->writer_mutex);
      std::lock_guard log_lock(core_->log_mutex);
      core_->writer = std::make_unique<EventLog>(core_->options.path, core_->options);
      core_->log = std::make_unique<EventLog>(core_->options.path, core_->options);
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::error, "notifications sqlite:// \"{}\": cannot reopen after fork: {}",
                  core_->options.path, e.what());
    }
    start_poller();
  }

 private:
  void open() {
    auto writer = std::make_unique<EventLog>(core_->options.path, core_->options);
    auto log = std::make_unique<EventLog>(core_->options.path, core_->options);
    char* resolved = ::realpath(core_->options.path.c_str(), nullptr);
    core_->file = resolved != nullptr ? resolved : core_->options.path;
    std::free(resolved);
    core_->last_sequence.store(log->last_sequence());
    {
      std::lock_guard lock(core_->writer_mutex);
      core_->writer = std::move(writer);
    }
    {
      std::lock_guard lock(core_->log_mutex);
      core_->log = std::move(log);
    }
    if (core_->wake->fd < 0) {
      throw TransportError("sqlite:// \"" + core_->options.path + "\": cannot create an eventfd (" +
                           std::strerror(errno) + "): the process is out of file descriptors");
    }
    core_->watch.open(core_->file);
    core_->owner = new_owner();
    std::lock_guard lock(registry().mutex);
    registry().live_owners.insert(core_->owner);
    registry().wakes[core_->file].push_back(core_->wake);
  }

  void unregister_wake() {
    std::lock_guard lock(registry().mutex);
    auto it = registry().wakes.find(core_->file);
    if (it == registry().wakes.end()) return;
    auto& list = it->second;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [&](const std::weak_ptr<Wake>& w) {
                                auto wake = w.lock();
                                return !wake || wake == core_->wake;
                              }),
               list.end());
    if (list.empty()) registry().wakes.erase(it);
  }

  void start_poller() {
    core_->stopping.store(false);
    poller_ = std::thread([core = core_] { core->run_poller(); });
  }

  void stop_poller() {
    core_->stopping.store(true);
    core_->wake->signal();
    if (poller_.joinable()) {
      if (poller_.get_id() == std::this_thread::get_id()) {
        poller_.detach();  // stop() from a delivery handler: the poller ends after it returns
        poller_detached_ = true;  // and it still waits on the watch once more: left open
      } else {
        poller_.join();
      }
    }
  }

  std::shared_ptr<Core> core_;
  std::thread poller_;
  bool poller_detached_ = false;
};

}  // namespace

std::unique_ptr<Transport> make_sqlite_transport(SqliteTransportOptions options) {
  if (options.path.empty()) throw TransportError("sqlite:// transport: the path of the database file is empty");
  if (options.batch_size == 0) throw TransportError("sqlite:// transport: batch_size must be at least 1");
  if (options.max_in_flight == 0) throw TransportError("sqlite:// transport: max_in_flight must be at least 1");
  if (options.idle_interval.count() <= 0) throw TransportError("sqlite:// transport: idle_interval_ms must be at least 1");
  if (options.min_poll_interval.count() <= 0 || options.min_poll_interval > options.idle_interval) {
    throw TransportError("sqlite:// transport: min_poll_interval_us must be between 1 and idle_interval_ms");
  }
  if (options.ack_wait.count() <= 0) throw TransportError("sqlite:// transport: ack_wait_ms must be at least 1");
  if (options.cleanup_interval.count() <= 0) {
    throw TransportError("sqlite:// transport: cleanup_interval_ms must be at least 1");
  }
  return std::make_unique<SqliteTransport>(std::move(options));
}

}  // namespace notifications
