// Private: the one way the core and the transports write log lines.
//
// Lines go to the destination notifications/logging.hpp describes: a handler the application set,
// else a spdlog logger the library holds a reference to (the one named "notifications", or the one
// notifications/spdlog.hpp handed in). Because the library holds that reference itself, and never
// destroys its state, a thread that logs while static destructors run (from the start of process
// exit) never reaches a destroyed logger or sink; the exit hook only flushes (begin_exit_logging).
// spdlog's registry is read once, for the first line (at the latest by Bridge::start, through
// install_exit_hooks()), so later lines take no spdlog lock but the logger's own: a child forked
// while another thread held the registry's lock can still log.
//
// Text that came from the wire (subjects, names, bodies, peers' error texts) is passed through
// wire_text() first: control characters and bytes outside printable ASCII are escaped, so a peer
// cannot forge log lines, and long text is cut.
//
// Thread-safety: every function may be called from any thread, concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <spdlog/fmt/fmt.h>

#include "notifications/logging.hpp"

namespace spdlog {
class logger;
}

namespace notifications::detail {

using LogLevel = notifications::LogLevel;

// Writes one line; never throws (a failing logger loses the line).
void log_line(LogLevel level, std::string_view text) noexcept;

// True when a line at `level` would be written (the logger's level), so callers can skip
// formatting.
bool log_enabled(LogLevel level) noexcept;

template <class... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) noexcept {
  if (!log_enabled(level)) return;
  try {
    log_line(level, fmt::format(format, std::forward<Args>(args)...));
  } catch (...) {
    // Formatting failed (out of memory): the line is lost, the caller goes on.
  }
}

// Called by the library's exit hook before spdlog's own objects are destroyed: makes sure the
// logger is resolved (so no later line reads spdlog's registry) and flushes it; idempotent.
void begin_exit_logging() noexcept;

// For component notifications::spdlog (notifications/spdlog.hpp): lines go to `logger` (null: the
// one named "notifications", created when missing) when no handler is set. With `apply_level`, the
// level set_log_level() set, if it was called, is set on `logger`.
void use_spdlog_logger(std::shared_ptr<spdlog::logger> logger, bool apply_level);
// The spdlog logger lines go to when no handler is set (resolved if it was not yet).
std::shared_ptr<spdlog::logger> spdlog_logger();

// `text` with every byte outside printable ASCII (and the backslash) escaped as \n, \r, \t or
// \xNN, cut to `limit` bytes of input with "... (N bytes)" appended.
std::string wire_text(std::string_view text, std::size_t limit = 200);

// Writes `text` to standard error with one write(2) and no lock: for a forked child, where a
// lock another thread held at fork() may never be released. Async-signal-safe.
void write_stderr_unlocked(std::string_view text) noexcept;

}  // namespace notifications::detail
