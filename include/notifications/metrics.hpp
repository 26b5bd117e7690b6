// BridgeObserver: what a Bridge reports as it happens, for metrics that Bridge::health() cannot
// give (latencies). Counters, queue depths and the lag are in health(); a metrics library reads
// them there at scrape time (notifications::prometheus does: include/notifications/prometheus.hpp).
//
// An observer is given to a Bridge through BridgeHooks::observer. Without one the bridge reads no
// clock for it and pays one test of a null pointer where it would call it.
//
// Thread-safety: the bridge calls an observer from its own threads, concurrently: published() on
// the ntf-sender thread, delivered() on the ntf-dispatcher thread, handled() on each durable
// handler's runner thread (ntf-durable-run). An implementation must therefore be thread-safe,
// must not block (it delays the events behind the one it observes) and should not throw: an
// exception is caught, counted in health()["counters"]["observer_errors"], and otherwise ignored.
// One observer may serve several bridges. A bridge holds its observer (a shared_ptr) as long as its
// threads run, which may be while the process exits (a bridge shut down by the exit hook, a
// durable handler call left running past its deadline): an observer that refers to objects with
// static storage duration may outlive them, so hold what it uses by shared_ptr.
#pragma once

#include <chrono>
#include <string_view>

namespace notifications {

// The interface a metrics library implements; see the thread-safety contract above.
class BridgeObserver {
 public:
  virtual ~BridgeObserver() = default;

  // One forwarded event was published: the transport's publish() reported it published (sent, in
  // docs/bridge.md's words). `latency`: from the end of the instrumented block (the event's time
  // plus its duration, by the system clock) to the return of that publish() call; it includes
  // the wait in the outbox and retries. Never negative (a clock step back reads as 0). Events
  // dropped are not observed here (health()["counters"]["dropped"] counts them).
  virtual void published(std::chrono::nanoseconds latency) = 0;

  // One remote event was handed to the local listeners (Notifier::publish on the dispatcher
  // thread) and they returned: `latency` is the time they took together (steady clock). `ok` is
  // false when a listener threw in strict mode (also counted as dropped "dispatch_failed").
  virtual void delivered(std::string_view name, std::chrono::nanoseconds latency, bool ok) = 0;

  // A durable handler (Bridge::subscribe_durable) returned for one event, or for one replay of a
  // dead letter: `latency` is the call's duration (steady clock); `ok` is false when it threw.
  // A call still running at its deadline is observed when it returns.
  virtual void handled(std::string_view handler, std::chrono::nanoseconds latency, bool ok) = 0;
};

}  // namespace notifications
