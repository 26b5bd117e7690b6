#include "notifications/config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iomanip>
#include <optional>
#include <sstream>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "local/ascii.hpp"
#include "notifications/pattern.hpp"
#include "notifications/subject.hpp"
#include "remote/payload_redaction.hpp"
#include "transport/redaction.hpp"

extern char** environ;

namespace notifications {

namespace {

using nlohmann::json;

// Values shown in messages are cut to about this many bytes.
constexpr std::size_t kShownBytes = 64;
// Explanations longer than this are cut: they may quote a long value.
constexpr std::size_t kProblemBytes = 256;
// A config file larger than this is refused.
constexpr std::size_t kMaxFileBytes = 16 * 1024 * 1024;
// `forward` and `subscribe` hold at most this many patterns each (JSON arrays, the
// NOTIFICATIONS_FORWARD / NOTIFICATIONS_SUBSCRIBE lists and validate() alike).
constexpr std::size_t kMaxPatterns = 1024;
// A forward pattern is at most this many bytes. (A subscribe pattern is a subject pattern: the
// subject rules already bound it, and prefix + "." + it, to kMaxSubjectBytes.)
constexpr std::size_t kMaxForwardPatternBytes = 1024;

constexpr std::string_view kKnownKeys =
    "url, app, prefix, forward, subscribe, group, start, queue_capacity, queue_max_bytes, overflow, "
    "block_timeout_ms, batch_size, retry, redelivery, durability, outbox, transport, name, redact";
constexpr std::string_view kKnownOutboxKeys = "path, synchronous, busy_timeout_ms, max_pages";
// A configuration holds at most this many routes (each one is a bridge with its threads).
constexpr std::size_t kMaxRoutes = 256;
constexpr std::string_view kKnownRetryKeys = "initial_ms, max_ms, multiplier, jitter, max_attempts";
constexpr std::string_view kKnownRedeliveryKeys = "window_ms, window_count";

// What each key expects, as it appears after "expected " in messages.
constexpr std::string_view kExpectUrl =
    "a URL \"scheme://...\" (scheme of letters, digits, '+', '-', '.'; e.g. "
    "\"nats://localhost:4222\")";
constexpr std::string_view kExpectToken = "a subject token (letters, digits, '_', '-')";
constexpr std::string_view kExpectGroup =
    "an empty string or a subject token (letters, digits, '_', '-')";
constexpr std::string_view kExpectPrefix =
    "a subject (tokens of letters, digits, '_', '-' separated by single dots)";
constexpr std::string_view kExpectPatternList = "an array of pattern strings";
constexpr std::string_view kExpectSubjectPatternList = "an array of subject pattern strings";
constexpr std::string_view kExpectPattern =
    "a pattern string (e.g. \"order.placed\", \"sql.*\", \"order.>\", \">\")";
constexpr std::string_view kExpectSubjectPattern =
    "a subject pattern string (e.g. \"order.placed\", \"sql.*\", \">\")";
constexpr std::string_view kExpectOverflow =
    "one of \"block\", \"drop_newest\", \"drop_oldest\", \"spill\"";
constexpr std::string_view kExpectName =
    "a route name: a subject token (letters, digits, '_', '-')";
constexpr std::string_view kExpectDurability = "one of \"none\", \"async\", \"sync\"";
constexpr std::string_view kExpectSynchronous = "one of \"normal\", \"full\"";
constexpr std::string_view kExpectOutboxPath = "a non-empty file path string";
constexpr std::string_view kExpectObject = "an object";
constexpr std::string_view kExpectRedactList = "an array of redaction rule strings";
constexpr std::string_view kExpectRedactRule =
    "a redaction rule: segments of ASCII letters, digits, '_', '-', '*' separated by single dots "
    "(e.g. \"password\", \"card.number\", \"*token*\")";

struct IntegerRule {
  std::string_view key;  // key path, e.g. "retry.initial_ms"
  std::int64_t min;
  std::int64_t max;
  // Non-empty: 0 is allowed too (below `min`), and this says what it means, e.g. "no byte bound".
  std::string_view zero_means = {};
};

struct NumberRule {
  std::string_view key;
  double min;
  double max;
};

constexpr IntegerRule kQueueCapacity{"queue_capacity", 1, 10'000'000};
// 0: no byte bound. Otherwise at least a page (a smaller bound would refuse ordinary events) and
// at most 1 TiB (a larger one is no bound at all in practice, and more likely a typo).
constexpr IntegerRule kQueueMaxBytes{"queue_max_bytes", 4096, std::int64_t{1} << 40,
                                     "no byte bound"};
constexpr IntegerRule kBlockTimeout{"block_timeout_ms", 0, 600'000};
constexpr IntegerRule kBatchSize{"batch_size", 1, 100'000};
constexpr IntegerRule kRetryInitial{"retry.initial_ms", 1, 600'000};
constexpr IntegerRule kRetryMax{"retry.max_ms", 1, 3'600'000};  // and >= retry.initial_ms
constexpr IntegerRule kRetryMaxAttempts{"retry.max_attempts", 0, INT_MAX};
constexpr NumberRule kRetryMultiplier{"retry.multiplier", 1.0, 10.0};
constexpr NumberRule kRetryJitter{"retry.jitter", 0.0, 1.0};
constexpr IntegerRule kRedeliveryWindow{"redelivery.window_ms", 1, 86'400'000,
                                        "the default: 2 minutes, or the transport's dedupe window if longer"};
constexpr IntegerRule kRedeliveryWindowCount{"redelivery.window_count", 1, 10'000'000, "no suppression"};

constexpr IntegerRule kOutboxBusyTimeout{"outbox.busy_timeout_ms", 0, 600'000};
constexpr IntegerRule kOutboxMaxPages{"outbox.max_pages", 1, INT32_MAX,
                                      "SQLite's default, no practical bound"};

constexpr OverflowPolicy kOverflowPolicies[] = {OverflowPolicy::block, OverflowPolicy::drop_newest,
                                                OverflowPolicy::drop_oldest, OverflowPolicy::spill};
constexpr Durability kDurabilities[] = {Durability::none, Durability::async, Durability::sync};
constexpr OutboxConfig::Synchronous kSynchronousLevels[] = {OutboxConfig::Synchronous::normal,
                                                            OutboxConfig::Synchronous::full};

// Prepended to every key path in messages while a route of a "routes" array is read or
// validated ("routes[1]."); empty otherwise. Per thread: the loading functions may run on any.
thread_local std::string t_key_prefix;

// Sets t_key_prefix for its lifetime.
class KeyPrefix {
 public:
  explicit KeyPrefix(std::string prefix) : saved_(std::exchange(t_key_prefix, std::move(prefix))) {}
  ~KeyPrefix() { t_key_prefix = std::move(saved_); }
  KeyPrefix(const KeyPrefix&) = delete;
  KeyPrefix& operator=(const KeyPrefix&) = delete;

 private:
  std::string saved_;
};

// `text` cut to at most `limit` bytes on a UTF-8 boundary, marked with "..." when cut.
std::string cut_to(std::string_view text, std::size_t limit) {
  if (text.size() <= limit) return std::string(text);
  std::size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut)) + "...";
}

[[noreturn]] void fail(std::string_view where, std::string_view problem) {
  std::string message(where);
  message += ": ";
  message += problem;
  throw ConfigError(message);
}

// An Error's message without its "[notifications.<id>] " prefix.
std::string_view reason_of(const Error& error) {
  const std::string_view what = error.what();
  const std::string prefix = "[notifications." + error.id() + "] ";
  return what.starts_with(prefix) ? what.substr(prefix.size()) : what;
}

// A URL for messages: user-info redacted (redaction::redact_text), also in the scheme-less form
// "user:password@host".
std::string url_for_display(std::string_view url) {
  if (url.find("://") == std::string_view::npos) {
    const std::size_t at = url.rfind('@');
    if (at != std::string_view::npos) return "***" + std::string(url.substr(at));
  }
  return redaction::redact_text(url);
}

// A value for messages: JSON, credentials redacted, about kShownBytes long at most.
std::string shown_value(const json& value) {
  std::string out;
  redaction::append_redacted_json(value, out, kShownBytes);
  return cut_to(out, kShownBytes);
}

std::string shown_text(std::string_view text) {
  std::string out;
  redaction::append_json_string(out, redaction::redact_text(text), kShownBytes);
  return cut_to(out, kShownBytes);
}

// `text` quoted in full (for file paths, which are never secret).
std::string quoted(std::string_view text) {
  return json(std::string(text)).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string shown_url(std::string_view url) {
  std::string out;
  redaction::append_json_string(out, url_for_display(url), kShownBytes);
  return cut_to(out, kShownBytes);
}

std::string shown_number(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return json(value).dump();
}

std::string key_label(std::string_view path) {
  return "key " + shown_text(t_key_prefix + std::string(path));
}

std::string env_label(std::string_view variable) {
  return "environment variable " + std::string(variable);
}

[[noreturn]] void fail_expected(std::string_view where, std::string_view expected,
                                std::string_view got, std::string_view problem = {}) {
  std::string text = "expected " + std::string(expected) + ", got " + std::string(got);
  if (!problem.empty()) text += ": " + cut_to(problem, kProblemBytes);
  fail(where, text);
}

// `problem` (which may quote `value`, unredacted and cut anywhere) when `value` holds nothing
// that looks like credentials; otherwise a problem that quotes nothing.
std::string problem_for_display(std::string_view value, std::string problem) {
  if (redaction::redact_text(value) == value) return problem;
  return "it looks like a URL with credentials (\"scheme://user:password@host\")";
}

std::string integer_expectation(const IntegerRule& rule) {
  std::string text =
      "an integer from " + std::to_string(rule.min) + " to " + std::to_string(rule.max);
  if (!rule.zero_means.empty()) text = "0 (" + std::string(rule.zero_means) + ") or " + text;
  return text;
}

std::string number_expectation(const NumberRule& rule) {
  return "a number from " + shown_number(rule.min) + " to " + shown_number(rule.max);
}

// A byte of a subject-like text for messages: 'c' when printable ASCII, otherwise its code.
std::string describe_byte(char c) {
  const auto byte = static_cast<unsigned char>(c);
  if (byte >= 0x20 && byte < 0x7F) return std::string("'") + c + "'";
  static constexpr char kHex[] = "0123456789abcdef";
  return std::string("byte 0x") + kHex[byte >> 4] + kHex[byte & 0xF];
}

// ---- the rules, shared by validate(), the JSON parser and the environment ----

template <typename Integer>
void check_integer(std::string_view where, const IntegerRule& rule, Integer value) {
  if (!rule.zero_means.empty() && value == 0) return;
  if (std::cmp_less(value, rule.min) || std::cmp_greater(value, rule.max)) {
    fail_expected(where, integer_expectation(rule), std::to_string(value));
  }
}

void check_number(std::string_view where, const NumberRule& rule, double value) {
  if (!(value >= rule.min && value <= rule.max)) {
    fail_expected(where, number_expectation(rule), shown_number(value));
  }
}

void check_url(std::string_view where, std::string_view url) {
  const std::size_t sep = url.find("://");
  std::string problem;
  if (url.empty()) {
    problem = "it is empty";
  } else if (sep == std::string_view::npos) {
    problem = "it has no \"://\"";
  } else if (sep == 0) {
    problem = "the scheme before \"://\" is empty";
  } else {
    for (const char c : url.substr(0, sep)) {
      const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
      if (!allowed) {
        problem = "the scheme has " + describe_byte(c);
        break;
      }
    }
  }
  if (!problem.empty()) fail_expected(where, kExpectUrl, shown_url(url), problem);
}

// A single subject token: the subject rules, without dots.
void check_token(std::string_view where, std::string_view expected, std::string_view text) {
  std::string problem;
  if (text.find('.') != std::string_view::npos) {
    problem = "it has '.' (a single token has no dots)";
  } else {
    problem = subject_problem(text);
  }
  if (!problem.empty()) {
    fail_expected(where, expected, shown_text(text), problem_for_display(text, problem));
  }
}

void check_group(std::string_view where, std::string_view group) {
  if (!group.empty()) check_token(where, kExpectGroup, group);
}

void check_prefix(std::string_view where, std::string_view prefix) {
  const std::string problem = subject_problem(prefix);
  if (!problem.empty()) {
    fail_expected(where, kExpectPrefix, shown_text(prefix), problem_for_display(prefix, problem));
  }
}

// `count` patterns in one list (`where` names it) are within kMaxPatterns; `what` names the items.
void check_pattern_count(std::string_view where, std::string_view what, std::size_t count) {
  if (count > kMaxPatterns) {
    fail_expected(where, "at most " + std::to_string(kMaxPatterns) + " " + std::string(what),
                  std::to_string(count));
  }
}

// Empty when every dot-separated token of `text` is non-empty; otherwise which one is empty, in
// the words of the subject rules. A forward pattern with an empty token ("order..placed", ".a",
// "a.") never matches an event that can be sent: its subject would break the same rule.
std::string empty_token_problem(std::string_view text) {
  std::size_t number = 1;
  std::size_t begin = 0;
  while (true) {
    const std::size_t dot = text.find('.', begin);
    const std::size_t end = dot == std::string_view::npos ? text.size() : dot;
    if (end == begin) {
      return "token " + std::to_string(number) +
             " is empty (tokens are separated by single dots, with none at either end)";
    }
    if (dot == std::string_view::npos) return {};
    begin = dot + 1;
    ++number;
  }
}

void check_forward_item(std::string_view where, std::string_view text) {
  if (text.size() > kMaxForwardPatternBytes) {
    fail_expected(where, kExpectPattern, shown_text(text),
                  std::to_string(text.size()) + " bytes long (at most " +
                      std::to_string(kMaxForwardPatternBytes) + ")");
  }
  // Before the Pattern parser, which accepts exact names with empty tokens, so that every
  // pattern with one (exact or wildcard) is refused with the same words.
  if (!text.empty()) {
    const std::string problem = empty_token_problem(text);
    if (!problem.empty()) {
      fail_expected(where, kExpectPattern, shown_text(text), problem_for_display(text, problem));
    }
  }
  try {
    const Pattern pattern(text);
  } catch (const InvalidPattern& e) {
    fail_expected(where, kExpectPattern, shown_text(text),
                  problem_for_display(text, std::string(reason_of(e))));
  }
}

void check_redact_count(std::string_view where, std::size_t count) {
  if (count > detail::kMaxRedactRules) {
    fail_expected(where, "at most " + std::to_string(detail::kMaxRedactRules) + " redaction rules",
                  std::to_string(count));
  }
}

void check_redact_item(std::string_view where, std::string_view rule) {
  const std::string problem = detail::redact_rule_problem(rule);
  if (!problem.empty()) {
    fail_expected(where, kExpectRedactRule, shown_text(rule), problem_for_display(rule, problem));
  }
}

// `prefix` must already be valid.
void check_subscribe_item(std::string_view where, std::string_view pattern,
                          std::string_view prefix) {
  std::string problem = subject_pattern_problem(pattern);
  if (problem.empty()) {
    const std::string full = std::string(prefix) + "." + std::string(pattern);
    const std::string full_problem = subject_pattern_problem(full);
    if (!full_problem.empty()) {
      problem = "the subscribed subject " + shown_text(full) +
                " (prefix + \".\" + pattern) is invalid: " + full_problem;
    }
  }
  if (!problem.empty()) {
    fail_expected(where, kExpectSubjectPattern, shown_text(pattern),
                  problem_for_display(pattern, problem));
  }
}

void check_overflow(std::string_view where, OverflowPolicy policy) {
  for (const OverflowPolicy known : kOverflowPolicies) {
    if (policy == known) return;
  }
  fail_expected(where, kExpectOverflow, to_string(policy));
}

void check_transport(std::string_view where, const json& transport) {
  // The value itself is never shown: it may hold credentials.
  if (!transport.is_object()) {
    fail_expected(where, kExpectObject, std::string("a value of type ") + transport.type_name());
  }
}

void check_durability(std::string_view where, Durability durability) {
  for (const Durability known : kDurabilities) {
    if (durability == known) return;
  }
  fail_expected(where, kExpectDurability, to_string(durability));
}

// The outbox keys, and outbox.path against durability and overflow: a file is needed exactly
// when one of them keeps events in it.
void check_outbox(const OutboxConfig& outbox, Durability durability, OverflowPolicy overflow) {
  const std::string where = key_label("outbox.path");
  const bool needs_file = durability != Durability::none || overflow == OverflowPolicy::spill;
  const std::string user = durability != Durability::none
                               ? "durability \"" + to_string(durability) + "\""
                               : "overflow \"spill\"";
  if (outbox.path.empty() && needs_file) {
    fail(where, "missing: " + user +
                    " keeps events in an outbox file until the transport confirmed them (expected " +
                    std::string(kExpectOutboxPath) + ", e.g. \"/var/lib/app/notifications.db\")");
  }
  if (!outbox.path.empty()) {
    if (outbox.path.find('\0') != std::string::npos) {
      fail_expected(where, kExpectOutboxPath, shown_text(outbox.path), "it has a NUL byte");
    }
    if (!needs_file) {
      fail(where, "set to " + shown_text(outbox.path) +
                      ", but it is used only with durability \"async\" or \"sync\" or overflow "
                      "\"spill\", and this configuration has durability \"none\" and overflow \"" +
                      to_string(overflow) + "\" (remove outbox.path, or choose a durability)");
    }
  }
  bool known_level = false;
  for (const OutboxConfig::Synchronous level : kSynchronousLevels) known_level |= outbox.synchronous == level;
  if (!known_level) {
    fail_expected(key_label("outbox.synchronous"), kExpectSynchronous, to_string(outbox.synchronous));
  }
  check_integer(key_label(kOutboxBusyTimeout.key), kOutboxBusyTimeout, outbox.busy_timeout.count());
  check_integer(key_label(kOutboxMaxPages.key), kOutboxMaxPages, outbox.max_pages);
}

// ---- JSON parsing: type checks, then the rules above ----

[[noreturn]] void fail_type(std::string_view path, std::string_view expected, const json& value) {
  fail_expected(key_label(path), expected, shown_value(value));
}

const std::string& read_string(std::string_view path, std::string_view expected,
                               const json& value) {
  if (!value.is_string()) fail_type(path, expected, value);
  return value.get_ref<const std::string&>();
}

std::int64_t read_integer(const IntegerRule& rule, const json& value) {
  if (!value.is_number_integer()) fail_type(rule.key, integer_expectation(rule), value);
  if (value.is_number_unsigned()) {
    const auto number = value.get<std::uint64_t>();
    check_integer(key_label(rule.key), rule, number);
    return static_cast<std::int64_t>(number);
  }
  const auto number = value.get<std::int64_t>();
  check_integer(key_label(rule.key), rule, number);
  return number;
}

double read_number(const NumberRule& rule, const json& value) {
  if (!value.is_number()) fail_type(rule.key, number_expectation(rule), value);
  return value.get<double>();
}

// A pattern list: an array of at most kMaxPatterns strings, its length checked before any item
// is read or copied.
std::vector<std::string> read_pattern_list(std::string_view path, std::string_view expected,
                                           std::string_view item_expected, const json& value) {
  if (!value.is_array()) fail_type(path, expected, value);
  check_pattern_count(key_label(path), "patterns", value.size());
  std::vector<std::string> items;
  items.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string item_path = std::string(path) + "[" + std::to_string(i) + "]";
    items.push_back(read_string(item_path, item_expected, value[i]));
  }
  return items;
}

// The "redact" list: an array of at most kMaxRedactRules strings, each a valid rule, its length
// checked before any item is read or copied.
std::vector<std::string> read_redact_list(const json& value) {
  if (!value.is_array()) fail_type("redact", kExpectRedactList, value);
  check_redact_count(key_label("redact"), value.size());
  std::vector<std::string> rules;
  rules.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string item_path = "redact[" + std::to_string(i) + "]";
    rules.push_back(read_string(item_path, kExpectRedactRule, value[i]));
    check_redact_item(key_label(item_path), rules.back());
  }
  return rules;
}

constexpr std::string_view kExpectStart =
    "\"new\", \"all\", a UTC time \"YYYY-MM-DDTHH:MM:SSZ\" or {\"sequence\": N} with N >= 1";

// "new", "all" or a UTC time; nullopt when `text` is none of them.
std::optional<StartPosition> parse_start(std::string_view text) {
  if (text == "new") return StartPosition::new_only();
  if (text == "all") return StartPosition::all_retained();
  std::tm tm{};
  std::istringstream in{std::string(text)};
  in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
  if (in.fail() || in.get() != 'Z' || in.peek() != std::char_traits<char>::eof()) return std::nullopt;
  const std::time_t seconds = ::timegm(&tm);
  if (seconds < 0) return std::nullopt;
  return StartPosition::from_time(std::chrono::system_clock::from_time_t(seconds));
}

StartPosition read_start(std::string_view where, const json& value) {
  if (value.is_string()) {
    if (auto start = parse_start(value.get_ref<const std::string&>())) return *start;
  } else if (value.is_object() && value.size() == 1 && value.contains("sequence") &&
             value["sequence"].is_number_integer() && value["sequence"].get<std::int64_t>() >= 1) {
    return StartPosition::from_sequence(value["sequence"].get<std::uint64_t>());
  }
  fail_expected(where, kExpectStart, shown_value(value));
}

OverflowPolicy read_overflow(const json& value) {
  const std::string& text = read_string("overflow", kExpectOverflow, value);
  for (const OverflowPolicy policy : kOverflowPolicies) {
    if (text == to_string(policy)) return policy;
  }
  fail_expected(key_label("overflow"), kExpectOverflow, shown_value(value));
}

// Throws on the first key of `object` not listed in `known` (a ", "-separated list). `parent` is
// the object's key path ("" for the top level).
void reject_unknown_keys(const json& object, std::string_view parent, std::string_view known) {
  for (const auto& item : object.items()) {
    const std::string& key = item.key();
    bool found = false;
    for (std::size_t begin = 0; begin <= known.size() && !found;) {
      std::size_t end = known.find(", ", begin);
      if (end == std::string_view::npos) end = known.size();
      found = known.substr(begin, end - begin) == key;
      begin = end + 2;
    }
    if (found) continue;
    const std::string path =
        t_key_prefix + (parent.empty() ? key : std::string(parent) + "." + key);
    const std::string whose = parent.empty() ? "" : " of " + shown_text(t_key_prefix + std::string(parent));
    throw ConfigError("unknown key " + shown_text(path) + " (known keys" + whose + ": " +
                      std::string(known) + ")");
  }
}

const json* member(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

RetryPolicy read_retry(const json& value) {
  if (!value.is_object()) {
    fail_type("retry", "an object with keys " + std::string(kKnownRetryKeys), value);
  }
  reject_unknown_keys(value, "retry", kKnownRetryKeys);
  RetryPolicy retry;
  if (const json* v = member(value, "initial_ms")) {
    retry.initial = std::chrono::milliseconds(read_integer(kRetryInitial, *v));
  }
  if (const json* v = member(value, "max_ms")) {
    retry.max = std::chrono::milliseconds(read_integer(kRetryMax, *v));
  }
  if (const json* v = member(value, "multiplier")) {
    retry.multiplier = read_number(kRetryMultiplier, *v);
  }
  if (const json* v = member(value, "jitter")) retry.jitter = read_number(kRetryJitter, *v);
  if (const json* v = member(value, "max_attempts")) {
    retry.max_attempts = static_cast<int>(read_integer(kRetryMaxAttempts, *v));
  }
  return retry;
}

RedeliveryPolicy read_redelivery(const json& value) {
  if (!value.is_object()) {
    fail_type("redelivery", "an object with keys " + std::string(kKnownRedeliveryKeys), value);
  }
  reject_unknown_keys(value, "redelivery", kKnownRedeliveryKeys);
  RedeliveryPolicy redelivery;
  if (const json* v = member(value, "window_ms")) {
    redelivery.window = std::chrono::milliseconds(read_integer(kRedeliveryWindow, *v));
  }
  if (const json* v = member(value, "window_count")) {
    redelivery.window_count = static_cast<std::size_t>(read_integer(kRedeliveryWindowCount, *v));
  }
  return redelivery;
}

Durability read_durability(const json& value) {
  const std::string& text = read_string("durability", kExpectDurability, value);
  for (const Durability durability : kDurabilities) {
    if (text == to_string(durability)) return durability;
  }
  fail_expected(key_label("durability"), kExpectDurability, shown_value(value));
}

OutboxConfig read_outbox(const json& value) {
  if (!value.is_object()) {
    fail_type("outbox", "an object with keys " + std::string(kKnownOutboxKeys), value);
  }
  reject_unknown_keys(value, "outbox", kKnownOutboxKeys);
  OutboxConfig outbox;
  if (const json* v = member(value, "path")) {
    outbox.path = read_string("outbox.path", kExpectOutboxPath, *v);
    if (outbox.path.empty()) fail_type("outbox.path", kExpectOutboxPath, *v);
  }
  if (const json* v = member(value, "synchronous")) {
    const std::string& text = read_string("outbox.synchronous", kExpectSynchronous, *v);
    bool found = false;
    for (const OutboxConfig::Synchronous level : kSynchronousLevels) {
      if (text == to_string(level)) {
        outbox.synchronous = level;
        found = true;
      }
    }
    if (!found) fail_type("outbox.synchronous", kExpectSynchronous, *v);
  }
  if (const json* v = member(value, "busy_timeout_ms")) {
    outbox.busy_timeout = std::chrono::milliseconds(read_integer(kOutboxBusyTimeout, *v));
  }
  if (const json* v = member(value, "max_pages")) {
    outbox.max_pages = static_cast<std::size_t>(read_integer(kOutboxMaxPages, *v));
  }
  return outbox;
}

// ---- the environment ----

std::string_view trimmed(std::string_view text) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const std::size_t begin = text.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  const std::size_t end = text.find_last_not_of(kSpace);
  return text.substr(begin, end - begin + 1);
}

// Splits a comma-separated variable of at most kMaxPatterns items (counted before any is
// copied); each item is trimmed and checked by `check(where, item)`.
template <typename Check>
std::vector<std::string> env_list(std::string_view variable, std::string_view value,
                                  std::string_view expected, Check check) {
  const auto commas = static_cast<std::size_t>(std::count(value.begin(), value.end(), ','));
  check_pattern_count(env_label(variable), "comma-separated " + std::string(expected),
                      commas + 1);
  std::vector<std::string> items;
  items.reserve(commas + 1);
  std::size_t begin = 0;
  while (true) {
    const std::size_t comma = value.find(',', begin);
    const std::size_t end = comma == std::string_view::npos ? value.size() : comma;
    const std::string_view item = trimmed(value.substr(begin, end - begin));
    const std::string where = env_label(variable) + ": item " + std::to_string(items.size() + 1);
    if (item.empty()) {
      throw ConfigError(where + " is empty (expected comma-separated " + std::string(expected) +
                        ")");
    }
    check(where, item);
    items.emplace_back(item);
    if (comma == std::string_view::npos) break;
    begin = comma + 1;
  }
  return items;
}

// What a file that is not a regular file is, for messages: "a FIFO", "a directory", ...
std::string_view file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

[[noreturn]] void fail_not_regular(std::string_view where, const char* path, mode_t mode) {
  fail(where, quoted(path) + " is " + std::string(file_kind(mode)) +
                  ", not a regular file (expected the path of a JSON config file)");
}

// Closes a descriptor on every way out.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() { ::close(fd); }
};

// The text of the regular file at `path`, at most kMaxFileBytes. Anything else (a FIFO, a
// directory, a device, a socket) is refused before a byte is read, so neither a FIFO without a
// writer nor an endless device can stall start-up: the file is opened non-blocking, and its type
// checked on the opened descriptor (no race with a rename).
std::string read_file(const char* path) {
  const std::string where = env_label("NOTIFICATIONS_CONFIG");
  const int fd = ::open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    // A socket cannot be opened (ENXIO): say what it is rather than "No such device".
    struct stat status {};
    if (::stat(path, &status) == 0 && !S_ISREG(status.st_mode)) {
      fail_not_regular(where, path, status.st_mode);
    }
    fail(where, "cannot open " + quoted(path) + ": " + std::generic_category().message(error));
  }
  const FileDescriptor file{fd};
  struct stat status {};
  if (::fstat(fd, &status) != 0) {
    const int error = errno;
    fail(where, "cannot stat " + quoted(path) + ": " + std::generic_category().message(error));
  }
  if (!S_ISREG(status.st_mode)) fail_not_regular(where, path, status.st_mode);

