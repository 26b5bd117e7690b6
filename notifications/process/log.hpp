// Private: the one way the core and the transports write log lines.
//
// Log lines go to spdlog's default logger while the process runs normally. From the moment the
// process starts to exit (std::exit, a return from main, std::terminate), lines go to a copy of
// that logger that this library keeps alive, so a thread that logs while static destructors run
// never reaches a destroyed logger or sink.
//
// Text that came from the wire (subjects, names, bodies, peers' error texts) is passed through
// wire_text() first: control characters and bytes outside printable ASCII are escaped, so a peer
// cannot forge log lines, and long text is cut.
//
// Thread-safety: every function may be called from any thread, concurrently.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include <spdlog/fmt/fmt.h>

namespace notifications::detail {

enum class LogLevel { debug, info, warn, error };

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

// Switches logging to the kept copy of the logger. Called by the library's exit hook before
// spdlog's own objects are destroyed; idempotent.
void begin_exit_logging() noexcept;

// `text` with every byte outside printable ASCII (and the backslash) escaped as \n, \r, \t or
// \xNN, cut to `limit` bytes of input with "... (N bytes)" appended.
std::string wire_text(std::string_view text, std::size_t limit = 200);

// Writes `text` to standard error with one write(2) and no lock: for a forked child, where a
// lock another thread held at fork() may never be released. Async-signal-safe.
void write_stderr_unlocked(std::string_view text) noexcept;

}  // namespace notifications::detail
