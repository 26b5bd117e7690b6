// One durable handler of a Bridge: see remote/durable_consumer.hpp for the threads and promises.
#include "remote/durable_consumer.hpp"

#include <algorithm>
#include <optional>
#include <utility>

#include "notifications/envelope.hpp"
#include "local/event_access.hpp"
#include "local/event_context.hpp"
#include "process/describe.hpp"
#include "process/log.hpp"
#include "process/process.hpp"
#include "process/thread_name.hpp"

namespace notifications::bridge_internal {

namespace {

constexpr std::chrono::milliseconds kJoinGrace{100};
constexpr std::chrono::milliseconds kIdleWake{200};
constexpr std::chrono::seconds kPruneInterval{60};
// Deliveries taken from the queue at once, and claimed in the inbox in one write (claim_many).
constexpr std::size_t kClaimBatch = 64;
const std::string kTimeoutPrefix = "timeout: ";

std::string cut(std::string_view text, std::size_t limit = 300) {
  return std::string(text.substr(0, limit)) + (text.size() > limit ? "..." : "");
}

}  // namespace

// One delivery (or one replay of a dead letter) on its way through the dispatcher.
struct DurableConsumer::Work {
  Delivery delivery;
  std::uint32_t local_failures = 0;  // failures seen here, for transports without acknowledgements
  std::string last_error;            // of the last failure seen here
  std::optional<DecodeResult> decoded;  // decoded ahead, by preclaim()
  std::optional<InboxClaim> pre_claim;  // claimed ahead with others (claim_many), by preclaim()
  std::uint64_t replay_id = 0;       // non-zero: a replay of this dead letter
  std::uint32_t replay_attempts = 0;
  std::shared_ptr<ReplayWaiter> waiter;
};

struct DurableConsumer::ReplayWaiter {
  std::mutex mutex;
  std::condition_variable done;
  std::optional<bool> result;
  void finish(bool ok) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!result) result = ok;
    }
    done.notify_all();
  }
};

// One handler call, shared by the dispatcher (which may leave it behind) and the runner.
struct DurableConsumer::Call {
  std::optional<Event> event;
  std::string event_id;
  std::string subject;
  std::string body;
  std::uint32_t attempt = 1;
  bool use_inbox = true;
  std::uint64_t replay_id = 0;
  std::function<void()> in_progress;
  // Results, written by the runner before `finished` (under Runner::mutex).
  bool finished = false;
  bool abandoned = false;  // the dispatcher stopped waiting (deadline or shutdown)
  bool timed_out = false;  // ... because the handler's deadline passed
  bool ok = false;
  bool completed = false;  // the inbox's done mark committed
  std::uint32_t failures = 0;  // recorded in the store after a failure (inbox on)
  std::string error;
};

struct DurableConsumer::Runner {
  std::mutex mutex;
  std::condition_variable changed;
  std::shared_ptr<Call> call;  // the call to run, until it finished
  bool quit = false;
};

namespace {

// The context a handler call gets; lives on the runner thread for that call.
class CallContext final : public DurableContext {
 public:
  CallContext(const std::string& handler, std::uint32_t attempt, bool replay, InboxWork* work,
              const std::function<void()>& in_progress)
      : handler_(handler), attempt_(attempt), replay_(replay), work_(work), in_progress_(in_progress) {}
  const std::string& handler() const noexcept override { return handler_; }
  std::uint32_t attempt() const noexcept override { return attempt_; }
  bool replay() const noexcept override { return replay_; }
  nlohmann::json execute(std::string_view sql, const nlohmann::json& parameters) override {
    if (work_ == nullptr) {
      throw DurableError("durable handler \"" + handler_ +
                         "\": execute() needs the inbox (DurableOptions::inbox is false)");
    }
    return work_->execute(sql, parameters);
  }
  void in_progress() override {
    if (in_progress_) in_progress_();
  }

 private:
  const std::string& handler_;
  std::uint32_t attempt_;
  bool replay_;
  InboxWork* work_;
  const std::function<void()>& in_progress_;
};

}  // namespace

