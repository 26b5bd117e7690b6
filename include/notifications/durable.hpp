// Durable handlers: work that must happen once per event (charge the card, send the e-mail), with
// an inbox that runs a handler once per event id, retries with backoff, a handler deadline, and a
// dead-letter store a person can list, replay and purge. docs/durable.md is the guide.
//
//   transport thread (only enqueues) -> the handler's dispatcher thread (decodes, claims the
//   event in the inbox, settles) -> the handler's runner thread (runs the handler, commits the
//   inbox's "done" mark with the handler's own SQL in one transaction)
//
// Each durable handler has its own transport subscription, so a failure redelivers to that
// handler only, never to the Bridge's listeners or to other handlers. The store (inbox and dead
// letters) is a DurableStore: make_memory_durable_store() here, or make_sqlite_durable_store()
// (notifications/sqlite.hpp, component notifications::sqlite), which survives restarts and is
// shared by the processes of one machine.
//
// Thread-safety: Backoff, DurableOptions, InboxClaim, DeadLetter and DeadLetterQuery are values.
// DurableStore implementations are safe to call from any thread, concurrently. A DurableContext
// is used only by the handler call it was given to (on the runner thread), except in_progress(),
// which may be called from any thread during that call.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/errors.hpp"
#include "notifications/event.hpp"
#include "notifications/transport.hpp"

namespace notifications {

// A durable handler, its store or its options were misused: an invalid name or option (named in
// the message), SQL asked of a store without SQL, or a store that failed. Thread-safety: immutable.
class DurableError : public Error {
 public:
  explicit DurableError(const std::string& message) : Error("durable", message) {}
};

// The waits between attempts: initial, then multiplied by `multiplier` after each failure, at most
// `max`, each shortened by up to `jitter` (0 .. 1) of itself at random (never lengthened: a delay
// is a lower bound a test may rely on only as delay(n) * (1 - jitter)).
struct Backoff {
  std::chrono::milliseconds initial{1000};
  std::chrono::milliseconds max{60000};
  double multiplier = 2.0;
  double jitter = 0.2;

