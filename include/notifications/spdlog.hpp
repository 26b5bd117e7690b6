// Component notifications::spdlog (needs spdlog's CMake package): hands the library's log lines
// to a spdlog logger or to spdlog sinks of the application's choosing, instead of the logger
// named "notifications" the library uses by default (notifications/logging.hpp, docs/logging.md).
// A handler set with set_log_handler() takes precedence over the logger chosen here for as long as
// it is set.
//
// Thread-safety: every function here may be called from any thread, concurrently with lines being
// written (a line goes to the old logger or to the new one). The loggers and sinks handed in are
// used from the library's threads, possibly concurrently: use spdlog's thread-safe ("_mt") kinds.
//
// Lifetime: the library holds the logger (and so its sinks) until another one is handed in, and
// uses it while the process exits: lines of the exit hook, which flushes it after main() returned,
// and of threads still running then. What a sink writes to (a stream, a file, a buffer) must
// outlive that: a sink over an object local to main() must be replaced before main() returns
// (set_log_sinks({}) drops lines from then on).
#pragma once

#include <memory>
#include <vector>

#include <spdlog/logger.h>

namespace notifications {

// Lines go to `logger` from now on, at its own level (set_log_level() sets it too). Null goes back
// to the logger named "notifications" in spdlog's registry, created on standard error when the
// application dropped it or never registered one. The library keeps a reference to the logger for
// as long as the process runs, so lines written while the process exits still reach it.
void set_logger(std::shared_ptr<spdlog::logger> logger);

// Lines go to a new logger named "notifications" writing to `sinks` (none: lines are dropped),
// with spdlog's global level and pattern, or the level set_log_level() set; it replaces any logger
// of that name in spdlog's registry, so spdlog::get("notifications") finds it.
void set_log_sinks(std::vector<spdlog::sink_ptr> sinks);

// The spdlog logger lines go to while no handler is set: the one set_logger() or set_log_sinks()
// handed in, else the one named "notifications" (created when missing). Never null.
std::shared_ptr<spdlog::logger> logger();

}  // namespace notifications