  // st_size is only a hint (the file may change, /proc files report 0): read to the end, or to
  // one byte past the limit.
  std::string text;
  char buffer[8192];
  while (text.size() <= kMaxFileBytes) {
    const ::ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got < 0) {
      const int error = errno;
      if (error == EINTR) continue;
      fail(where, "cannot read " + quoted(path) + ": " + std::generic_category().message(error));
    }
    if (got == 0) break;
    text.append(buffer, static_cast<std::size_t>(got));
  }
  if (text.size() > kMaxFileBytes) {
    fail(where, quoted(path) + " is larger than " + std::to_string(kMaxFileBytes) +
                    " bytes (is it really the config file?)");
  }
  return text;
}

// One of the names nlohmann's parser gives token types in its messages.
bool is_json_token_name(std::string_view text) {
  for (const std::string_view name :
       {"true literal", "false literal", "null literal", "string literal", "number literal", "'['",
        "'{'", "']'", "'}'", "':'", "','", "<parse error>", "end of input",
        "'[', '{', or a literal", "unknown token", "<uninitialized>"}) {
    if (text == name) return true;
  }
  return false;
}

}  // namespace

std::string to_string(OverflowPolicy policy) {
  switch (policy) {
    case OverflowPolicy::block:
      return "block";
    case OverflowPolicy::drop_newest:
      return "drop_newest";
    case OverflowPolicy::drop_oldest:
      return "drop_oldest";
    case OverflowPolicy::spill:
      return "spill";
  }
  return "OverflowPolicy(" + std::to_string(static_cast<int>(policy)) + ")";
}