DurableConsumer::DurableConsumer(std::string name, std::string pattern, std::string subject_pattern,
                                 DurableHandler handler, DurableOptions options, std::shared_ptr<DurableStore> store,
                                 std::shared_ptr<Transport> transport, NameCheck name_check)
    : name_(std::move(name)),
      pattern_(std::move(pattern)),
      subject_pattern_(std::move(subject_pattern)),
      handler_(std::move(handler)),
      options_(std::move(options)),
      store_(std::move(store)),
      transport_(std::move(transport)),
      acknowledgements_(transport_->capabilities().acknowledgements),
      name_check_(std::move(name_check)),
      owner_(durable_owner()),
      generation_(detail::fork_generation()) {}

bool DurableConsumer::in_forked_child() const noexcept { return detail::fork_generation() != generation_; }

namespace {
// The consumer whose handler runs on this thread (replay() from inside a handler would wait for
// itself).
thread_local const DurableConsumer* running_handler_of = nullptr;
}  // namespace

DurableConsumer::~DurableConsumer() {
  // Only once no runner is left (each holds this object): no claim of this owner is running.
  release_durable_owner(owner_);
}

void DurableConsumer::start() {
  if (in_forked_child()) {
    throw DurableError("durable handler \"" + name_ + "\" was registered before this process was forked: register "
                       "it again in the child (on a bridge made there)");
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (started_ || stop_requested_) return;
    started_ = true;
  }
  const TransportCapabilities caps = transport_->capabilities();
  DeliveryOptions delivery;
  // One logical consumer per handler name, whichever processes run it.
  if (caps.durable_consumers) {
    delivery.durable = name_;
  } else if (caps.consumer_groups) {
    delivery.group = name_;
  }
  delivery.headers = false;
  delivery.start = options_.start;
  if (caps.acknowledgements) delivery.ack_wait = options_.ack_wait;
  std::weak_ptr<DurableConsumer> weak = shared_from_this();
  new_runner();
  dispatcher_ = std::thread([self = shared_from_this()] { self->run_dispatcher(); });
  try {
    subscription_ = transport_->subscribe(subject_pattern_, delivery, [weak](Delivery&& d) {
      if (auto self = weak.lock()) {
        self->offer(std::move(d));
      } else if (d.settle) {
        d.settle(Settle::nak);
      }
    });
  } catch (...) {
    stop(Clock::now());
    throw;
  }
  detail::log(detail::LogLevel::debug, "notifications durable handler \"{}\": subscribed to \"{}\" ({}, store {})",
              name_, subject_pattern_, options_.inbox ? "inbox" : "no inbox", store_->description());
}

bool DurableConsumer::stopping() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stop_requested_;
}

std::chrono::milliseconds DurableConsumer::hold_delay() const {
  return std::clamp(options_.backoff.initial, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
}

void DurableConsumer::offer(Delivery&& delivery) {
  counters_.received.fetch_add(1, std::memory_order_relaxed);
  if (in_forked_child()) {  // no thread here to handle it; the parent's locks are not ours
    counters_.forked_child.fetch_add(1, std::memory_order_relaxed);
    if (delivery.settle) delivery.settle(Settle::nak);
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  if (!stop_requested_ && queue_.size() < options_.max_queued) {
    Work work;
    work.delivery = std::move(delivery);
    queue_.push_back(std::move(work));
    lock.unlock();
    wake_.notify_all();
    return;
  }
  const bool stopping_now = stop_requested_;
  lock.unlock();
  if (delivery.settle) {
    delivery.settle(Settlement::nak_after(hold_delay()));
    (stopping_now ? counters_.returned_at_shutdown : counters_.refused_full).fetch_add(1, std::memory_order_relaxed);
    return;
  }
  (stopping_now ? counters_.lost_at_shutdown : counters_.refused_full).fetch_add(1, std::memory_order_relaxed);
  detail::log(detail::LogLevel::warn,
              "notifications durable handler \"{}\": refused a delivery on \"{}\" ({}); the transport cannot "
              "redeliver it",
              name_, cut(delivery.message.subject, 120),
              stopping_now ? "shutting down" : "max_queued reached");
}

void DurableConsumer::new_runner() {
  auto runner = std::make_shared<Runner>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    runner_ = runner;
  }
  runner_thread_ = std::thread([self = shared_from_this(), runner] { self->run_runner(runner); });
}

void DurableConsumer::run_runner(std::shared_ptr<Runner> runner) {
  detail::name_this_thread("ntf-durable-run");
  while (true) {
    std::shared_ptr<Call> call;
    {
      std::unique_lock<std::mutex> lock(runner->mutex);
      runner->changed.wait(lock, [&] { return runner->quit || (runner->call && !runner->call->finished); });
      if (runner->quit && !runner->call) return;
      call = runner->call;
    }
    run_handler(*call);
    bool timed_out = false;
    {
      std::lock_guard<std::mutex> lock(runner->mutex);
      timed_out = call->timed_out;
    }
    if (timed_out && !call->ok) {
      call->error = kTimeoutPrefix + "ran past its deadline of " + std::to_string(options_.handler_deadline.count()) +
                    " ms, then failed: " + call->error;
    }
    record(*call);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      running_ids_.erase(call->event_id);
    }
    bool abandoned = false;
    {
      std::lock_guard<std::mutex> lock(runner->mutex);
      call->finished = true;
      abandoned = call->abandoned;
      runner->call.reset();
    }
    runner->changed.notify_all();
    if (abandoned) {
      finish_late(*call);
      stuck_.fetch_sub(1);
      wake_.notify_all();
      return;  // the dispatcher made another runner
    }
  }
}

