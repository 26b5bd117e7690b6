// `notifications outbox list|replay` (docs/cli_outbox_dlq.md): the rows an SQLite outbox file
// holds, and sending the rows of a stranded file through the configured transport.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "notifications/bridge.hpp"
#include "notifications/notifier.hpp"
#include "notifications/sqlite.hpp"
#include "store_output.hpp"

namespace notifications::cli {

namespace {

struct OutboxOptions {
  std::string path;
  std::uint64_t after = 0;
  std::size_t limit = 100;
  double timeout_s = 30;
};

// What a command was told, or the resolved configuration's outbox.path. Empty: neither named one.
std::string outbox_path(const OutboxOptions& own, const GlobalOptions& options) {
  if (!own.path.empty()) return own.path;
  return resolve_config(options).outbox.path;
}

const char* const kNoPath =
    "no outbox file: give --outbox PATH, or a --config (or NOTIFICATIONS_CONFIG) whose outbox.path names it";

// The exit code for an OutboxError about `path`: 4 when the file does not exist, 2 otherwise (it
// exists but is not an outbox: a wrong path).
int outbox_error_code(const std::string& path) {
  std::error_code error;
  return std::filesystem::exists(path, error) ? kUsage : kNotFound;
}

// Rows in the file now (paged: a file may hold millions).
std::size_t count_rows(const std::string& path) {
  std::size_t count = 0;
  std::uint64_t after = 0;
  while (true) {
    const auto rows = list_outbox(path, 10000, after);
    count += rows.size();
    if (rows.size() < 10000) return count;
    after = rows.back().id;
  }
}

nlohmann::json row_json(const OutboxRow& row) {
  nlohmann::json out{{"id", row.id},
                     {"event_id", row.event_id},
                     {"name", row.name},
                     {"time", format_time(row.time)},
                     {"duration_us", row.duration.count()}};
  out["payload"] = nlohmann::json::parse(row.payload, nullptr, false);
  if (out["payload"].is_discarded()) out["payload"] = row.payload;
  if (!row.traceparent.empty()) out["traceparent"] = row.traceparent;
  if (!row.attributes.empty()) {
    const nlohmann::json attributes = nlohmann::json::parse(row.attributes, nullptr, false);
    if (attributes.is_object()) {
      if (attributes.contains("context")) out["context"] = attributes["context"];
      if (attributes.contains("tags")) out["tags"] = attributes["tags"];
    }
  }
  if (row.exception) out["exception"] = {{"type", row.exception->first}, {"message", row.exception->second}};
  return out;
}

int run_list(const OutboxOptions& own, const GlobalOptions& options) {
  const std::string path = outbox_path(own, options);
  if (path.empty()) return fail(kUsage, kNoPath);
  std::vector<OutboxRow> rows;
  try {
    rows = list_outbox(path, own.limit, own.after);
  } catch (const OutboxError& e) {
    return fail(outbox_error_code(path), e.what());
  }
  if (options.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const OutboxRow& row : rows) out.push_back(row_json(row));
    std::cout << json_text(out) << "\n";
    return kOk;
  }
  if (rows.empty()) {
    std::cout << "no rows" << (own.after != 0 ? " after id " + std::to_string(own.after) : std::string()) << " in "
              << path << "\n";
    return kOk;
  }
  std::printf("%-8s %-24s %-28s %-36s %s\n", "ID", "TIME", "NAME", "EVENT ID", "PAYLOAD");
  for (const OutboxRow& row : rows) {
    std::printf("%-8llu %-24s %-28s %-36s %s\n", static_cast<unsigned long long>(row.id), format_time(row.time).c_str(),
                one_line(row.name, 28).c_str(), row.event_id.c_str(), one_line(row.payload, 60).c_str());
  }
  if (rows.size() == own.limit) {
    std::printf("(%zu rows shown; more may follow: --after %llu)\n", rows.size(),
                static_cast<unsigned long long>(rows.back().id));
  }
  return kOk;
}

int run_replay(const OutboxOptions& own, const GlobalOptions& options) {
  BridgeConfig config = resolve_config(options);  // ConfigError: main's handler says exit 2
  const std::string path = own.path.empty() ? config.outbox.path : own.path;
  if (path.empty()) return fail(kUsage, kNoPath);
  if (config.url.rfind("memory://", 0) == 0 || config.url.rfind("mock://", 0) == 0) {
    return fail(kUsage, "outbox replay sends the rows to the service's transport: give --url (nats://, tls://, "
                        "sqlite://) or --config; \"" + redact_url(config.url) + "\" does not leave this process");
  }
  require_existing_file(config);  // sqlite:// never created here: what went there would reach no one
  std::size_t initial = 0;
  try {
    initial = count_rows(path);  // also refuses a missing file, or one that is not an outbox
  } catch (const OutboxError& e) {
    return fail(outbox_error_code(path), e.what());
  }
  const std::string url = redact_url(config.url);
  const auto report = [&](std::size_t sent, std::size_t left) {
    if (options.json) {
      std::cout << json_text({{"outbox", path}, {"url", url}, {"sent", sent}, {"left", left}}) << "\n";
    } else if (left == 0) {
      std::cout << "sent " << sent << " event(s) from " << path << " to " << url << "; the file is empty\n";
    } else {
      std::cout << "sent " << sent << " event(s) from " << path << " to " << url << "; " << left
                << " left in the file\n";
    }
  };
  if (initial == 0) {
    report(0, 0);
    return kOk;
  }
  config.outbox.path = path;
  if (config.durability == Durability::none) config.durability = Durability::sync;
  config.subscribe.clear();  // it only sends: nothing to receive
  Notifier notifier;         // nothing is instrumented on it: the bridge sends only the file's rows
  std::unique_ptr<Bridge> bridge;
  try {
    bridge = make_bridge(notifier, config);
  } catch (const OutboxError& e) {
    if (std::string(e.what()).find("in use") != std::string::npos) {
      return fail(kFailed, "outbox file \"" + path +
                               "\" is in use by a running outbox (a service's Bridge), which sends its rows itself: "
                               "stop it first to replay the file here, or let it send them");
    }
    return fail(outbox_error_code(path), e.what());
  } catch (const ConfigError& e) {
    return fail(kUsage, e.what());
  } catch (const TransportError& e) {
    return fail(kUsage, e.what());
  }
  try {
    bridge->start();
  } catch (const TransportError& e) {
    bridge->shutdown(std::chrono::seconds(2));
    return fail(kUnreachable, std::string(e.what()) + "; the " + std::to_string(count_rows(path)) +
                                  " event(s) stay in " + path + " (nothing was sent)");
  }
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(own.timeout_s));
  // Done when the file is empty and what was handed to the transport is confirmed. Whether the
  // file is empty is one row read (the first by id), not a count: a stranded file may hold millions.
  while (true) {
    if (list_outbox(path, 1).empty() && bridge->flush(std::chrono::milliseconds(500))) break;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const ShutdownReport shutdown = bridge->shutdown(std::chrono::seconds(5));
  // Rows the transport refused for good (too large, rejected) leave the file as dropped: not sent.
  std::size_t dropped = 0;
  std::string reasons;
  const nlohmann::json health = bridge->health();  // named: a loop over a temporary's member dangles
  for (const auto& [reason, count] : health["counters"]["dropped"].items()) {
    if (!count.is_number_unsigned() || count.get<std::size_t>() == 0) continue;
    dropped += count.get<std::size_t>();
    reasons += (reasons.empty() ? "" : ", ") + reason + " " + std::to_string(count.get<std::size_t>());
  }
  bridge.reset();
  const std::size_t left = count_rows(path);
  const std::size_t gone = initial > left ? initial - left : 0;
  const std::size_t sent = gone > dropped ? gone - dropped : 0;
  report(sent, left);
  if (dropped > 0) {
    return fail(kFailed, std::to_string(dropped) + " event(s) of " + path + " were refused by " + url +
                             " for good and dropped (" + reasons + "): `notifications health --json` and the "
                             "service's logs say why; they are not in the file any more");
  }
  if (left == 0) return kOk;
  return fail(kUnreachable, "the transport " + url + " did not confirm " + std::to_string(left) + " event(s) within " +
                                std::to_string(own.timeout_s) + " s; they stay in " + path +
                                " for the next replay or the service's next start (" + shutdown.detail + ")");
}

}  // namespace

