// The field rules of envelope version 1 (envelope_rules.hpp).
#include "remote/envelope_rules.hpp"

namespace notifications::detail {

using Clock = std::chrono::system_clock;

namespace {

bool is_hex(char c, bool lower_only) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (!lower_only && c >= 'A' && c <= 'F');
}

}  // namespace

bool is_uuid(std::string_view text) {
  if (text.size() != 36) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-' : !is_hex(text[i], false)) return false;
  }
  return true;
}

bool is_traceparent(std::string_view text) {
  if (text.size() != 55) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool dash = i == 2 || i == 35 || i == 52;
    if (dash ? text[i] != '-' : !is_hex(text[i], true)) return false;
  }
  if (text.substr(0, 2) == "ff") return false;
  if (text.substr(3, 32).find_first_not_of('0') == std::string_view::npos) return false;
  if (text.substr(36, 16).find_first_not_of('0') == std::string_view::npos) return false;
  return true;
}

// ---- RFC 3339

namespace {

// `count` decimal digits at text[pos...], or -1.
int digits(std::string_view text, std::size_t pos, std::size_t count) {
  int value = 0;
  for (std::size_t i = pos; i < pos + count; ++i) {
    if (text[i] < '0' || text[i] > '9') return -1;
    value = value * 10 + (text[i] - '0');
  }
  return value;
}

}  // namespace

std::optional<std::chrono::system_clock::time_point> parse_time(std::string_view text, TimeProblem& problem) {
  using namespace std::chrono;
  static_assert(Clock::period::num == 1 && 1'000'000'000 % Clock::period::den == 0,
                "system_clock ticks must divide a nanosecond");
  constexpr std::int64_t kTicksPerSecond = Clock::period::den;

  problem = TimeProblem::malformed;
  if (text.size() < 20 || text.size() > 30) return std::nullopt;
  if (text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  const int y = digits(text, 0, 4);
  const int mo = digits(text, 5, 2);
  const int d = digits(text, 8, 2);
  const int h = digits(text, 11, 2);
  const int mi = digits(text, 14, 2);
  const int s = digits(text, 17, 2);
  if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || s < 0) return std::nullopt;

  std::size_t pos = 19;
  std::int64_t nanos = 0;
  if (text[pos] == '.') {
    ++pos;
    std::size_t count = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (++count > 9) return std::nullopt;
      nanos = nanos * 10 + (text[pos] - '0');
      ++pos;
    }
    if (count == 0) return std::nullopt;
    for (std::size_t i = count; i < 9; ++i) nanos *= 10;
  }
  if (pos + 1 != text.size() || text[pos] != 'Z') return std::nullopt;

  problem = TimeProblem::no_such_date;
  const year_month_day date{year{y}, month{static_cast<unsigned>(mo)},
                            day{static_cast<unsigned>(d)}};
  if (!date.ok() || h > 23 || mi > 59 || s > 59) return std::nullopt;

  problem = TimeProblem::out_of_range;
  const std::int64_t seconds =
      std::int64_t{sys_days{date}.time_since_epoch().count()} * 86400 + h * 3600 + mi * 60 + s;
  const std::int64_t fraction = nanos / (1'000'000'000 / kTicksPerSecond);
  // seconds * tps + fraction without intermediate overflow: for negative seconds the product
  // alone may leave the range while the sum does not, so it is formed from (seconds + 1).
  Clock::rep ticks = 0;
  if (seconds >= 0) {
    if (__builtin_mul_overflow(seconds, kTicksPerSecond, &ticks) ||
        __builtin_add_overflow(ticks, fraction, &ticks)) {
      return std::nullopt;
    }
  } else if (__builtin_mul_overflow(seconds + 1, kTicksPerSecond, &ticks) ||
             __builtin_add_overflow(ticks, fraction - kTicksPerSecond, &ticks)) {
    return std::nullopt;
  }
  problem = TimeProblem::none;
  return Clock::time_point(Clock::duration(ticks));
}


std::size_t too_deep_at(std::string_view body, std::size_t limit) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

std::optional<Clock::time_point> envelope_time(std::string_view text) {
  TimeProblem problem = TimeProblem::none;
  const auto parsed = parse_time(text, problem);
  if (!parsed || *parsed < kEarliestEnvelopeTime) return std::nullopt;
  return std::chrono::floor<std::chrono::microseconds>(*parsed);
}

}  // namespace notifications::detail