void DurableConsumer::run_handler(Call& call) {
  std::unique_ptr<InboxWork> work;  // rolls back, when destroyed, what did not complete
  Clock::time_point started{};
  Clock::duration took{};  // the handler's own time, without the inbox's bookkeeping
  try {
    if (call.use_inbox) work = store_->work(name_, call.event_id, owner_);
    CallContext context(name_, call.attempt, call.replay_id != 0, work.get(), call.in_progress);
    running_handler_of = this;
    struct Reset {
      ~Reset() { running_handler_of = nullptr; }
    } reset;
    if (observer_) started = Clock::now();
    try {
      // Events the handler instruments carry the received event's context and tags.
      const detail::AdoptedEventContext adopted(detail::EventAccess::captured_context(*call.event));
      handler_(*call.event, context);
    } catch (...) {
      if (observer_) took = Clock::now() - started;
      throw;
    }
    if (observer_) took = Clock::now() - started;
    call.ok = true;
  } catch (...) {
    call.error = detail::describe_exception(std::current_exception());
  }
  if (call.ok && work) {
    try {
      call.completed = work->complete();
    } catch (...) {
      call.ok = false;
      counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
      call.error = "inbox: " + detail::describe_exception(std::current_exception());
    }
  }
  // Observed once the outcome is final (a failed commit is a failure) and the inbox's transaction
  // is over: an observer never runs while this call holds the store's write lock.
  work.reset();
  if (observer_ && started != Clock::time_point{}) observer_->handled(name_, took, call.ok);
}

// The store's bookkeeping of a call is the runner's, so a call left behind does its own.
void DurableConsumer::record(Call& call) {
  try {
    if (call.replay_id != 0) {
      if (call.ok) {
        store_->remove_dead_letter(call.replay_id);
      } else {
        store_->update_dead_letter(call.replay_id, call.error, owner_);
      }
    } else if (!call.ok && call.use_inbox) {
      call.failures = store_->fail(name_, call.event_id, owner_, call.error);
    }
  } catch (...) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    detail::log(detail::LogLevel::error, "notifications durable handler \"{}\": store {} failed: {}", name_,
                store_->description(), detail::describe_exception(std::current_exception()));
  }
}

void DurableConsumer::finish_late(Call& call) {
  (call.ok ? counters_.late_completions : counters_.late_failures).fetch_add(1, std::memory_order_relaxed);
  detail::log(call.ok ? detail::LogLevel::info : detail::LogLevel::warn,
              "notifications durable handler \"{}\": a call left behind at its deadline returned {} (event {})",
              name_, call.ok ? "successfully" : "with an error: " + cut(call.error), call.event_id);
}