std::string to_string(const StartPosition& start) {
  switch (start.kind) {
    case StartPosition::Kind::new_only:
      return "new";
    case StartPosition::Kind::all_retained:
      return "all";
    case StartPosition::Kind::from_time: {
      const std::time_t seconds = std::chrono::system_clock::to_time_t(start.time);
      std::tm tm{};
      ::gmtime_r(&seconds, &tm);
      char text[32];
      std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
      return text;
    }
    case StartPosition::Kind::from_sequence:
      return "sequence " + std::to_string(start.sequence);
  }
  return "new";
}

std::string to_string(Durability durability) {
  switch (durability) {
    case Durability::none:
      return "none";
    case Durability::async:
      return "async";
    case Durability::sync:
      return "sync";
  }
  return "Durability(" + std::to_string(static_cast<int>(durability)) + ")";
}

std::string to_string(OutboxConfig::Synchronous synchronous) {
  switch (synchronous) {
    case OutboxConfig::Synchronous::normal:
      return "normal";
    case OutboxConfig::Synchronous::full:
      return "full";
  }
  return "Synchronous(" + std::to_string(static_cast<int>(synchronous)) + ")";
}

void BridgeConfig::validate() const {
  check_token(key_label("name"), kExpectName, name);
  check_url(key_label("url"), url);
  check_token(key_label("app"), kExpectToken, app);
  check_prefix(key_label("prefix"), prefix);
  check_pattern_count(key_label("forward"), "patterns", forward.size());
  for (std::size_t i = 0; i < forward.size(); ++i) {
    check_forward_item(key_label("forward[" + std::to_string(i) + "]"), forward[i]);
  }
  check_pattern_count(key_label("subscribe"), "patterns", subscribe.size());
  for (std::size_t i = 0; i < subscribe.size(); ++i) {
    check_subscribe_item(key_label("subscribe[" + std::to_string(i) + "]"), subscribe[i], prefix);
  }
  check_group(key_label("group"), group);
  check_integer(key_label(kQueueCapacity.key), kQueueCapacity, queue_capacity);
  check_integer(key_label(kQueueMaxBytes.key), kQueueMaxBytes, queue_max_bytes);
  check_overflow(key_label("overflow"), overflow);
  check_integer(key_label(kBlockTimeout.key), kBlockTimeout, block_timeout.count());
  check_integer(key_label(kBatchSize.key), kBatchSize, batch_size);
  if (batch_size > queue_capacity) {
    fail_expected(key_label(kBatchSize.key),
                  integer_expectation(kBatchSize) + " and at most queue_capacity (" +
                      std::to_string(queue_capacity) + ")",
                  std::to_string(batch_size));
  }
  check_integer(key_label(kRetryInitial.key), kRetryInitial, retry.initial.count());
  check_integer(key_label(kRetryMax.key), kRetryMax, retry.max.count());
  if (retry.max < retry.initial) {
    fail_expected(key_label(kRetryMax.key),
                  integer_expectation(kRetryMax) + " and at least retry.initial_ms (" +
                      std::to_string(retry.initial.count()) + ")",
                  std::to_string(retry.max.count()));
  }
  check_number(key_label(kRetryMultiplier.key), kRetryMultiplier, retry.multiplier);
  check_number(key_label(kRetryJitter.key), kRetryJitter, retry.jitter);
  check_integer(key_label(kRetryMaxAttempts.key), kRetryMaxAttempts, retry.max_attempts);
  check_integer(key_label(kRedeliveryWindow.key), kRedeliveryWindow, redelivery.window.count());
  check_integer(key_label(kRedeliveryWindowCount.key), kRedeliveryWindowCount, redelivery.window_count);
  check_durability(key_label("durability"), durability);
  check_outbox(outbox, durability, overflow);
  check_transport(key_label("transport"), transport);
  check_redact_count(key_label("redact"), redact.size());
  for (std::size_t i = 0; i < redact.size(); ++i) {
    check_redact_item(key_label("redact[" + std::to_string(i) + "]"), redact[i]);
  }
}

