// Helpers of the `notifications outbox` and `notifications dlq` commands (cmd_outbox.cpp,
// cmd_dlq.cpp): how they print times and long text, and how they report an error with its exit
// code. docs/cli_outbox_dlq.md describes their output.
//
// Thread-safety: stateless functions, for the main thread of the command.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace notifications::cli {

// "2026-11-30T10:55:01.123Z" (UTC, milliseconds); "-" for the epoch (no time recorded).
std::string format_time(std::chrono::system_clock::time_point time);
// `text` on one line (control characters as spaces), at most `width` characters, "..." when cut.
std::string one_line(std::string_view text, std::size_t width);
// `bytes` as a JSON string: invalid UTF-8 is replaced (U+FFFD) instead of failing the output.
std::string json_text(const nlohmann::json& value, int indent = -1);
// Prints "notifications: <message>" on stderr and returns `code` (an ExitCode).
int fail(int code, std::string_view message);
// Runs a command's body and returns its exit code; what it throws is printed with the code that
// fits: ConfigError 2 (bad configuration), TransportError 3, anything else 1.
int guarded(const std::function<int()>& body);

}  // namespace notifications::cli