DurableConsumer::CallOutcome DurableConsumer::run_call(const std::shared_ptr<Call>& call, const Work& work) {
  {
    std::lock_guard<std::mutex> lock(runner_->mutex);
    runner_->call = call;
  }
  runner_->changed.notify_all();
  running_call_.store(true);
  const auto started = Clock::now();
  const auto call_deadline = options_.handler_deadline.count() > 0 ? started + options_.handler_deadline
                                                                    : Clock::time_point::max();
  // in_progress() well within the ack wait (the transport's default when not given: often 30 s,
  // but a URL may set it lower).
  const auto progress_every = options_.ack_wait.count() > 0
                                  ? std::max<std::chrono::milliseconds>(options_.ack_wait / 3, std::chrono::milliseconds(1))
                                  : std::chrono::milliseconds(1000);
  auto next_progress = started + progress_every;
  bool left_behind = false;
  CallOutcome outcome = CallOutcome::finished;
  {
    std::unique_lock<std::mutex> lock(runner_->mutex);
    while (!call->finished) {
      Clock::time_point stop_at = Clock::time_point::max();
      {
        std::lock_guard<std::mutex> own(mutex_);
        if (stop_requested_) stop_at = stop_deadline_;
      }
      const auto now = Clock::now();
      if (now >= call_deadline || now >= stop_at) {
        call->abandoned = true;
        left_behind = true;
        outcome = now >= call_deadline ? CallOutcome::timed_out : CallOutcome::stopped;
        call->timed_out = outcome == CallOutcome::timed_out;
        break;
      }
      if (now >= next_progress) {
        lock.unlock();
        if (work.delivery.in_progress) work.delivery.in_progress();
        housekeeping(now);
        lock.lock();
        next_progress = now + progress_every;
        continue;
      }
      const auto until = std::min({call_deadline, stop_at, next_progress, now + kIdleWake});
      runner_->changed.wait_until(lock, until);
    }
  }
  running_call_.store(false);
  if (left_behind) {
    stuck_.fetch_add(1);
    runner_thread_.detach();
    new_runner();
  }
  return outcome;
}

void DurableConsumer::postpone(Work& work, std::chrono::milliseconds delay) {
  if (work.delivery.settle) {
    work.delivery.settle(Settlement::nak_after(delay));
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  retries_.emplace(Clock::now() + delay, std::move(work));
}

void DurableConsumer::bury(Work& work, const std::string& event_id, const std::string& reason,
                           const std::string& error, std::uint32_t attempts) {
  DeadLetter letter;
  letter.handler = name_;
  letter.event_id = event_id;
  letter.subject = work.delivery.message.subject;
  letter.body = work.delivery.message.body;
  letter.reason = reason;
  letter.last_error = error;
  letter.attempts = attempts;
  letter.dead_at = std::chrono::system_clock::now();
  letter.first_failed_at = letter.dead_at;
  try {
    const std::uint64_t id = store_->add_dead_letter(letter, owner_);
    counters_.dead_lettered.fetch_add(1, std::memory_order_relaxed);
    detail::log(detail::LogLevel::warn,
                "notifications durable handler \"{}\": event {} on \"{}\" is dead letter {} in {} ({} after {} "
                "attempt(s): {})",
                name_, event_id.empty() ? "(no id)" : event_id, cut(letter.subject, 120), id, store_->description(),
                reason, attempts, cut(error));
    if (work.delivery.settle) work.delivery.settle(Settle::term);
  } catch (...) {
    // Not stored: the transport keeps it (redelivery) where it can; otherwise it is counted lost.
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    detail::log(detail::LogLevel::error,
                "notifications durable handler \"{}\": could not store dead letter for event {}: {}", name_,
                event_id, detail::describe_exception(std::current_exception()));
    postpone(work, options_.backoff.max);
  }
}

void DurableConsumer::finish_replay(Work& work, bool ok) {
  (ok ? counters_.replayed : counters_.replay_failed).fetch_add(1, std::memory_order_relaxed);
  if (work.waiter) work.waiter->finish(ok);
}

void DurableConsumer::preclaim(std::deque<Work>& batch) {
  std::vector<std::string> ids;
  std::vector<Work*> claimants;
  std::set<std::string> seen;
  for (Work& w : batch) {
    if (w.replay_id != 0 || w.pre_claim) continue;
    w.decoded = decode_envelope(w.delivery.message.body);
    if (!*w.decoded) continue;
    const std::string& id = w.decoded->envelope->id;
    // A second delivery of one id claims on its own turn (it then finds the first one's outcome).
    if (!seen.insert(id).second) continue;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (running_ids_.count(id) != 0) continue;  // held by a call left behind: handle() puts it back
    }
    ids.push_back(id);
    claimants.push_back(&w);
  }
  if (ids.size() < 2) return;  // one claim costs the same at its turn
  std::vector<InboxClaim> claims;
  try {
    claims = store_->claim_many(name_, ids, owner_, options_.revive_after);
  } catch (...) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    return;  // each one claims on its own turn
  }
  for (std::size_t i = 0; i < claims.size() && i < claimants.size(); ++i) claimants[i]->pre_claim = claims[i];
}

