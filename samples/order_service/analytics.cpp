#include "analytics.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <notifications/transport.hpp>

namespace analytics {

namespace {

using nlohmann::json;

// The payload's integer `key`, if it has one.
std::optional<std::int64_t> integer_member(const json& payload, const char* key) {
  if (!payload.is_object()) return std::nullopt;
  const auto it = payload.find(key);
  if (it == payload.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<std::int64_t>();
}

std::uint64_t counter(const json& counters, const char* key) {
  const auto it = counters.find(key);
  return it != counters.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

}  // namespace

std::string format_cents(std::int64_t cents) {
  const bool negative = cents < 0;
  // Through unsigned, so that the most negative value has a magnitude too.
  const std::uint64_t magnitude =
      negative ? 0 - static_cast<std::uint64_t>(cents) : static_cast<std::uint64_t>(cents);
  char text[32];
  std::snprintf(text, sizeof text, "%s%llu.%02llu", negative ? "-" : "",
                static_cast<unsigned long long>(magnitude / 100),
                static_cast<unsigned long long>(magnitude % 100));
  return text;
}

std::string describe(const OrderCounts& counts) {
  std::string text = std::to_string(counts.placed) + " placed, " + std::to_string(counts.shipped) +
                     " shipped, " + std::to_string(counts.declined) + " declined, " +
                     std::to_string(counts.out_of_stock) + " out of stock; revenue " +
                     format_cents(counts.revenue_cents);
  if (counts.unpriced != 0) text += "; " + std::to_string(counts.unpriced) + " without total_cents";
  return text;
}

std::string producer_list(const OrderCounts& counts) {
  std::string list;
  for (const auto& entry : counts.producers) {
    list += (list.empty() ? "\"" : ", \"") + entry.first + "\"";
  }
  return list.empty() ? "nobody" : list;
}

// ---- OrderTally ---------------------------------------------------------------------------------

OrderTally::~OrderTally() {
  if (file_ != nullptr) std::fclose(file_);
}

void OrderTally::keep_in(const std::string& path) {
  std::lock_guard lock(mutex_);
  if (file_ != nullptr) throw std::runtime_error("tally: already kept in " + path_);
  std::string text;
  if (std::FILE* in = std::fopen(path.c_str(), "rb")) {
    char chunk[65536];
    std::size_t got;
    while ((got = std::fread(chunk, 1, sizeof chunk, in)) > 0) text.append(chunk, got);
    const bool failed = std::ferror(in) != 0;
    std::fclose(in);
    if (failed) throw std::runtime_error("tally: cannot read " + path);
  } else if (errno != ENOENT) {
    throw std::runtime_error("tally: cannot open " + path + ": " + std::strerror(errno));
  }
  // A line cut short by a kill during its write was not counted by the process that wrote it.
  const std::size_t complete = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
  if (complete != text.size()) {
    std::error_code error;
    std::filesystem::resize_file(path, complete, error);
    if (error) throw std::runtime_error("tally: cannot cut the torn last line of " + path + ": " + error.message());
    text.resize(complete);
  }
  std::size_t line_number = 0;
  for (std::size_t begin = 0; begin < text.size();) {
    const std::size_t end = text.find('\n', begin);
    const std::string_view line(text.data() + begin, end - begin);
    begin = end + 1;
    ++line_number;
    // id, name, outcome, producer; tab-separated.
    std::string_view fields[4];
    std::size_t from = 0, n = 0;
    for (; n < 4 && from <= line.size(); ++n) {
      const std::size_t tab = n < 3 ? line.find('\t', from) : line.size();
      if (tab == std::string_view::npos) break;
      fields[n] = line.substr(from, tab - from);
      from = tab + 1;
    }
    const std::string_view name = n == 4 ? fields[1] : std::string_view();
    const std::string_view outcome = fields[2];
    std::int64_t cents = 0;
    const bool placed_outcome_ok =
        outcome == "failed" || outcome == "unpriced" ||
        std::from_chars(outcome.data(), outcome.data() + outcome.size(), cents).ptr == outcome.data() + outcome.size();
    const bool ok = n == 4 && !fields[0].empty() &&
                    (name == "order.placed" ? !outcome.empty() && placed_outcome_ok
                                            : outcome == "-" && (name == "order.shipped" ||
                                                                 name == "order.payment.charged" ||
                                                                 name == "order.stock.reserved"));
    if (!ok) {
      throw std::runtime_error("tally: " + path + " line " + std::to_string(line_number) + ": not a tally line: \"" +
                               std::string(line) + "\"");
    }
    if (ids_.emplace(fields[0]).second) count(name, outcome, std::string(fields[3]));
  }
  file_ = std::fopen(path.c_str(), "ab");
  if (file_ == nullptr) throw std::runtime_error("tally: cannot append to " + path + ": " + std::strerror(errno));
  path_ = path;
}

void OrderTally::count(std::string_view name, std::string_view outcome, const std::string& producer) {
  if (name == "order.placed") {
    ++counts_.placed;
    if (outcome == "unpriced") {
      ++counts_.unpriced;
    } else if (outcome != "failed") {
      std::int64_t cents = 0;
      std::from_chars(outcome.data(), outcome.data() + outcome.size(), cents);
      counts_.revenue_cents += cents;
    }
  } else if (name == "order.shipped") {
    ++counts_.shipped;
  } else if (name == "order.payment.charged") {
    ++counts_.declined;
  } else if (name == "order.stock.reserved") {
    ++counts_.out_of_stock;
  }
  ++counts_.producers[producer];
}

void OrderTally::record(const notifications::Event& event) {
  if (!event.remote()) return;
  const std::string_view name = event.name();
  const bool failed = event.exception().has_value();
  std::string outcome = "-";
  if (name == "order.placed") {
    if (failed) {
      outcome = "failed";
    } else if (const auto total = integer_member(event.payload(), "total_cents")) {
      outcome = std::to_string(*total);
    } else {
      outcome = "unpriced";
    }
  } else if (name == "order.shipped") {
    if (failed) return;
  } else if (name == "order.payment.charged" || name == "order.stock.reserved") {
    if (!failed) return;
  } else {
    return;
  }
  const std::string& producer = event.origin()->producer;
  std::lock_guard lock(mutex_);
  if (file_ != nullptr) {
    std::string id = event.id();
    if (!ids_.insert(id).second) {  // counted already, by this process or before a restart
      ++counts_.already_counted;
      return;
    }
    const std::string line = id + "\t" + std::string(name) + "\t" + outcome + "\t" + producer + "\n";
    if ((std::fputs(line.c_str(), file_) < 0 || std::fflush(file_) != 0) && !write_failed_) {
      write_failed_ = true;
      std::fprintf(stderr, "analytics: cannot append to the tally file %s: %s (counting goes on in memory)\n",
                   path_.c_str(), std::strerror(errno));
    }
  }
  count(name, outcome, producer);
}

OrderCounts OrderTally::counts() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

// ---- Service ------------------------------------------------------------------------------------

notifications::BridgeConfig service_config(notifications::BridgeConfig base) {
  base.app = "analytics";
  base.forward = {};
  base.subscribe = {"order.>"};
  base.group.clear();
  return base;
}

Service::Service(const notifications::BridgeConfig& base, const ServiceOptions& options)
    : tally_(std::make_shared<OrderTally>()) {
  notifications::BridgeConfig config = service_config(base);
  config.group = options.group;
  config.validate();  // before creating a transport, so a bad config is reported as such
  if (!options.tally_file.empty()) tally_->keep_in(options.tally_file);
  subscription_ = notifier_.subscribe(
      "order.>", [tally = tally_](const notifications::Event& event) { tally->record(event); });
  std::shared_ptr<notifications::Transport> transport =
      notifications::make_transport(notifications::TransportConfig{config.url, config.transport});
  bridge_ = std::make_unique<notifications::Bridge>(notifier_, std::move(transport),
                                                    std::move(config));
  bridge_->start();
}

notifications::ShutdownReport Service::shutdown(std::chrono::milliseconds timeout) {
  return bridge_->shutdown(timeout);
}

// ---- helpers ------------------------------------------------------------------------------------

std::string health_summary(const notifications::Bridge& bridge) {
  const json health = bridge.health();
  const json& counters = health.at("counters");
  std::uint64_t dropped = 0;
  std::string reasons;
  for (const auto& [reason, count] : counters.at("dropped").items()) {
    const std::uint64_t n = count.is_number_unsigned() ? count.get<std::uint64_t>() : 0;
    if (n == 0) continue;
    dropped += n;
    reasons += (reasons.empty() ? "" : ", ") + reason + " " + std::to_string(n);
  }
  std::string line = "\"" + health.value("app", std::string()) + "\" via " +
                     health.value("url", std::string()) + ": accepted " +
                     std::to_string(counter(counters, "accepted")) + ", sent " +
                     std::to_string(counter(counters, "sent")) + ", dropped " +
                     std::to_string(dropped);
  if (!reasons.empty()) line += " (" + reasons + ")";
  line += ", received " + std::to_string(counter(counters, "received"));
  return line;
}

bool in_process_only(std::string_view url) {
  const std::size_t colon = url.find(':');
  if (colon == std::string_view::npos) return false;
  std::string scheme(url.substr(0, colon));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return scheme == "memory";
}

}  // namespace analytics
