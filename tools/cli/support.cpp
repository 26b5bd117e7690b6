// What the commands share: error-to-exit-code mapping, logging, their own bridge, and output
// formatting (docs/cli.md).
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <thread>

#include "commands.hpp"
#include "notifications/envelope.hpp"
#include "notifications/errors.hpp"
#include "notifications/logging.hpp"
#include "notifications/subject.hpp"
#include "notifications/transport.hpp"
#include "notifications/transports/sqlite.hpp"
#include "transport/redaction.hpp"  // the library's own redaction of URLs in free text

namespace notifications::cli {

void set_up_logging() {
  // One fprintf per line: stdio locks the stream, so lines of several threads do not mix.
  set_log_handler([](LogLevel level, std::string_view message) {
    const std::string_view name = to_string(level);
    std::fprintf(stderr, "[%.*s] %.*s\n", static_cast<int>(name.size()), name.data(), static_cast<int>(message.size()),
                 message.data());
  });
  set_log_level(LogLevel::warn);
}

int run_command(const std::string& command, const GlobalOptions& options, const std::function<int()>& body) {
  if (options.verbose) set_log_level(LogLevel::info);
  const auto say = [&command](const std::string& message) {
    std::cout.flush();
    std::cerr << "notifications " << command << ": " << without_credentials(message) << std::endl;
  };
  try {
    return body();
  } catch (const UsageError& e) {
    say(e.what());
    return kUsage;
  } catch (const ConfigError& e) {
    say(e.what());
    return kUsage;
  } catch (const InvalidSubject& e) {
    say(e.what());
    return kUsage;
  } catch (const InvalidPattern& e) {
    say(e.what());
    return kUsage;
  } catch (const TransportError& e) {
    say(e.what());
    return kUsage;  // start_bridge turns the errors of reaching the transport into Unreachable
  } catch (const Unreachable& e) {
    say(e.what());
    return kUnreachable;
  } catch (const std::exception& e) {
    say(e.what());
    return kFailed;
  }
}

BridgeConfig command_bridge_config(BridgeConfig config, std::vector<std::string> forward,
                                   std::vector<std::string> subscribe) {
  config.durability = Durability::none;
  config.outbox = OutboxConfig{};
  if (config.overflow == OverflowPolicy::spill) config.overflow = OverflowPolicy::block;
  config.group.clear();
  config.forward = std::move(forward);
  config.subscribe = std::move(subscribe);
  return config;
}

std::unique_ptr<Bridge> start_bridge(Notifier& notifier, const BridgeConfig& config) {
  std::unique_ptr<Bridge> bridge = make_bridge(notifier, config);
  try {
    bridge->start();
  } catch (const TransportError& e) {
    throw Unreachable("cannot reach " + redact_url(config.url) + ": " + e.what());
  }
  return bridge;
}

void require_existing_file(const BridgeConfig& config) {
  if (config.url.rfind("sqlite://", 0) != 0) return;
  const SqliteTransportOptions sqlite = sqlite_options_from_config(TransportConfig{config.url, config.transport});
  std::error_code error;
  if (!std::filesystem::exists(sqlite.path, error)) {
    throw Unreachable("the SQLite file \"" + sqlite.path + "\" of " + redact_url(config.url) +
                      " does not exist: check the path (a program creates it when it first starts its transport)");
  }
}

bool transport_connected(const nlohmann::json& bridge_health) {
  const nlohmann::json& transport = bridge_health.value("transport", nlohmann::json::object());
  if (transport.value("state", "") != "started") return false;
  if (transport.contains("connection")) return transport["connection"] == "connected";
  return true;
}

bool wait_connected(const Bridge& bridge, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!transport_connected(bridge.health())) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

std::string local_time_ms(std::chrono::system_clock::time_point time) {
  using namespace std::chrono;
  const std::time_t seconds = system_clock::to_time_t(time);
  const auto millis = duration_cast<milliseconds>(time.time_since_epoch()).count() % 1000;
  std::tm local{};
  localtime_r(&seconds, &local);
  char text[32];
  const std::size_t n = std::strftime(text, sizeof text, "%H:%M:%S", &local);
  char fraction[8];
  std::snprintf(fraction, sizeof fraction, ".%03d", static_cast<int>(millis < 0 ? millis + 1000 : millis));
  return std::string(text, n) + fraction;
}

std::string without_credentials(std::string_view text) { return redaction::redact_text(text); }

std::string printable(std::string_view raw) {
  const std::string text = without_credentials(raw);
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    out.push_back(byte < 0x20 || byte == 0x7f ? '?' : c);
  }
  return out;
}

std::string compact_json(const nlohmann::json& value, std::size_t width) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (width == 0 || text.size() <= width) return text;
  const std::size_t keep = width > 3 ? width - 3 : 0;
  std::size_t cut = keep;
  // Back off to the start of a UTF-8 character (continuation bytes are 10xxxxxx).
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  text.resize(cut);
  return text + "...";
}

nlohmann::json event_to_json(const Event& event) {
  nlohmann::json out;
  out["name"] = std::string(event.name());
  out["id"] = event.id();
  out["time"] = format_rfc3339(event.time());
  out["duration_ms"] = event.duration_ms();
  const auto& origin = event.origin();
  out["producer"] = origin ? origin->producer : "";
  out["producer_instance"] = origin ? origin->producer_instance : "";
  out["transport"] = origin ? origin->transport : "";
  out["payload"] = event.payload();
  if (event.exception()) {
    out["exception"] = {{"type", event.exception()->type}, {"message", event.exception()->message}};
  } else {
    out["exception"] = nullptr;
  }
  out["traceparent"] = event.traceparent();
  if (!event.context().empty()) out["context"] = event.context();
  if (!event.tags().empty()) out["tags"] = event.tags();
  return out;
}

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

bool stop_signal_within(std::chrono::milliseconds wait) {
  const sigset_t set = stop_signals();
  timespec timeout{static_cast<time_t>(wait.count() / 1000), static_cast<long>(wait.count() % 1000) * 1'000'000};
  return ::sigtimedwait(&set, nullptr, &timeout) > 0;
}

void check_pattern_argument(std::string_view label, const std::string& pattern) {
  if (pattern.find("://") != std::string::npos) {  // the problem would quote its tokens, credentials and all
    throw UsageError(std::string(label) + " \"" + printable(pattern) +
                     "\" is a URL: give the transport's URL with --url, and a pattern such as 'order.>' here");
  }
  if (const std::string problem = subject_pattern_problem(pattern); !problem.empty()) {
    throw UsageError(std::string(label) + " \"" + printable(pattern) + "\": " + problem);
  }
}

}  // namespace notifications::cli