  // The wait after `failed_attempts` (>= 1) failed attempts, before jitter:
  // min(max, initial * multiplier^(failed_attempts - 1)).
  std::chrono::milliseconds delay(std::uint32_t failed_attempts) const;
  // delay() shortened by a random part of at most jitter * delay().
  std::chrono::milliseconds jittered(std::uint32_t failed_attempts) const;
};

class DurableStore;

// How a durable handler runs. Every field has a usable default.
struct DurableOptions {
  // Attempts at most, the first one included (>= 1). After the last one fails the event goes to
  // the dead-letter store (reason "max_attempts").
  std::uint32_t max_attempts = 5;
  Backoff backoff;
  // How long one handler call may run (0: no limit). Past it the call is recorded as a failure
  // ("timeout"); its thread cannot be stopped, so the event stays claimed until it returns (no
  // retry runs beside it), and the handler goes on with a new thread.
  std::chrono::milliseconds handler_deadline{30000};
  // Handler threads left running past their deadline, at most (>= 1). At the bound the handler
  // takes no new delivery (each one is naked, or kept for a local retry) until one returns;
  // health() says "stalled".
  std::size_t max_stuck_handlers = 4;
  // Run the handler once per event id and store (the inbox), even when the transport delivers it
  // again. False: every delivery runs the handler (retries and dead letters still apply).
  bool inbox = true;
  // A claim of another owner that was not renewed for this long is taken over (its process hung
  // or died without the store noticing). Owners renew their claims while their handlers run, and
  // a claim whose process is gone (same machine) is taken over at once. > handler_deadline.
  std::chrono::milliseconds revive_after{120000};
  // Done rows kept in the inbox at most, per handler (>= 1), and for at most this long; older
  // ones are deleted (a redelivery after that runs the handler again).
  std::size_t keep_done = 100000;
  std::chrono::hours keep_done_for{24 * 7};
  // Deliveries waiting for the handler at most (>= 1); past it they are naked back to the
  // transport (with acknowledgements) or refused and counted (without).
  std::size_t max_queued = 65536;
  // Where the inbox and dead letters live; null: the bridge's own memory store.
  std::shared_ptr<DurableStore> store;
  // Transport subscription options: the consumer group (or durable consumer) is the handler's
  // name, so all processes running handler "billing" share one position and each event goes to
  // one of them. ack_wait 0: the transport's default. start: where a new consumer starts.
  std::chrono::milliseconds ack_wait{0};
  StartPosition start = StartPosition::new_only();
};

// What claiming an event in the inbox found.
struct InboxClaim {
  enum class Outcome {
    claimed,  // now pending, owned by the caller; run the handler
    done,     // the handler already ran for this event: skip it
    held,     // another owner has it pending and renews it: try again later
    dead,     // it went to the dead-letter store: skip it (replay runs it)
  };
  Outcome outcome = Outcome::claimed;
  std::uint32_t failed_attempts = 0;  // failures recorded for this event and handler so far
  std::string last_error;             // of the last failure, if any
};

// An event a handler gave up on, with what is needed to see and replay it.
struct DeadLetter {
  std::uint64_t id = 0;         // the store's number, from 1
  std::string handler;          // the durable handler's name
  std::string event_id;         // Message::id (the envelope id); may be empty for malformed input
  std::string subject;          // where it arrived
  std::string body;             // the message body as received (the envelope, or the malformed bytes)
  std::string reason;           // "max_attempts", "malformed" or "timeout"
  std::string last_error;       // the last failure's text (exception type and message, or the decode error)
  std::uint32_t attempts = 0;   // handler calls made
  // The first failure the store recorded for this event and handler (the caller's value when it
  // recorded none), and when the letter was stored or last replayed.
  std::chrono::system_clock::time_point first_failed_at{};
  std::chrono::system_clock::time_point dead_at{};
};

// Thrown by DurableStore::take_back_dead_letter while the letter's event is being run again by a
// replay (Bridge::replay_dead_letter: its inbox row is claimed by `owner`): nothing was changed;
// take it back once that replay finished. The message names the letter, handler, event and owner.
// Thread-safety: immutable.
class DeadLetterInUse : public DurableError {
 public:
  DeadLetterInUse(const DeadLetter& letter, const std::string& owner);
};

struct DeadLetterQuery {
  std::string handler;          // empty: every handler
  std::uint64_t after_id = 0;   // only ids greater than this (paging)
  std::size_t limit = 100;     // 0: none
};

// A handler call's unit of work in the store: the SQL the handler runs through
// DurableContext::execute() and the inbox's done mark commit together, or not at all.
// Thread-safety: used by one thread at a time.
class InboxWork {
 public:
  virtual ~InboxWork() = default;  // rolls back what was not completed
  // Runs one statement with positional parameters (?1, ?2 ... from a JSON array of null, bool,
  // number or string) inside the work's transaction; returns the rows as an array of arrays.
  // Throws DurableError when the store has no SQL (memory) or the statement fails.
  virtual nlohmann::json execute(std::string_view sql, const nlohmann::json& parameters) = 0;
  // Marks the event done for the handler and commits. False (and rolled back) when the claim is
  // no longer the caller's (it was taken over): the handler's SQL is then not committed either.
  // Throws DurableError when the store fails (nothing committed).
  virtual bool complete() = 0;
};

// Where a durable handler keeps its inbox and dead letters. Implementations: memory (this file),
// SQLite (notifications/sqlite.hpp). Every member may be called from any thread, concurrently,
// and by several processes on one file for the SQLite store. `owner` identifies a claimant:
// "<pid>:<nonce>" as durable_owner() makes it.
class DurableStore {
 public:
  virtual ~DurableStore() = default;
  virtual std::string description() const = 0;  // "memory" or "sqlite <path>"

  // ---- inbox (two phases: claim, then work->complete() or fail())
  // Claims `event_id` for `handler` as pending. A pending claim of another owner is taken over
  // when that owner is gone (durable_owner_gone) or did not renew it within `revive_after`
  // (measured on the clock the store's users share: the SQLite store's is the wall clock). A
  // pending claim of the same owner is claimed again: one owner must not run one event twice at
  // once (the Bridge keeps the ids of its running calls). `replay` also claims an event that went
  // to the dead letters.
  virtual InboxClaim claim(const std::string& handler, const std::string& event_id, const std::string& owner,
                           std::chrono::milliseconds revive_after, bool replay = false) = 0;
  // claim() for each of `event_ids` (distinct) in one write: what a handler with a queue of
  // deliveries claims at once. Results in the order of the ids. The default calls claim().
  virtual std::vector<InboxClaim> claim_many(const std::string& handler, const std::vector<std::string>& event_ids,
                                             const std::string& owner, std::chrono::milliseconds revive_after) {
    std::vector<InboxClaim> claims;
    claims.reserve(event_ids.size());
    for (const std::string& event_id : event_ids) claims.push_back(claim(handler, event_id, owner, revive_after));
    return claims;
  }
  // Gives back `owner`'s pending claims of `event_ids` without recording a failure (claimed, then
  // not run: the handler was shutting down). Others' claims and other states stay as they are.
  virtual void release(const std::string& handler, const std::vector<std::string>& event_ids,
                       const std::string& owner) = 0;
  // The unit of work for a claimed event (see InboxWork).
  virtual std::unique_ptr<InboxWork> work(const std::string& handler, const std::string& event_id,
                                          const std::string& owner) = 0;
  // Records a failed attempt and releases the claim (if still the owner's). Returns the failures
  // recorded for the event now.
  virtual std::uint32_t fail(const std::string& handler, const std::string& event_id, const std::string& owner,
                             const std::string& error) = 0;
  // Extends every pending claim of `owner` (called while its handlers run).
  virtual void renew(const std::string& owner) = 0;
  // Forgets done rows of `handler` that are beyond the newest `keep`, or older than `keep_for`.
  virtual std::size_t prune_done(const std::string& handler, std::size_t keep, std::chrono::hours keep_for) = 0;

