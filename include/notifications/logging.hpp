// Where the library's log lines go, and from which level (docs/logging.md lists every line).
//
// By default every line goes to the spdlog logger named "notifications": the one the application
// registered under that name before the library's first line (at the latest the first
// Bridge::start), else one the library creates then and registers, writing to standard error with
// spdlog's global pattern and level (info unless spdlog::set_level said otherwise). An
// application finds it with spdlog::get("notifications"). Component notifications::spdlog
// (notifications/spdlog.hpp) hands in another spdlog logger or sinks; this header, with no spdlog
// type, hands in a plain callback instead.
//
// Thread-safety: every function here may be called from any thread, concurrently with each other
// and with lines being written; a line goes to the destination before or after the change, never
// to both. Changing the destination (set_log_handler, and set_logger / set_log_sinks of
// notifications/spdlog.hpp) waits for the lines being written, so never change it while holding a
// lock your handler takes; setting the level does not wait.
#pragma once

#include <functional>
#include <string_view>

namespace notifications {

// The levels of the library's lines, lowest first. Normal operation (start, connect, flush, a
// clean shutdown) logs at debug and info only; warn means events may be lost, delayed
// or refused, or the setup looks wrong; error means something failed that the library retries or
// gives up on. off is only a threshold: no line has it.
enum class LogLevel { debug, info, warn, error, off };

// "debug", "info", "warn", "error" or "off".
std::string_view to_string(LogLevel level) noexcept;

// Receives one line: its level and its text (no trailing newline, credentials already redacted,
// text that came from the wire escaped). The string_view is valid during the call only.
using LogHandler = std::function<void(LogLevel level, std::string_view message)>;

// Sends every line at or above the log level (set_log_level) to `handler` instead of the spdlog
// logger; an empty handler goes back to the spdlog logger (the "notifications" one, or the one
// handed in by set_logger()). The library keeps its copy of the handler until another call
// replaces it, for the rest of the process otherwise; the one replaced is no longer running nor
// called once this returns (the call waits for the lines being written to it) and is destroyed.
//
// The handler's contract:
//   - it runs on the thread that logs: the application's own (Bridge::start, shutdown,
//     instrument ...) or the library's (ntf-sender, ntf-dispatcher, ntf-durable, ntf-nats-log,
//     ntf-sqlite-poll, ntf-outbox, ntf-sse-dispatch, the exit hook ...), possibly on several
//     threads at once: it must be thread-safe itself;
//   - it must return promptly and must not block on the bus: it may take its own locks, format,
//     write and enqueue, but must not call the functions of this header or of
//     notifications/spdlog.hpp (they wait for the lines being written: for itself), instrument(),
//     publish, start, flush or shut down a Bridge, or wait for a thread of the library (a line may
//     be written while that thread holds a lock of the bus);
//   - an exception it throws is swallowed (the line is lost, the library goes on);
//   - it keeps being called while the process exits (std::exit, a return from main), from the exit
//     hook that shuts bridges down and from threads still running then: what it captures by value
//     lives as long as the library's copy, but objects local to main() or with static storage
//     duration that it refers to may already be destroyed: capture a shared_ptr instead (or
//     replace the handler before they end);
//   - in a child forked while another thread was inside the handler, locks that thread held stay
//     held: a handler that takes locks should not be used across fork() without prepare_fork()
//     (notifications/fork.hpp), which quiesces the library's threads.
void set_log_handler(LogHandler handler);

// The threshold below which no line is written, default info (spdlog's global level, when the
// library created the "notifications" logger). It applies to the handler and is
// also set on the spdlog logger in use (as spdlog::get("notifications")->set_level() would), so
// either way of setting the spdlog logger's level works. LogLevel::off writes no line at all.
void set_log_level(LogLevel level);

// The threshold in effect: the handler's when one is set, else the spdlog logger's level.
LogLevel log_level() noexcept;

}  // namespace notifications
