#include "process/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "process/thread_safety.hpp"

namespace notifications {

namespace detail {

namespace {

constexpr const char* kLoggerName = "notifications";

// Never destroyed: usable from static destructors and from threads still running at exit.
struct LogState {
  SharedMutex mutex;
  bool resolved NOTIFICATIONS_GUARDED_BY(mutex) = false;  // `logger` was looked up or created
  bool exiting NOTIFICATIONS_GUARDED_BY(mutex) = false;
  std::atomic<bool> level_set{false};  // set_log_level() was called
  std::shared_ptr<spdlog::logger> logger NOTIFICATIONS_GUARDED_BY(mutex);
  std::shared_ptr<const LogHandler> handler NOTIFICATIONS_GUARDED_BY(mutex);
  std::atomic<int> threshold{static_cast<int>(LogLevel::info)};  // the handler's; set_log_level()
  std::atomic<bool> ready{false};  // resolved or exiting: lines need not resolve (never false again)
};

LogState& state() {
  static LogState* const instance = new LogState;
  return *instance;
}

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::debug:
      return spdlog::level::debug;
    case LogLevel::info:
      return spdlog::level::info;
    case LogLevel::warn:
      return spdlog::level::warn;
    case LogLevel::error:
      return spdlog::level::err;
    case LogLevel::off:
      return spdlog::level::off;
  }
  return spdlog::level::err;
}

LogLevel from_spdlog(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return LogLevel::debug;
    case spdlog::level::info:
      return LogLevel::info;
    case spdlog::level::warn:
      return LogLevel::warn;
    case spdlog::level::err:
    case spdlog::level::critical:
      return LogLevel::error;
    default:
      return LogLevel::off;
  }
}

// The application's logger named "notifications", else a new one on standard error with spdlog's
// global level and pattern, registered under that name. Caller holds the write lock.
std::shared_ptr<spdlog::logger> named_logger() {
  if (auto existing = spdlog::get(kLoggerName)) return existing;
  auto created = std::make_shared<spdlog::logger>(kLoggerName, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  try {
    spdlog::initialize_logger(created);
  } catch (const spdlog::spdlog_ex&) {
    // Registered by another thread meanwhile: that one is the application's.
    if (auto existing = spdlog::get(kLoggerName)) return existing;
  }
  return created;
}

void resolve_locked(LogState& s) NOTIFICATIONS_REQUIRES(s.mutex) {
  if (s.resolved) return;
  s.resolved = true;
  s.ready.store(true, std::memory_order_release);
  s.logger = named_logger();
  if (s.level_set.load() && s.logger) s.logger->set_level(to_spdlog(static_cast<LogLevel>(s.threshold.load())));
}

// Resolves the logger before the first line (one write lock, the only time spdlog's registry is
// read unless the application hands in another logger).
void ensure_resolved(LogState& s) NOTIFICATIONS_EXCLUDES(s.mutex) {
  if (s.ready.load(std::memory_order_acquire)) return;
  {
    SharedMutexReadLock lock(s.mutex);
    if (s.resolved || s.exiting) return;
  }
  SharedMutexWriteLock lock(s.mutex);
  resolve_locked(s);
}

bool enabled_locked(const LogState& s, LogLevel level) NOTIFICATIONS_REQUIRES_SHARED(s.mutex) {
  if (s.handler) return static_cast<int>(level) >= s.threshold.load(std::memory_order_relaxed);
  return s.logger != nullptr && s.logger->should_log(to_spdlog(level));
}

}  // namespace

bool log_enabled(LogLevel level) noexcept {
  if (level == LogLevel::off) return false;
  try {
    LogState& s = state();
    ensure_resolved(s);
    SharedMutexReadLock lock(s.mutex);
    return enabled_locked(s, level);
  } catch (...) {
    return false;
  }
}

// The line is written with the lock held (shared): replacing the destination waits for the lines
// being written, and the exit hook can tell (with a bounded try_lock) that a thread of the parent
// was writing one when this process was forked.
void log_line(LogLevel level, std::string_view text) noexcept {
  if (level == LogLevel::off) return;
  try {
    LogState& s = state();
    ensure_resolved(s);
    SharedMutexReadLock lock(s.mutex);
    if (!enabled_locked(s, level)) return;
    if (s.handler) {
      (*s.handler)(level, text);
    } else {
      s.logger->log(to_spdlog(level), "{}", text);
    }
  } catch (...) {
    // A handler or sink that throws loses this line; logging must never fail the caller.
  }
}

