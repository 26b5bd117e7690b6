// `notifications dlq list|show|replay|purge` (docs/cli_outbox_dlq.md): the dead letters of durable
// handlers in an SQLite durable store file, and their replay through the service's transport.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "notifications/durable.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transport.hpp"
#include "store_output.hpp"

namespace notifications::cli {

namespace {

struct DlqOptions {
  std::string store;
  std::string handler;
  std::uint64_t after = 0;
  std::size_t limit = 100;
  std::vector<std::uint64_t> ids;
  bool all = false;
  double timeout_s = 10;
};

// Opens the existing store file (never creating one). On failure prints why and sets `code`: 4
// when the file does not exist, 2 when it is not a durable store (a wrong path).
std::shared_ptr<DurableStore> open_store(const std::string& path, int& code) {
  SqliteDurableStoreOptions store_options;
  store_options.create = false;
  try {
    return make_sqlite_durable_store(path, store_options);
  } catch (const DurableError& e) {
    std::error_code error;
    code = fail(std::filesystem::exists(path, error) ? kUsage : kNotFound, e.what());
    return nullptr;
  }
}

int no_letter(std::uint64_t id, const std::string& path) {
  return fail(kNotFound, "no dead letter " + std::to_string(id) + " in " + path + " (`notifications dlq list --store " +
                             path + "` shows the ids)");
}

nlohmann::json letter_json(const DeadLetter& letter, bool with_body) {
  nlohmann::json out{{"id", letter.id},
                     {"handler", letter.handler},
                     {"event_id", letter.event_id},
                     {"subject", letter.subject},
                     {"reason", letter.reason},
                     {"last_error", letter.last_error},
                     {"attempts", letter.attempts},
                     {"first_failed_at", format_time(letter.first_failed_at)},
                     {"dead_at", format_time(letter.dead_at)}};
  if (with_body) out["body"] = letter.body;  // invalid UTF-8 is replaced when printed (json_text)
  return out;
}

int run_list(const DlqOptions& own, const GlobalOptions& options) {
  int code = kOk;
  auto store = open_store(own.store, code);
  if (!store) return code;
  const auto letters = store->dead_letters({.handler = own.handler, .after_id = own.after, .limit = own.limit});
  if (options.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const DeadLetter& letter : letters) out.push_back(letter_json(letter, false));
    std::cout << json_text(out) << "\n";
    return kOk;
  }
  if (letters.empty()) {
    std::cout << "no dead letters" << (own.handler.empty() ? "" : " of handler " + own.handler) << " in " << own.store
              << "\n";
    return kOk;
  }
  std::printf("%-6s %-16s %-36s %-12s %-8s %-24s %s\n", "ID", "HANDLER", "EVENT ID", "REASON", "ATTEMPTS", "DEAD AT",
              "LAST ERROR");
  for (const DeadLetter& letter : letters) {
    std::printf("%-6llu %-16s %-36s %-12s %-8u %-24s %s\n", static_cast<unsigned long long>(letter.id),
                one_line(letter.handler, 16).c_str(), letter.event_id.empty() ? "-" : letter.event_id.c_str(),
                letter.reason.c_str(), letter.attempts, format_time(letter.dead_at).c_str(),
                one_line(letter.last_error, 60).c_str());
  }
  if (letters.size() == own.limit) {
    std::printf("(%zu shown; more may follow: --after %llu)\n", letters.size(),
                static_cast<unsigned long long>(letters.back().id));
  }
  return kOk;
}

int run_show(const DlqOptions& own, const GlobalOptions& options) {
  int code = kOk;
  auto store = open_store(own.store, code);
  if (!store) return code;
  const std::uint64_t id = own.ids.front();
  const auto letter = store->dead_letter(id);
  if (!letter) return no_letter(id, own.store);
  if (options.json) {
    std::cout << json_text(letter_json(*letter, true)) << "\n";
    return kOk;
  }
  std::cout << "dead letter " << letter->id << "\n"
            << "  handler:         " << letter->handler << "\n"
            << "  event id:        " << (letter->event_id.empty() ? "(none)" : letter->event_id) << "\n"
            << "  subject:         " << letter->subject << "\n"
            << "  reason:          " << letter->reason << "\n"
            << "  attempts:        " << letter->attempts << "\n"
            << "  first failed at: " << format_time(letter->first_failed_at) << "\n"
            << "  dead at:         " << format_time(letter->dead_at) << "\n"
            << "  last error:      " << letter->last_error << "\n"
            << "  body (" << letter->body.size() << " bytes):\n";
  const auto body = nlohmann::json::parse(letter->body, nullptr, false);
  std::cout << (body.is_discarded() ? json_text(letter->body) : json_text(body, 2)) << "\n";
  return kOk;
}

int run_purge(const DlqOptions& own, const GlobalOptions& options) {
  if (own.ids.empty() && !own.all) {
    return fail(kUsage, "dlq purge: name the dead letters to remove (their ids), or give --all (with --handler H: "
                        "every letter of handler H)");
  }
  if (!own.ids.empty() && own.all) return fail(kUsage, "dlq purge: give dead letter ids or --all, not both");
  if (!own.ids.empty() && !own.handler.empty()) {
    return fail(kUsage, "dlq purge: --handler goes with --all (ids name their letters already)");
  }
  int code = kOk;
  auto store = open_store(own.store, code);
  if (!store) return code;
  std::size_t removed = 0;
  std::vector<std::uint64_t> missing;
  if (own.all) {
    removed = store->purge_dead_letters(own.handler);
  } else {
    for (const std::uint64_t id : own.ids) {
      if (store->remove_dead_letter(id)) {
        ++removed;
      } else {
        missing.push_back(id);
      }
    }
  }
  if (options.json) {
    std::cout << json_text({{"removed", removed}, {"not_found", missing}}) << "\n";
  } else {
    std::cout << "removed " << removed << " dead letter(s) from " << own.store << "\n";
  }
  if (missing.empty()) return kOk;
  std::string ids;
  for (const std::uint64_t id : missing) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
  return fail(kNotFound, "no dead letter " + ids + " in " + own.store + " (the others were removed)");
}

// SIGINT, SIGTERM and SIGHUP, blocked for the whole replay (the transport's threads inherit the
// mask): between taking a letter back and the transport's confirmation, an interrupt must not end
// the process with the letter gone. One that arrives is seen by interrupted() and ends the wait
// early; the letter is then stored again.
sigset_t replay_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

bool interrupted() {
  sigset_t pending;
  sigemptyset(&pending);
  if (::sigpending(&pending) != 0) return false;
  return sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1 ||
         sigismember(&pending, SIGHUP) == 1;
}

// The transport's confirmation of what was published, waited for in slices until `deadline` or
// an interrupt (false).
bool confirmed_before(Transport& transport, std::chrono::steady_clock::time_point deadline) {
  constexpr auto kSlice = std::chrono::milliseconds(200);
  while (!interrupted()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    if (transport.flush(std::min(deadline, now + kSlice))) return true;
  }
  return false;
}

int run_replay(const DlqOptions& own, const GlobalOptions& options) {
  const sigset_t signals = replay_signals();
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const BridgeConfig config = resolve_config(options);  // ConfigError: guarded() says exit 2
  if (config.url.rfind("memory://", 0) == 0 || config.url.rfind("mock://", 0) == 0) {
    return fail(kUsage, "dlq replay publishes the dead letter's message on the service's transport: give --url "
                        "(nats://, tls://, sqlite://) or --config; \"" + redact_url(config.url) +
                        "\" does not leave this process");
  }
  require_existing_file(config);  // sqlite:// never created here: the message would reach no one
  int code = kOk;
  auto store = open_store(own.store, code);
  if (!store) return code;
  const std::uint64_t id = own.ids.front();
  const auto letter = store->dead_letter(id);
  if (!letter) return no_letter(id, own.store);
  if (letter->event_id.empty()) {
    return fail(kFailed, "dead letter " + std::to_string(id) + " has no event id (" + letter->reason +
                             ": the message could not be decoded), so no handler would run it again: `notifications "
                             "dlq show " + std::to_string(id) + "` shows it, `dlq purge " + std::to_string(id) +
                             "` removes it");
  }
  const std::string url = redact_url(config.url);
  std::unique_ptr<Transport> transport;
  try {
    transport = make_transport(TransportConfig{config.url, config.transport});
  } catch (const TransportError& e) {
    return fail(kUsage, e.what());
  }
  try {
    transport->start();
  } catch (const TransportError& e) {
    transport->stop(std::chrono::steady_clock::now() + std::chrono::seconds(1));
    return fail(kUnreachable, std::string(e.what()) + "; dead letter " + std::to_string(id) + " stays as it was");
  }
  // Taken back first: a delivery of the republished message must find the inbox claimable.
  std::optional<DeadLetter> taken;
  try {
    taken = store->take_back_dead_letter(id);
  } catch (const DeadLetterInUse& e) {
    transport->stop(std::chrono::steady_clock::now() + std::chrono::seconds(1));
    return fail(kFailed, e.what());  // the service is replaying it itself: the letter stays as it was
  }
  if (!taken) {
    transport->stop(std::chrono::steady_clock::now() + std::chrono::seconds(1));
    return no_letter(id, own.store);  // removed meanwhile (a purge, or a replay by the service)
  }
  const Message message{taken->subject, taken->body, {}, taken->event_id};
  const PublishResult published = transport->publish(std::span<const Message>(&message, 1));
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(own.timeout_s));
  const bool confirmed = published.published == 1 && confirmed_before(*transport, deadline);
  transport->stop(std::chrono::steady_clock::now() + std::chrono::seconds(2));
  if (!confirmed) {
    // The letter is only in this process now: storing it again is retried (a busy store), and
    // when it still fails it is printed whole, so that it is never lost without a trace.
    std::optional<std::uint64_t> stored;
    std::string store_error;
    for (int attempt = 0; attempt < 5 && !stored; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::seconds(1));
      try {
        stored = store->add_dead_letter(*taken, "");
      } catch (const std::exception& e) {
        store_error = e.what();
      }
    }
    if (!stored) {
      std::cout << json_text(letter_json(*taken, true)) << "\n";
      return fail(kFailed, "dead letter " + std::to_string(id) + " was not confirmed by " + url +
                               " and could not be stored again (" + store_error +
                               "); it is printed above as JSON: keep it, and `notifications publish` its subject "
                               "and body, or store it again, once the store is writable");
    }
    const std::uint64_t again = *stored;
    if (interrupted()) {
      return fail(kFailed, "interrupted before " + url + " confirmed dead letter " + std::to_string(id) +
                               "; it is a dead letter again, now id " + std::to_string(again) +
                               " (if the message got through anyway, the handler may run it once, and the letter stays)");
    }
    return fail(kUnreachable, "could not publish dead letter " + std::to_string(id) + " on " + url + " (" +
                                  (published.error.empty() ? "not confirmed in time" : published.error) +
                                  "); it is a dead letter again, now id " + std::to_string(again));
  }
  if (options.json) {
    std::cout << json_text({{"id", id},
                            {"handler", taken->handler},
                            {"event_id", taken->event_id},
                            {"subject", taken->subject},
                            {"url", url},
                            {"republished", true}})
              << "\n";
  } else {
    std::cout << "dead letter " << id << " taken back and republished on " << taken->subject << " via " << url
              << " (event " << taken->event_id << "): handler " << taken->handler
              << " runs it again; its failures start from 0\n";
  }
  return kOk;
}

}  // namespace

