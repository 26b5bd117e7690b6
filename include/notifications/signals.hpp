// Opt-in: SIGTERM and SIGINT (what deploys and Ctrl-C send) become an orderly
// notifications::shutdown(deadline) of the bridge attached by configure().
//
//   notifications::configure();
//   notifications::shutdown_on_signals();   // once, early in main()
//
// On the first such signal a thread of the library ("ntf-signals") shuts the bridge down within
// the deadline, then lets the signal take the effect it had before: with the default action the
// process ends by that signal (the exit status tells the supervisor it was SIGTERM); a handler
// the application installed before this call is called too (right away, from the signal
// handler, as it would have been); an ignored signal stays ignored after the shutdown. A handler
// installed after this call replaces this one, as with any signal handler.
//
// Thread-safety: call from any thread; a second call does nothing and returns false.
#pragma once

#include <chrono>
#include <vector>

namespace notifications {

struct SignalShutdownOptions {
  std::vector<int> signals;  // empty: SIGTERM and SIGINT
  std::chrono::milliseconds deadline{5000};
};

// Installs the handlers and starts the thread. True when installed; throws notifications::Error
// naming the signal when a handler cannot be installed.
bool shutdown_on_signals(SignalShutdownOptions options = {});

}  // namespace notifications