void DurableConsumer::release_claims(const std::vector<std::string>& event_ids) {
  if (event_ids.empty()) return;
  try {
    store_->release(name_, event_ids, owner_);
  } catch (...) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    detail::log(detail::LogLevel::error, "notifications durable handler \"{}\": could not give back {} claim(s): {}",
                name_, event_ids.size(), detail::describe_exception(std::current_exception()));
  }
}

void DurableConsumer::handle(Work& work) {
  // A claim made ahead and not used below (the event was put back, or buried as malformed) is
  // given back, so that no other member waits for it.
  std::optional<InboxClaim> pre_claim = std::move(work.pre_claim);
  work.pre_claim.reset();
  struct GiveBack {
    DurableConsumer& self;
    std::optional<InboxClaim>& claim;
    std::string event_id;
    ~GiveBack() {
      if (claim && claim->outcome == InboxClaim::Outcome::claimed && !event_id.empty()) {
        self.release_claims({event_id});
      }
    }
  } give_back{*this, pre_claim, {}};
  if (pre_claim && work.decoded && *work.decoded) give_back.event_id = work.decoded->envelope->id;
  const Message& message = work.delivery.message;
  const bool replaying = work.replay_id != 0;
  if (stuck_.load() >= options_.max_stuck_handlers) {  // stalled: no thread to run it on
    counters_.stalled.fetch_add(1, std::memory_order_relaxed);
    if (replaying) return finish_replay(work, false);
    return postpone(work, hold_delay());
  }
  DecodeResult decoded = work.decoded ? std::move(*work.decoded) : decode_envelope(message.body);
  work.decoded.reset();
  std::string problem = decoded ? name_check_(decoded.envelope->name, message.subject) : decoded.error;
  if (!problem.empty()) {
    if (replaying) {
      try {
        store_->update_dead_letter(work.replay_id, "malformed: " + problem, owner_);
      } catch (...) {
        counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
      }
      return finish_replay(work, false);
    }
    counters_.malformed.fetch_add(1, std::memory_order_relaxed);
    return bury(work, message.id, "malformed", problem, 0);
  }
  const std::string event_id = decoded.envelope->id;
  bool held_here = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    held_here = running_ids_.count(event_id) != 0;
  }
  if (held_here) {  // a call left behind still holds it (D1)
    counters_.held.fetch_add(1, std::memory_order_relaxed);
    if (replaying) return finish_replay(work, false);
    return postpone(work, hold_delay());
  }
  // With the inbox its count of failures is the truth; the transport's redelivery count also
  // counts deliveries put back while the event was held.
  std::uint32_t failures = replaying        ? work.replay_attempts
                           : options_.inbox ? 0
                                            : std::max(work.local_failures, work.delivery.redelivery);
  std::string last_error = work.last_error;
  if (options_.inbox) {
    InboxClaim claim;
    try {
      if (pre_claim) {
        claim = *pre_claim;
        pre_claim.reset();  // used: not given back
      } else {
        claim = store_->claim(name_, event_id, owner_, options_.revive_after, replaying);
      }
    } catch (...) {
      counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
      detail::log(detail::LogLevel::error, "notifications durable handler \"{}\": inbox claim failed: {}", name_,
                  detail::describe_exception(std::current_exception()));
      if (replaying) return finish_replay(work, false);
      return postpone(work, options_.backoff.jittered(std::max<std::uint32_t>(failures, 1)));
    }
    switch (claim.outcome) {
      case InboxClaim::Outcome::done:
        counters_.duplicates_skipped.fetch_add(1, std::memory_order_relaxed);
        if (replaying) {
          try {
            store_->remove_dead_letter(work.replay_id);
          } catch (...) {
            counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
          }
          return finish_replay(work, true);
        }
        if (work.delivery.settle) work.delivery.settle(Settle::ack);
        return;
      case InboxClaim::Outcome::dead:
        counters_.duplicates_skipped.fetch_add(1, std::memory_order_relaxed);
        if (work.delivery.settle) work.delivery.settle(Settle::ack);
        return;
      case InboxClaim::Outcome::held:
        counters_.held.fetch_add(1, std::memory_order_relaxed);
        if (replaying) return finish_replay(work, false);
        return postpone(work, hold_delay());
      case InboxClaim::Outcome::claimed:
        if (!replaying) failures = claim.failed_attempts;
        if (!replaying) last_error = claim.last_error;
        break;
    }
  }
  if (!replaying && failures >= options_.max_attempts) {  // failed enough before this delivery (D3)
    const bool timed_out = last_error.rfind(kTimeoutPrefix, 0) == 0;
    return bury(work, event_id, timed_out ? "timeout" : "max_attempts",
                last_error.empty() ? "failed " + std::to_string(failures) + " time(s)" : last_error, failures);
  }

  auto call = std::make_shared<Call>();
  call->event = event_from_envelope(std::move(*decoded.envelope), transport_->kind());
  call->event_id = event_id;
  call->attempt = failures + 1;
  call->use_inbox = options_.inbox;
  call->replay_id = work.replay_id;
  call->in_progress = work.delivery.in_progress;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    running_ids_.insert(event_id);
  }
  if (failures > 0 && !replaying) counters_.retried.fetch_add(1, std::memory_order_relaxed);
  const CallOutcome outcome = run_call(call, work);
  if (outcome == CallOutcome::stopped) {  // shutdown's deadline: the runner finishes the claim (D1)
    counters_.left_running_at_shutdown.fetch_add(1, std::memory_order_relaxed);
    if (replaying) return finish_replay(work, false);
    // With acknowledgements the transport redelivers it (the claim stays held until the call
    // returns); without, it is counted once, here.
    if (work.delivery.settle) work.delivery.settle(Settle::nak);
    return;
  }
  if (outcome == CallOutcome::timed_out) {  // left behind: the runner finishes the claim (D1)
    counters_.timeouts.fetch_add(1, std::memory_order_relaxed);
    counters_.failed.fetch_add(1, std::memory_order_relaxed);
    if (replaying) return finish_replay(work, false);
    detail::log(detail::LogLevel::warn,
                "notifications durable handler \"{}\": event {} attempt {}: {}the handler ran past its deadline of {} "
                "ms; its thread is left to finish and holds the event until then",
                name_, event_id, call->attempt, kTimeoutPrefix, options_.handler_deadline.count());
    work.local_failures = call->attempt;
    work.last_error = kTimeoutPrefix + "ran past its deadline of " + std::to_string(options_.handler_deadline.count()) +
                      " ms";
    return postpone(work, options_.backoff.jittered(call->attempt));
  }
  if (call->ok) {
    if (replaying) return finish_replay(work, true);
    (call->completed || !options_.inbox ? counters_.succeeded : counters_.taken_over)
        .fetch_add(1, std::memory_order_relaxed);
    if (work.delivery.settle) work.delivery.settle(Settle::ack);
    return;
  }
  counters_.failed.fetch_add(1, std::memory_order_relaxed);
  if (replaying) return finish_replay(work, false);
  const std::uint32_t now_failed = options_.inbox ? std::max(call->failures, call->attempt) : call->attempt;
  if (now_failed >= options_.max_attempts) return bury(work, event_id, "max_attempts", call->error, now_failed);
  detail::log(detail::LogLevel::info, "notifications durable handler \"{}\": event {} attempt {} failed: {}", name_,
              event_id, call->attempt, cut(call->error));
  work.local_failures = now_failed;
  work.last_error = call->error;
  postpone(work, options_.backoff.jittered(now_failed));
}