void add_dlq_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  auto own = std::make_shared<DlqOptions>();
  CLI::App* dlq = app.add_subcommand("dlq", "dead letters of durable handlers in an SQLite durable store file "
                                            "(docs/cli_outbox_dlq.md)");
  dlq->require_subcommand(1);
  const auto store_option = [own](CLI::App* command) {
    command->add_option("--store", own->store, "the SQLite durable store file of the service")->required();
  };
  const auto run = [own, &options, &exit_code](int (*body)(const DlqOptions&, const GlobalOptions&)) {
    return [own, &options, &exit_code, body] { exit_code = guarded([&] { return body(*own, options); }); };
  };

  CLI::App* list = dlq->add_subcommand("list", "list dead letters, oldest first");
  store_option(list);
  list->add_option("--handler", own->handler, "only this durable handler's");
  list->add_option("--after", own->after, "only ids above this (paging)");
  list->add_option("--limit", own->limit, "letters at most (1 .. 1000000)")->check(CLI::Range(1, 1000000));
  list->callback(run(run_list));

  CLI::App* show = dlq->add_subcommand("show", "every field of one dead letter, its body included");
  store_option(show);
  show->add_option("id", own->ids, "the dead letter's id")->required()->expected(1);
  show->callback(run(run_show));

  CLI::App* replay = dlq->add_subcommand(
      "replay", "take a dead letter back and republish its message on the transport, for the service to run again");
  store_option(replay);
  replay->add_option("id", own->ids, "the dead letter's id")->required()->expected(1);
  replay->add_option("--timeout", own->timeout_s, "seconds to wait for the transport to confirm (default 10)")
      ->check(CLI::Range(0.1, 3600.0));
  replay->callback(run(run_replay));

  CLI::App* purge = dlq->add_subcommand("purge", "remove dead letters: by id, or --all (of one --handler)");
  store_option(purge);
  purge->add_option("ids", own->ids, "the dead letters' ids");
  purge->add_flag("--all", own->all, "every dead letter (with --handler: of that handler)");
  purge->add_option("--handler", own->handler, "with --all: only this durable handler's");
  purge->callback(run(run_purge));
}

}  // namespace notifications::cli
