// Exits 0 when the installed spdlog component hands the library's lines to the sinks given to
// notifications::set_log_sinks(), under the name "notifications" in spdlog's registry, and a
// handler from the core (notifications/logging.hpp) receives them instead once set.
#include <notifications/bridge.hpp>
#include <notifications/logging.hpp>
#include <notifications/notifier.hpp>
#include <notifications/spdlog.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>

namespace {

void start_and_stop_a_bridge() {
  notifications::Notifier notifier;
  notifications::BridgeConfig config;
  config.app = "spdlog_consumer";
  auto bridge = notifications::make_bridge(notifier, config);
  bridge->start();
  bridge->shutdown(std::chrono::seconds(2));
}

}  // namespace

int main() {
  std::ostringstream text;
  notifications::set_log_sinks({std::make_shared<spdlog::sinks::ostream_sink_mt>(text)});
  if (spdlog::get("notifications") != notifications::logger()) {
    std::fprintf(stderr, "spdlog::get(\"notifications\") is not the logger in use\n");
    return 1;
  }
  start_and_stop_a_bridge();
  if (text.str().find("notifications bridge: shut down") == std::string::npos) {
    std::fprintf(stderr, "the sink did not receive the shutdown line: %s\n", text.str().c_str());
    return 2;
  }
  auto lines = std::make_shared<std::atomic<int>>(0);
  notifications::set_log_handler([lines](notifications::LogLevel, std::string_view) { lines->fetch_add(1); });
  start_and_stop_a_bridge();
  notifications::set_log_handler({});
  if (lines->load() == 0) {
    std::fprintf(stderr, "the handler received no line\n");
    return 3;
  }
  // `text` ends with main(), before the exit hook flushes the logger: the library lets go of it.
  notifications::set_log_sinks({});
  return 0;
}