namespace {

// `base` with the keys of the object `value` replacing its fields (whole values: a "retry" object
// replaces base.retry). Unknown keys, types and single-value ranges are checked here; the rules
// that span fields, in validate().
BridgeConfig apply_keys(const json& value, BridgeConfig config) {
  reject_unknown_keys(value, "", kKnownKeys);
  if (const json* v = member(value, "name")) config.name = read_string("name", kExpectName, *v);
  if (const json* v = member(value, "url")) {
    // Only scalars are shown: inside an array or object a scheme-less "user:password@host"
    // would not be recognised as a URL and redacted.
    if (!v->is_string()) {
      if (v->is_structured()) {
        fail_expected(key_label("url"), kExpectUrl,
                      std::string("a value of type ") + v->type_name());
      }
      fail_type("url", kExpectUrl, *v);
    }
    config.url = v->get_ref<const std::string&>();
  }
  if (const json* v = member(value, "app")) config.app = read_string("app", kExpectToken, *v);
  if (const json* v = member(value, "prefix")) {
    config.prefix = read_string("prefix", kExpectPrefix, *v);
  }
  if (const json* v = member(value, "forward")) {
    config.forward = read_pattern_list("forward", kExpectPatternList, kExpectPattern, *v);
  }
  if (const json* v = member(value, "subscribe")) {
    config.subscribe =
        read_pattern_list("subscribe", kExpectSubjectPatternList, kExpectSubjectPattern, *v);
  }
  if (const json* v = member(value, "group")) {
    config.group = read_string("group", kExpectGroup, *v);
  }
  if (const json* v = member(value, "start")) config.start = read_start(key_label("start"), *v);
  if (const json* v = member(value, "queue_capacity")) {
    config.queue_capacity = static_cast<std::size_t>(read_integer(kQueueCapacity, *v));
  }
  if (const json* v = member(value, "queue_max_bytes")) {
    config.queue_max_bytes = static_cast<std::size_t>(read_integer(kQueueMaxBytes, *v));
  }
  if (const json* v = member(value, "overflow")) config.overflow = read_overflow(*v);
  if (const json* v = member(value, "block_timeout_ms")) {
    config.block_timeout = std::chrono::milliseconds(read_integer(kBlockTimeout, *v));
  }
  if (const json* v = member(value, "batch_size")) {
    config.batch_size = static_cast<std::size_t>(read_integer(kBatchSize, *v));
  }
  if (const json* v = member(value, "retry")) config.retry = read_retry(*v);
  if (const json* v = member(value, "redelivery")) config.redelivery = read_redelivery(*v);
  if (const json* v = member(value, "durability")) config.durability = read_durability(*v);
  if (const json* v = member(value, "outbox")) config.outbox = read_outbox(*v);
  if (const json* v = member(value, "transport")) {
    check_transport(key_label("transport"), *v);
    config.transport = *v;
  }
  if (const json* v = member(value, "redact")) config.redact = read_redact_list(*v);
  return config;
}

// `message` (a ConfigError's, without its prefix) with `where: ` before it.
[[noreturn]] void rethrow_in(std::string_view where, const ConfigError& error) {
  fail(where, reason_of(error));
}

// The routes of the object `value` ("routes" present): see routes_from_json().
std::vector<BridgeConfig> read_routes(const json& value) {
  const json& list = value.at("routes");
  constexpr std::string_view kExpectRoutes = "a non-empty array of route objects";
  if (!list.is_array()) fail_type("routes", kExpectRoutes, list);
  if (list.empty()) {
    fail_expected(key_label("routes"), kExpectRoutes, "[]",
                  "a configuration needs at least one route (or no \"routes\" key: then the "
                  "object is one route)");
  }
  if (list.size() > kMaxRoutes) {
    fail_expected(key_label("routes"), "at most " + std::to_string(kMaxRoutes) + " routes",
                  std::to_string(list.size()));
  }
  // The defaults: the keys outside "routes", read (types and ranges) on their own, so that their
  // errors name the key where it is written.
  json defaults_json = value;
  defaults_json.erase("routes");
  if (defaults_json.contains("name")) {
    fail(key_label("name"),
         "a route's name goes inside its element of \"routes\" (outside, it would name every "
         "route alike)");
  }
  const BridgeConfig defaults = apply_keys(defaults_json, BridgeConfig{});

  std::vector<BridgeConfig> routes;
  routes.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string label = "routes[" + std::to_string(i) + "]";
    const json& item = list[i];
    if (!item.is_object()) fail_type(label, "a route object (keys: " + std::string(kKnownKeys) + ")", item);
    if (item.contains("routes")) {
      fail(key_label(label + ".routes"), "routes do not nest (a route is one bridge)");
    }
    const KeyPrefix prefix(label + ".");
    BridgeConfig route = apply_keys(item, defaults);
    if (!item.contains("name")) route.name = "route" + std::to_string(i + 1);
    route.validate();
    routes.push_back(std::move(route));
  }
  // Distinct names and outbox files; paths are compared lexically normalised ("./a.db" is
  // "a.db"), not resolved through links.
  for (std::size_t i = 0; i < routes.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      const std::string label = "routes[" + std::to_string(i) + "]";
      if (routes[i].name == routes[j].name) {
        fail(key_label(label + ".name"), "the name " + shown_text(routes[i].name) +
                                             " is also routes[" + std::to_string(j) +
                                             "]'s (route names must be distinct; an unnamed "
                                             "route N, from 1, is named \"route<N>\")");
      }
      if (!routes[i].outbox.path.empty() && !routes[j].outbox.path.empty() &&
          std::filesystem::path(routes[i].outbox.path).lexically_normal() ==
              std::filesystem::path(routes[j].outbox.path).lexically_normal()) {
        fail(key_label(label + ".outbox.path"),
             quoted(routes[i].outbox.path.c_str()) + " is also routes[" + std::to_string(j) +
                 "]'s outbox file (each route needs its own: one writer per database file)");
      }
    }
  }
  return routes;
}

