// See store_output.hpp.
#include "store_output.hpp"

#include <cstdio>
#include <ctime>
#include <exception>
#include <iostream>

#include "commands.hpp"

namespace notifications::cli {

std::string format_time(std::chrono::system_clock::time_point time) {
  if (time == std::chrono::system_clock::time_point{}) return "-";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000 - (ms % 1000 < 0 ? 1 : 0));
  const long millis = static_cast<long>(((ms % 1000) + 1000) % 1000);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  char buffer[40];
  const std::size_t n = std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S", &utc);
  char fraction[8];
  std::snprintf(fraction, sizeof fraction, ".%03ldZ", millis);
  return std::string(buffer, n) + fraction;
}

std::string one_line(std::string_view text, std::size_t width) {
  std::string out;
  out.reserve(std::min(text.size(), width));
  for (const char c : text) {
    if (out.size() >= width) break;
    out.push_back(static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? ' ' : c);
  }
  if (text.size() > width && width >= 3) out.replace(width - 3, 3, "...");
  return out;
}

std::string json_text(const nlohmann::json& value, int indent) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

int fail(int code, std::string_view message) {
  std::cerr << "notifications: " << without_credentials(message) << "\n";
  return code;
}

int guarded(const std::function<int()>& body) {
  try {
    return body();
  } catch (const ConfigError& e) {
    return fail(kUsage, e.what());
  } catch (const TransportError& e) {
    return fail(kUnreachable, e.what());
  } catch (const Unreachable& e) {
    return fail(kUnreachable, e.what());
  } catch (const std::exception& e) {
    return fail(kFailed, e.what());
  }
}

}  // namespace notifications::cli