void DurableConsumer::housekeeping(Clock::time_point now) {
  if (options_.inbox && now >= next_renew_) {
    next_renew_ = now + std::max<std::chrono::milliseconds>(options_.revive_after / 4, std::chrono::milliseconds(20));
    if (running_call_.load() || stuck_.load() > 0) {
      try {
        store_->renew(owner_);
      } catch (...) {
        counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  if (options_.inbox && now >= next_prune_) {
    next_prune_ = now + kPruneInterval;
    try {
      store_->prune_done(name_, options_.keep_done, options_.keep_done_for);
    } catch (...) {
      counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void DurableConsumer::run_dispatcher() {
  detail::name_this_thread("ntf-durable");
  detail::mark_bus_thread();
  next_prune_ = Clock::now() + kPruneInterval;
  std::deque<Work> batch;  // taken from the queue, not handled yet
  while (true) {
    if (batch.empty()) {
      std::unique_lock<std::mutex> lock(mutex_);
      while (true) {
        if (stop_requested_) break;
        const auto now = Clock::now();
        if (!retries_.empty() && retries_.begin()->first <= now) {
          batch.push_back(std::move(retries_.begin()->second));
          retries_.erase(retries_.begin());
          break;
        }
        if (!queue_.empty()) {
          const std::size_t take = options_.inbox ? kClaimBatch : 1;
          while (!queue_.empty() && batch.size() < take) {
            batch.push_back(std::move(queue_.front()));
            queue_.pop_front();
          }
          break;
        }
        auto until = now + kIdleWake;
        if (!retries_.empty()) until = std::min(until, retries_.begin()->first);
        wake_.wait_until(lock, until);
        lock.unlock();
        housekeeping(Clock::now());
        lock.lock();
      }
      if (batch.size() > 1) {
        lock.unlock();
        preclaim(batch);
      }
    }
    if (batch.empty() || stopping()) break;
    Work work = std::move(batch.front());
    batch.pop_front();
    handle(work);
    housekeeping(Clock::now());
  }
  // Stopping: what waits goes back to the transport, or is counted (D4); what was claimed ahead
  // is given back to the inbox first.
  std::deque<Work> left = std::move(batch);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Work& w : queue_) left.push_back(std::move(w));
    queue_.clear();
    for (auto& [due, w] : retries_) left.push_back(std::move(w));
    retries_.clear();
  }
  std::vector<std::string> claimed_ahead;
  for (Work& w : left) {
    if (w.pre_claim && w.pre_claim->outcome == InboxClaim::Outcome::claimed) {
      claimed_ahead.push_back(w.decoded->envelope->id);
    }
  }
  release_claims(claimed_ahead);
  std::uint64_t lost = 0;
  for (Work& w : left) {
    if (w.waiter) {
      w.waiter->finish(false);
    } else if (w.delivery.settle) {
      w.delivery.settle(Settle::nak);
      counters_.returned_at_shutdown.fetch_add(1, std::memory_order_relaxed);
    } else {
      ++lost;
    }
  }
  if (lost > 0) {
    counters_.lost_at_shutdown.fetch_add(lost, std::memory_order_relaxed);
    detail::log(detail::LogLevel::warn,
                "notifications durable handler \"{}\": {} event(s) waiting for a retry were not handled before "
                "shutdown; the transport ({}) cannot redeliver them",
                name_, lost, transport_->kind());
  }
  {
    std::lock_guard<std::mutex> lock(runner_->mutex);
    runner_->quit = true;
  }
  runner_->changed.notify_all();
  if (runner_thread_.joinable()) runner_thread_.join();  // idle: returns at once
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dispatcher_done_ = true;
  }
  wake_.notify_all();
}

DurableConsumer::StopReport DurableConsumer::stop(Clock::time_point deadline) {
  if (in_forked_child()) return {};
  finish_stop(deadline);
  StopReport report;
  report.returned = counters_.returned_at_shutdown.load();
  report.unfinished = counters_.lost_at_shutdown.load() + counters_.left_running_at_shutdown.load();
  return report;
}

void DurableConsumer::finish_stop(Clock::time_point deadline) {
  std::shared_ptr<Runner> runner;
  {
    std::lock_guard<std::mutex> lock(mutex_);
      stop_requested_ = true;
    stop_deadline_ = deadline;
    runner = runner_;
  }
  wake_.notify_all();
  if (runner) {  // a dispatcher waiting for a call looks at the stop deadline now
    { std::lock_guard<std::mutex> lock(runner->mutex); }
    runner->changed.notify_all();
  }
  if (subscription_ != 0) {
    transport_->unsubscribe(subscription_);
    subscription_ = 0;
  }
  if (!dispatcher_.joinable()) return;
  if (dispatcher_.get_id() == std::this_thread::get_id()) {
    dispatcher_.detach();
    return;
  }
  bool done = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done = wake_.wait_until(lock, deadline + kJoinGrace, [&] { return dispatcher_done_; });
  }
  if (done) {
    dispatcher_.join();
  } else {
    detail::log(detail::LogLevel::warn,
                "notifications durable handler \"{}\": its dispatcher did not return by shutdown's deadline; "
                "left to finish",
                name_);
    dispatcher_.detach();
  }
}

bool DurableConsumer::replay(std::uint64_t id, std::chrono::milliseconds timeout) {
  if (in_forked_child()) throw DurableError("durable handler \"" + name_ + "\" does not run in a forked child");
  if (running_handler_of == this) {
    throw DurableError("replay_dead_letter(\"" + name_ + "\") called from that handler itself: it would wait for "
                       "its own call; call it from another thread");
  }
  std::optional<DeadLetter> letter = store_->dead_letter(id);
  if (!letter) throw DurableError("dead letter " + std::to_string(id) + " is not in " + store_->description());
  if (letter->handler != name_) {
    throw DurableError("dead letter " + std::to_string(id) + " belongs to handler \"" + letter->handler +
                       "\", not \"" + name_ + "\"");
  }
  auto waiter = std::make_shared<ReplayWaiter>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stop_requested_ || !started_) return false;
    Work work;
    work.delivery.message.subject = letter->subject;
    work.delivery.message.body = letter->body;
    work.delivery.message.id = letter->event_id;
    work.replay_id = id;
    work.replay_attempts = letter->attempts;
    work.waiter = waiter;
    queue_.push_back(std::move(work));  // a replay is asked for: not bounded by max_queued
  }
  wake_.notify_all();
  std::unique_lock<std::mutex> lock(waiter->mutex);
  waiter->done.wait_for(lock, timeout, [&] { return waiter->result.has_value(); });
  return waiter->result.value_or(false);
}