// The JSON value of `text`; a syntax error is a ConfigError naming `source` and the position.
json parse_text(std::string_view text, std::string_view source) {
  json value;
  try {
    value = json::parse(text);
  } catch (const json::exception& e) {
    // nlohmann's message ends with "; last read: '<input>'" for lexer errors: that input may
    // be part of a password, so only the fixed text before it (and any "; expected ...") stays.
    std::string_view what = e.what();
    if (const std::size_t id_end = what.find("] "); id_end != std::string_view::npos) {
      what.remove_prefix(id_end + 2);
    }
    const std::size_t last_read = what.find("; last read: '");
    std::string reason = cut_to(what.substr(0, last_read), kProblemBytes);
    if (last_read != std::string_view::npos) {
      // Kept only when it is one of nlohmann's token names, not text of the input.
      constexpr std::string_view kExpected = "'; expected ";
      const std::size_t expected = what.rfind(kExpected);
      if (expected != std::string_view::npos && expected >= last_read &&
          is_json_token_name(what.substr(expected + kExpected.size()))) {
        reason += what.substr(expected + 1);
      }
    }
    std::string where(source);
    if (const auto* parse_error = dynamic_cast<const json::parse_error*>(&e)) {
      where += ": invalid JSON at byte " + std::to_string(parse_error->byte);
    } else {
      where += ": invalid JSON";
    }
    fail(where, reason);
  }
  return value;
}