void begin_exit_logging() noexcept {
  try {
    LogState& s = state();
    // Bounded: in a forked child a reader that no longer exists may hold the lock for ever; then
    // lines keep going where they went, which nothing else in such a child is using.
    // Polled with try_lock (ThreadSanitizer does not see the timed rwlock calls).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (!s.mutex.try_lock()) {
      if (std::chrono::steady_clock::now() >= give_up) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    SharedMutexWriteLock lock(s.mutex, std::adopt_lock);
    if (s.exiting) return;
    resolve_locked(s);
    if (s.logger) s.logger->flush();
    s.exiting = true;
  } catch (...) {
  }
}

void use_spdlog_logger(std::shared_ptr<spdlog::logger> logger, bool apply_level) {
  LogState& s = state();
  detail::SharedMutexWriteLock lock(s.mutex);
  if (!logger) {
    s.resolved = false;
    resolve_locked(s);
    return;
  }
  s.resolved = true;
  s.logger = std::move(logger);
  if (apply_level && s.level_set.load()) s.logger->set_level(to_spdlog(static_cast<LogLevel>(s.threshold.load())));
}

std::shared_ptr<spdlog::logger> spdlog_logger() {
  LogState& s = state();
  {
    detail::SharedMutexReadLock lock(s.mutex);  // the common case: resolved, read beside the lines
    if (s.resolved) return s.logger;
  }
  detail::SharedMutexWriteLock lock(s.mutex);
  resolve_locked(s);
  return s.logger;
}

std::string wire_text(std::string_view text, std::size_t limit) {
  static constexpr char kHex[] = "0123456789abcdef";
  const std::string_view shown = text.substr(0, limit);
  std::string out;
  out.reserve(shown.size() + 16);
  for (const char c : shown) {
    const auto byte = static_cast<unsigned char>(c);
    switch (c) {
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      default:
        break;
    }
    if (byte < 0x20 || byte >= 0x7f) {
      out += "\\x";
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 0xF]);
    } else {
      out.push_back(c);
    }
  }
  if (text.size() > limit) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

void write_stderr_unlocked(std::string_view text) noexcept {
  const char* data = text.data();
  std::size_t left = text.size();
  for (int attempts = 0; left > 0 && attempts < 8; ++attempts) {
    const ssize_t written = ::write(STDERR_FILENO, data, left);
    if (written <= 0) continue;
    data += written;
    left -= static_cast<std::size_t>(written);
  }
}

}  // namespace detail

std::string_view to_string(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::debug:
      return "debug";
    case LogLevel::info:
      return "info";
    case LogLevel::warn:
      return "warn";
    case LogLevel::error:
      return "error";
    case LogLevel::off:
      return "off";
  }
  return "off";
}

void set_log_handler(LogHandler handler) {
  auto shared = handler ? std::make_shared<const LogHandler>(std::move(handler)) : nullptr;
  detail::LogState& s = detail::state();
  std::shared_ptr<const LogHandler> replaced;
  detail::SharedMutexWriteLock lock(s.mutex);
  replaced = std::move(s.handler);
  s.handler = std::move(shared);
}

// Takes the lock shared only (the threshold is atomic, and so is a spdlog logger's level): setting
// the level never waits for the lines being written, so it cannot deadlock against a handler that
// waits for a lock the caller holds.
void set_log_level(LogLevel level) {
  detail::LogState& s = detail::state();
  detail::ensure_resolved(s);
  detail::SharedMutexReadLock lock(s.mutex);
  s.threshold.store(static_cast<int>(level));
  s.level_set.store(true);
  if (s.logger) s.logger->set_level(detail::to_spdlog(level));
}

LogLevel log_level() noexcept {
  try {
    detail::LogState& s = detail::state();
    detail::ensure_resolved(s);
    detail::SharedMutexReadLock lock(s.mutex);
    if (s.handler) return static_cast<LogLevel>(s.threshold.load());
    return s.logger ? detail::from_spdlog(s.logger->level()) : LogLevel::off;
  } catch (...) {
    return LogLevel::off;
  }
}

}  // namespace notifications