  // ---- dead letters
  // Stores it (its id is assigned and returned) and marks the event dead in the inbox, releasing
  // the owner's claim; a row that is done, or pending under another owner, stays as it is.
  virtual std::uint64_t add_dead_letter(const DeadLetter& letter, const std::string& owner) = 0;
  virtual std::vector<DeadLetter> dead_letters(const DeadLetterQuery& query = {}) const = 0;
  virtual std::optional<DeadLetter> dead_letter(std::uint64_t id) const = 0;
  // After a replay: the replay failed again: the letter's attempts + 1, last_error = `error`,
  // dead_at = now, and its inbox row dead again, releasing `owner`'s claim (one transaction) ...
  virtual void update_dead_letter(std::uint64_t id, const std::string& error, const std::string& owner) = 0;
  // ... or succeeded (the letter is gone; the caller marked the event done with work()->complete()
  // first). False when there was no such letter.
  virtual bool remove_dead_letter(std::uint64_t id) = 0;
  // Removes the letters of `handler` (empty: all); returns how many.
  virtual std::size_t purge_dead_letters(const std::string& handler = {}) = 0;
  // Takes letter `id` back so that the next delivery of its event runs the handler again, as a
  // first delivery: what a replay through the transport needs (the `notifications dlq replay`
  // command republishes the letter's message after this; docs/cli_outbox_dlq.md). In one
  // transaction it removes the letter and, when the inbox row of (handler, event id) is dead,
  // makes it pending and free (claimable by any owner) with no failures, no last error and no
  // first failure recorded, so the handler gets its max_attempts again. A row that is done stays
  // as it is (the next delivery skips it). A row pending under an owner (a
  // Bridge::replay_dead_letter running) throws DeadLetterInUse and changes nothing. A letter
  // without an event id (malformed) is only removed. Returns the letter as it was, or nullopt
  // when there is no letter `id`.
  virtual std::optional<DeadLetter> take_back_dead_letter(std::uint64_t id) = 0;

  // {"kind", "pending", "done", "dead_letters", ...}
  virtual nlohmann::json health() const = 0;
};

// A store in this process's memory: exactly once per event within the process's life, dead
// letters lost at exit. For tests and for services whose transport redelivers only while they run.
std::shared_ptr<DurableStore> make_memory_durable_store();

// A new claimant id for this process: "<pid>:<nonce>", alive until release_durable_owner().
std::string durable_owner();
void release_durable_owner(const std::string& owner);
// True when `owner`'s process is gone (a pid on this machine that no longer exists), or it is of
// this process and was released. Owners of other machines are never taken as gone.
bool durable_owner_gone(std::string_view owner);

// What a durable handler receives besides the event.
// Thread-safety: see the file comment.
class DurableContext {
 public:
  virtual ~DurableContext() = default;
  virtual const std::string& handler() const noexcept = 0;
  // 1 on the first attempt.
  virtual std::uint32_t attempt() const noexcept = 0;
  // True when this call replays a dead letter.
  virtual bool replay() const noexcept = 0;
  // SQL in the inbox's own transaction (InboxWork::execute): committed with the done mark, so a
  // side effect written here happens exactly once. Throws DurableError without an SQL store or
  // with the inbox off. The first call takes the file's write lock until the handler returns:
  // every other writer of the file (other handlers, other processes, claims) waits meanwhile, so
  // run the SQL last, after any slow work (a call stuck past its deadline after its SQL holds
  // the lock until it returns).
  virtual nlohmann::json execute(std::string_view sql, const nlohmann::json& parameters = nlohmann::json::array()) = 0;
  // Tells the transport the handler is still working (restarts its ack wait); any thread.
  virtual void in_progress() = 0;
};

// A durable handler: returns normally on success; any exception (std:: or not) is a failure.
using DurableHandler = std::function<void(const Event& event, DurableContext& context)>;

}  // namespace notifications