// The path NOTIFICATIONS_CONFIG names, or null when it is unset; refuses an empty value.
const char* config_path() {
  const char* path = std::getenv("NOTIFICATIONS_CONFIG");
  if (path != nullptr && *path == '\0') {
    throw ConfigError(env_label("NOTIFICATIONS_CONFIG") +
                      " is empty (unset it, or set it to the path of a JSON file)");
  }
  return path;
}

// The variables that override a single route's keys.
constexpr const char* kOverridingVariables[] = {
    "NOTIFICATIONS_URL",     "NOTIFICATIONS_APP",       "NOTIFICATIONS_PREFIX",
    "NOTIFICATIONS_FORWARD", "NOTIFICATIONS_SUBSCRIBE", "NOTIFICATIONS_GROUP",
    "NOTIFICATIONS_REDACT",
};

// Applies the overriding variables that are set to `config`, then validates it.
void apply_environment(BridgeConfig& config) {
  if (const char* v = std::getenv("NOTIFICATIONS_URL")) {
    config.url = v;
    check_url(env_label("NOTIFICATIONS_URL"), config.url);
  }
  if (const char* v = std::getenv("NOTIFICATIONS_APP")) {
    config.app = v;
    check_token(env_label("NOTIFICATIONS_APP"), kExpectToken, config.app);
  }
  if (const char* v = std::getenv("NOTIFICATIONS_PREFIX")) {
    config.prefix = v;
    check_prefix(env_label("NOTIFICATIONS_PREFIX"), config.prefix);
  }
  if (const char* v = std::getenv("NOTIFICATIONS_FORWARD")) {
    config.forward = env_list("NOTIFICATIONS_FORWARD", v, "patterns", check_forward_item);
  }
  if (const char* v = std::getenv("NOTIFICATIONS_SUBSCRIBE")) {
    const std::string& prefix = config.prefix;
    config.subscribe = env_list("NOTIFICATIONS_SUBSCRIBE", v, "subject patterns",
                                [&prefix](std::string_view where, std::string_view item) {
                                  check_subscribe_item(where, item, prefix);
                                });
  }
  if (const char* v = std::getenv("NOTIFICATIONS_GROUP")) {
    config.group = v;
    check_group(env_label("NOTIFICATIONS_GROUP"), config.group);
  }
  if (const char* v = std::getenv("NOTIFICATIONS_START")) {
    config.start = read_start(env_label("NOTIFICATIONS_START"), json(v));
  }
  if (const char* v = std::getenv("NOTIFICATIONS_REDACT")) {
    // Counted like the JSON list: the count check's message says "rules", not "patterns".
    const auto commas = static_cast<std::size_t>(std::count(v, v + std::strlen(v), ','));
    check_redact_count(env_label("NOTIFICATIONS_REDACT"), commas + 1);
    config.redact = env_list("NOTIFICATIONS_REDACT", v, "redaction rules", check_redact_item);
  }
  config.validate();
}

}  // namespace

