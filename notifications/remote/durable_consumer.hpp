// Private: one durable handler of a Bridge (Bridge::subscribe_durable, include/notifications/
// durable.hpp): its transport subscription, its queue, its dispatcher thread and its runner thread.
//
//   transport thread: offer() only enqueues (or naks when full)
//   dispatcher thread: decodes, claims in the inbox, hands the call to the runner, waits for it
//     up to the handler deadline, settles (ack, nak with backoff, term + dead letter), keeps local
//     retries for transports without acknowledgements, renews the owner's claims
//   runner thread: runs the handler and does the store's bookkeeping of that call (complete, fail,
//     the dead letter of a replay), so that a call left behind at its deadline finishes its own
//     claim when it returns; a new runner takes the next call (at most max_stuck_handlers behind)
//
// Promises (tests/remote/test_durable.cpp):
//   D1. A delivery is settled only after the handler call for it ended (or it was skipped as done,
//       dead or malformed); a call past its deadline holds the event's claim until it returns, and
//       no call for the same event id starts in this process meanwhile.
//   D2. With the inbox, a handler call starts only for an event claimed as pending by this owner:
//       never for one done or dead (except a replay), never beside another owner's live claim.
//   D3. A failure is retried after Backoff::jittered(failures) (a nak on transports with
//       acknowledgements, a local timer otherwise) until max_attempts; then the event is a dead
//       letter and the delivery is termed. Malformed input is a dead letter at once.
//   D4. Nothing is dropped silently: a delivery refused (full queue, shutdown) is naked where the
//       transport can redeliver, and otherwise counted and logged.
//
// Thread-safety: start(), stop(), replay() and health() may be called from any thread; the
// dispatcher's members run on its thread only. In a child forked after it was made, it handles
// nothing (its threads stayed in the parent) and takes no lock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "notifications/durable.hpp"
#include "notifications/transport.hpp"
#include "remote/observer_slot.hpp"

namespace notifications::bridge_internal {

class DurableConsumer : public std::enable_shared_from_this<DurableConsumer> {
 public:
  using Clock = std::chrono::steady_clock;
  // Empty when an envelope's name fits the subject it arrived on; otherwise why not.
  using NameCheck = std::function<std::string(std::string_view name, std::string_view subject)>;

  DurableConsumer(std::string name, std::string pattern, std::string subject_pattern, DurableHandler handler,
                  DurableOptions options, std::shared_ptr<DurableStore> store, std::shared_ptr<Transport> transport,
                  NameCheck name_check);
  ~DurableConsumer();
  DurableConsumer(const DurableConsumer&) = delete;
  DurableConsumer& operator=(const DurableConsumer&) = delete;

  // Subscribes (the transport is started) and starts the threads. Throws TransportError.
  void start();
  struct StopReport {
    std::uint64_t returned = 0;    // naked back to the transport
    std::uint64_t unfinished = 0;  // a call left running at the deadline, local retries dropped
  };
  // Stops taking deliveries, lets the running call finish until `deadline`, naks (or counts) what
  // waits, and joins its threads (a call still running is left to its runner). Idempotent.
  StopReport stop(Clock::time_point deadline);
  // Runs the handler again for dead letter `id` (of this handler); true once it succeeded and the
  // letter is gone. False when it failed again (the letter updated), timed out, or was not run.
  // Throws DurableError when there is no such letter or it belongs to another handler.
  bool replay(std::uint64_t id, std::chrono::milliseconds timeout);

  const std::string& name() const noexcept { return name_; }
  const std::shared_ptr<DurableStore>& store() const noexcept { return store_; }
  nlohmann::json health() const;
  // Before start(): the runner tells `observer` (null: none) of each handler call.
  void set_observer(std::shared_ptr<ObserverSlot> observer) noexcept { observer_ = std::move(observer); }

 private:
  struct Work;
  struct Call;
  struct Runner;
  struct ReplayWaiter;

  void offer(Delivery&& delivery);
  void finish_stop(Clock::time_point deadline);
  void run_dispatcher();
  // Decodes the deliveries of `batch` and claims their events in one write (claim_many); each
  // keeps its claim for handle().
  void preclaim(std::deque<Work>& batch);
  void release_claims(const std::vector<std::string>& event_ids);
  void handle(Work& work);
  enum class CallOutcome { finished, timed_out, stopped };
  // Runs `call` on the runner and waits for it until its deadline (timed_out) or shutdown's
  // (stopped); then the call is left behind with its runner, which finishes it.
  CallOutcome run_call(const std::shared_ptr<Call>& call, const Work& work);
  void run_runner(std::shared_ptr<Runner> runner);
  // Runner thread: the handler and the inbox's done mark; then the store's record of a failure
  // or of a replay.
  void run_handler(Call& call);
  void record(Call& call);
  void finish_late(Call& call);
  // Tries again later: a nak with `delay`, or a local retry without acknowledgements.
  void postpone(Work& work, std::chrono::milliseconds delay);
  void bury(Work& work, const std::string& event_id, const std::string& reason, const std::string& error,
            std::uint32_t attempts);
  void finish_replay(Work& work, bool ok);
  void new_runner();
  void housekeeping(Clock::time_point now);
  std::chrono::milliseconds hold_delay() const;
  bool stopping() const;

  const std::string name_;
  const std::string pattern_;
  const std::string subject_pattern_;
  const DurableHandler handler_;
  std::shared_ptr<ObserverSlot> observer_;  // set before start(), read by the runner
  const DurableOptions options_;
  const std::shared_ptr<DurableStore> store_;
  const std::shared_ptr<Transport> transport_;
  const bool acknowledgements_;
  const NameCheck name_check_;
  const std::string owner_;
  // The fork generation (detail::fork_generation) this object was made in. In a forked child its
  // threads do not exist and its locks may be held by threads that are gone: every entry point
  // checks this first and touches no lock there (deliveries are naked, stop() does nothing).
  const std::uint64_t generation_;
  bool in_forked_child() const noexcept;

  mutable std::mutex mutex_;
  std::condition_variable wake_;  // work arrived, stop, a runner returned
  std::deque<Work> queue_;        // guarded by mutex_
  std::multimap<Clock::time_point, Work> retries_;  // local retries, by due time; guarded by mutex_
  bool started_ = false;                            // guarded by mutex_
  bool stop_requested_ = false;                     // guarded by mutex_
  Clock::time_point stop_deadline_{};               // guarded by mutex_
  bool dispatcher_done_ = false;                    // guarded by mutex_
  std::set<std::string> running_ids_;               // event ids with a call in progress; guarded by mutex_
  std::uint64_t subscription_ = 0;
  std::thread dispatcher_;
  // The runner taking the next call: replaced by the dispatcher thread only, under mutex_ (stop()
  // reads it to wake a dispatcher waiting for a call).
  std::shared_ptr<Runner> runner_;
  std::thread runner_thread_;
  std::atomic<std::size_t> stuck_{0};
  std::atomic<bool> running_call_{false};
  Clock::time_point next_renew_{};
  Clock::time_point next_prune_{};

  struct Counters {
    std::atomic<std::uint64_t> received{0}, succeeded{0}, failed{0}, timeouts{0}, retried{0},
        duplicates_skipped{0}, held{0}, dead_lettered{0}, malformed{0}, refused_full{0}, taken_over{0},
        late_completions{0}, late_failures{0}, returned_at_shutdown{0}, lost_at_shutdown{0}, replayed{0},
        replay_failed{0}, store_errors{0}, stalled{0}, left_running_at_shutdown{0}, forked_child{0};
  } counters_;
};

}  // namespace notifications::bridge_internal
