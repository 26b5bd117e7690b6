#include "notifications/spdlog.hpp"

#include <utility>

#include <spdlog/spdlog.h>

#include "process/log.hpp"

namespace notifications {

void set_logger(std::shared_ptr<spdlog::logger> logger) { detail::use_spdlog_logger(std::move(logger), /*apply_level=*/false); }

void set_log_sinks(std::vector<spdlog::sink_ptr> sinks) {
  auto logger = std::make_shared<spdlog::logger>("notifications", sinks.begin(), sinks.end());
  // initialize_logger() gives it the registry's level, pattern and error handler, and registers it.
  spdlog::drop("notifications");
  try {
    spdlog::initialize_logger(logger);
  } catch (const spdlog::spdlog_ex&) {
    // Another thread registered one meanwhile: this one is used all the same, unregistered.
  }
  detail::use_spdlog_logger(std::move(logger), /*apply_level=*/true);
}

std::shared_ptr<spdlog::logger> logger() { return detail::spdlog_logger(); }

}  // namespace notifications