BridgeConfig config_from_json(const json& value) {
  if (!value.is_object()) fail_expected("config", "a JSON object", shown_value(value));
  if (value.contains("routes")) {
    fail(key_label("routes"),
         "a configuration with routes describes several bridges: read it with routes_from_json() "
         "(or attach it with configure_routes())");
  }
  BridgeConfig config = apply_keys(value, BridgeConfig{});
  config.validate();
  return config;
}

BridgeConfig config_from_text(std::string_view text, std::string_view source) {
  const json value = parse_text(text, source);
  try {
    return config_from_json(value);
  } catch (const ConfigError& e) {
    rethrow_in(source, e);
  }
}

std::vector<BridgeConfig> routes_from_json(const json& value) {
  if (!value.is_object()) fail_expected("config", "a JSON object", shown_value(value));
  if (!value.contains("routes")) return {config_from_json(value)};
  return read_routes(value);
}

std::vector<BridgeConfig> routes_from_text(std::string_view text, std::string_view source) {
  const json value = parse_text(text, source);
  try {
    return routes_from_json(value);
  } catch (const ConfigError& e) {
    rethrow_in(source, e);
  }
}

BridgeConfig config_from_environment() {
  BridgeConfig config;
  if (const char* path = config_path()) {
    const json value = parse_text(read_file(path), path);
    if (value.is_object() && value.contains("routes")) {
      fail(env_label("NOTIFICATIONS_CONFIG"),
           quoted(path) + " holds \"routes\" (several bridges): attach it with configure_routes() "
                          "(or configure(), which attaches every route), or read it with "
                          "routes_from_environment()");
    }
    try {
      config = config_from_json(value);
    } catch (const ConfigError& e) {
      rethrow_in(path, e);
    }
  }
  apply_environment(config);
  return config;
}