nlohmann::json DurableConsumer::health() const {
  nlohmann::json out;
  if (in_forked_child()) {
    return {{"state", "forked_child"},
            {"pattern", pattern_},
            {"detail", "registered before this process was forked: it handles nothing here"},
            {"counters", {{"forked_child", counters_.forked_child.load(std::memory_order_relaxed)}}}};
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    out["state"] = stop_requested_ ? "stopped" : (started_ ? "running" : "created");
    out["queued"] = queue_.size();
    out["retrying"] = retries_.size();
  }
  const auto load = [](const std::atomic<std::uint64_t>& counter) { return counter.load(std::memory_order_relaxed); };
  out["pattern"] = pattern_;
  out["subject"] = subject_pattern_;
  out["inbox"] = options_.inbox;
  out["acknowledgements"] = acknowledgements_;
  out["running"] = running_call_.load();
  out["stuck_handlers"] = stuck_.load();
  out["stalled"] = stuck_.load() >= options_.max_stuck_handlers;
  out["counters"] = {{"received", load(counters_.received)},
                     {"succeeded", load(counters_.succeeded)},
                     {"failed", load(counters_.failed)},
                     {"timeouts", load(counters_.timeouts)},
                     {"retried", load(counters_.retried)},
                     {"duplicates_skipped", load(counters_.duplicates_skipped)},
                     {"held", load(counters_.held)},
                     {"dead_lettered", load(counters_.dead_lettered)},
                     {"malformed", load(counters_.malformed)},
                     {"refused_full", load(counters_.refused_full)},
                     {"taken_over", load(counters_.taken_over)},
                     {"late_completions", load(counters_.late_completions)},
                     {"late_failures", load(counters_.late_failures)},
                     {"returned_at_shutdown", load(counters_.returned_at_shutdown)},
                     {"lost_at_shutdown", load(counters_.lost_at_shutdown)},
                     {"replayed", load(counters_.replayed)},
                     {"replay_failed", load(counters_.replay_failed)},
                     {"stalled", load(counters_.stalled)},
                     {"store_errors", load(counters_.store_errors)},
                     {"left_running_at_shutdown", load(counters_.left_running_at_shutdown)},
                     {"forked_child", load(counters_.forked_child)}};
  try {
    out["store"] = store_->health();
  } catch (...) {
    out["store"] = {{"error", detail::describe_exception(std::current_exception())}};
  }
  return out;
}

}  // namespace notifications::bridge_internal
