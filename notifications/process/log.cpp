#include "process/log.hpp"

#include <unistd.h>

#include <memory>
#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

#include "process/thread_safety.hpp"

namespace notifications::detail {

namespace {

// Never destroyed: usable from static destructors and from threads still running at exit.
struct LogState {
  SharedMutex mutex;
  bool exiting NOTIFICATIONS_GUARDED_BY(mutex) = false;
  std::shared_ptr<spdlog::logger> kept NOTIFICATIONS_GUARDED_BY(mutex);  // set when exiting
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
  }
  return spdlog::level::err;
}

}  // namespace

bool log_enabled(LogLevel level) noexcept {
  LogState& s = state();
  SharedMutexReadLock lock(s.mutex);
  spdlog::logger* logger = s.exiting ? s.kept.get() : spdlog::default_logger_raw();
  return logger != nullptr && logger->should_log(to_spdlog(level));
}

void log_line(LogLevel level, std::string_view text) noexcept {
  try {
    LogState& s = state();
    SharedMutexReadLock lock(s.mutex);
    spdlog::logger* logger = s.exiting ? s.kept.get() : spdlog::default_logger_raw();
    if (logger != nullptr) logger->log(to_spdlog(level), "{}", text);
  } catch (...) {
    // A sink that throws loses this line; logging must never fail the caller.
  }
}

void begin_exit_logging() noexcept {
  try {
    LogState& s = state();
    // Bounded: in a forked child a reader that no longer exists may hold the lock for ever; then
    // lines keep going to spdlog's logger, which nothing else in such a child is using.
    // Polled with try_lock (ThreadSanitizer does not see the timed rwlock calls).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (!s.mutex.try_lock()) {
      if (std::chrono::steady_clock::now() >= give_up) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    SharedMutexWriteLock lock(s.mutex, std::adopt_lock);
    if (s.exiting) return;
    s.kept = spdlog::default_logger();
    if (s.kept) s.kept->flush();
    s.exiting = true;
  } catch (...) {
  }
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

}  // namespace notifications::detail