void add_outbox_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  auto own = std::make_shared<OutboxOptions>();
  CLI::App* outbox = app.add_subcommand("outbox", "the events an SQLite outbox file holds (docs/cli_outbox_dlq.md)");
  outbox->require_subcommand(1);

  CLI::App* list = outbox->add_subcommand("list", "list the rows of an outbox file, oldest first");
  list->add_option("--outbox", own->path, "the outbox file (default: outbox.path of the configuration)");
  list->add_option("--after", own->after, "only rows with ids above this (paging)");
  list->add_option("--limit", own->limit, "rows at most (1 .. 1000000)")->check(CLI::Range(1, 1000000));
  list->callback([own, &options, &exit_code] { exit_code = guarded([&] { return run_list(*own, options); }); });

  CLI::App* replay = outbox->add_subcommand(
      "replay", "send the rows of a stranded outbox file through the transport, with their event ids, then exit");
  replay->add_option("--outbox", own->path, "the outbox file (default: outbox.path of the configuration)");
  replay->add_option("--timeout", own->timeout_s, "seconds to wait for the transport to confirm every row (default 30)")
      ->check(CLI::Range(0.1, 86400.0));
  replay->callback([own, &options, &exit_code] { exit_code = guarded([&] { return run_replay(*own, options); }); });
}

}  // namespace notifications::cli