std::vector<BridgeConfig> routes_from_environment() {
  std::vector<BridgeConfig> routes{BridgeConfig{}};
  const char* path = config_path();
  if (path != nullptr) routes = routes_from_text(read_file(path), path);
  if (routes.size() > 1) {
    for (const char* variable : kOverridingVariables) {
      if (std::getenv(variable) == nullptr) continue;
      fail(env_label(variable),
           "set, but NOTIFICATIONS_CONFIG (" + quoted(path) + ") holds " +
               std::to_string(routes.size()) +
               " routes and it could not say which one it means (unset it, and set the key in "
               "the route's object in the file)");
    }
    return routes;
  }
  apply_environment(routes.front());
  return routes;
}

namespace {
constexpr const char* kEnvironmentVariables[] = {
    "NOTIFICATIONS_URL",     "NOTIFICATIONS_CONFIG",    "NOTIFICATIONS_APP", "NOTIFICATIONS_PREFIX",
    "NOTIFICATIONS_FORWARD", "NOTIFICATIONS_SUBSCRIBE", "NOTIFICATIONS_GROUP", "NOTIFICATIONS_REDACT",
};
}  // namespace

std::vector<std::string> unknown_environment_variables() {
  std::vector<std::string> unknown;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view text = *entry;
    const std::string_view name = text.substr(0, text.find('='));
    if (!detail::ascii_lower(name).starts_with("notification")) continue;
    const bool known = std::any_of(std::begin(kEnvironmentVariables), std::end(kEnvironmentVariables),
                                   [&](const char* k) { return name == k; });
    if (!known && unknown.size() < 64) unknown.emplace_back(name);
  }
  return unknown;
}

std::string environment_source() {
  if (std::getenv("NOTIFICATIONS_URL") != nullptr) return "NOTIFICATIONS_URL";
  if (const char* path = std::getenv("NOTIFICATIONS_CONFIG")) return "NOTIFICATIONS_CONFIG (" + std::string(path) + ")";
  return "";
}

}  // namespace notifications
