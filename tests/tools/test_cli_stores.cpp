// The notifications command's `outbox` and `dlq` commands (tools/cli/cmd_outbox.cpp, cmd_dlq.cpp;
// docs/cli_outbox_dlq.md), run as a program against real SQLite files, a real nats-server and the
// sqlite:// transport: what they print (text and --json), their exit codes for bad arguments,
// missing files and ids and an unreachable server, outbox replay (every row, in order, with its
// event id), and dlq replay end to end (the service's handler runs once more and succeeds; another
// handler that already did its work does not run again). Every wait is bounded; nothing asserts
// speed. Each test has its own temporary folder.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "child_process.hpp"
#include "notifications/bridge.hpp"
#include "notifications/durable.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifier.hpp"
#include "notifications/outbox.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transport.hpp"
#include "remote/bridge_test_support.hpp"
#include "transports/sqlite/sqlite_test_support.hpp"
#include "wait.hpp"
#if __has_include("nats_server.hpp")
#include "nats_server.hpp"
#define CLI_TESTS_HAVE_NATS 1
#endif

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::wait_until;

namespace {

using Clock = std::chrono::steady_clock;

class TempDir : public test_support::TempDir {
 public:
  TempDir() : test_support::TempDir("cli") {}
};

// Runs the built command with `args`; `env` entries ("KEY=value") are added to its environment.
// Output is stdout and stderr together.
test_support::ChildResult cli(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  std::vector<std::string> argv{NOTIFICATIONS_CLI};
  argv.insert(argv.end(), args.begin(), args.end());
  // The URL of the test's own environment is not used: memory:// unless the case gives a URL or a
  // configuration file.
  std::vector<std::string> environment = env;
  const bool has_url = std::any_of(env.begin(), env.end(), [](const std::string& e) {
    return e.rfind("NOTIFICATIONS_URL=", 0) == 0 || e.rfind("NOTIFICATIONS_CONFIG=", 0) == 0;
  });
  if (!has_url) environment.push_back("NOTIFICATIONS_URL=memory://");
  return test_support::run_child(argv, environment, 60s);
}

// The first line of `output` that is a JSON document (the library may log on stderr around it).
json json_in(const std::string& output) {
  std::size_t start = 0;
  while (start < output.size()) {
    std::size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    const std::string line = output.substr(start, end - start);
    if (!line.empty() && (line[0] == '[' || line[0] == '{')) {
      json parsed = json::parse(line, nullptr, false);
      if (!parsed.is_discarded()) return parsed;
    }
    start = end + 1;
  }
  return json();
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The URL of a sqlite:// events file as a running system has it: created by a transport that
// started once (the replays refuse a file that does not exist).
std::string existing_sqlite_url(const TempDir& dir) {
  const std::string url = "sqlite://" + dir.file("events.db");
  auto transport = n::make_transport({url, json::object()});
  transport->start();
  transport->stop(Clock::now() + 5s);
  return url;
}

// An outbox file holding `count` events named order.e0, order.e1, ..., as a service whose
// transport never confirmed them leaves it. Returns their rows.
std::vector<n::OutboxRow> stranded_outbox(const std::string& path, int count) {
  n::BridgeConfig config = test_support::config_for("cli-outbox");
  config.durability = n::Durability::sync;
  config.outbox.path = path;
  {
    auto outbox = n::make_sqlite_outbox(config);
    for (int i = 0; i < count; ++i) {
      n::OutboxEvent event;
      std::string name = "order.e";
      name += std::to_string(i);
      event.set_text(name, json{{"n", i}}.dump(), "");
      event.id_sequence = 100 + static_cast<std::uint64_t>(i);
      EXPECT_EQ(outbox->push(std::move(event), n::OverflowPolicy::block, 1s, nullptr, nullptr),
                n::Outbox::Push::accepted);
    }
  }
  return n::list_outbox(path);
}

std::vector<std::string> event_ids(const std::vector<n::OutboxRow>& rows) {
  std::vector<std::string> ids;
  for (const auto& row : rows) ids.push_back(row.event_id);
  return ids;
}

// What a subscriber saw: Message ids and envelope names, in arrival order. Shared with the
// transport's handler, so that it outlives an early return of the test.
struct Seen {
  std::mutex mutex;
  std::vector<std::string> ids;
  std::vector<std::string> envelope_ids;
  std::vector<std::string> names;
  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex);
    return ids.size();
  }
};

std::uint64_t subscribe_seen(n::Transport& transport, const std::string& pattern, const std::shared_ptr<Seen>& seen,
                             n::DeliveryOptions options = {}) {
  return transport.subscribe(pattern, options, [seen](n::Delivery&& delivery) {
    const n::DecodeResult decoded = n::decode_envelope(delivery.message.body);
    {
      std::lock_guard<std::mutex> lock(seen->mutex);
      seen->ids.push_back(delivery.message.id);
      seen->envelope_ids.push_back(decoded ? decoded.envelope->id : "");
      seen->names.push_back(decoded ? decoded.envelope->name : "");
    }
    if (delivery.settle) delivery.settle(n::Settle::ack);
  });
}

// ---- outbox list

TEST(CliOutbox, ListPrintsEveryRowAsTextAndAsJsonAndPages) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  const auto rows = stranded_outbox(path, 3);
  ASSERT_EQ(rows.size(), 3u);

  const auto text = cli({"outbox", "list", "--outbox", path});
  ASSERT_TRUE(text.exited && text.exit_code == 0) << text.describe();
  for (const auto& row : rows) {
    EXPECT_TRUE(contains(text.output, row.name)) << text.output;
    EXPECT_TRUE(contains(text.output, row.event_id)) << text.output;
  }
  EXPECT_TRUE(contains(text.output, R"({"n":2})")) << text.output;

  const auto listed = cli({"--json", "outbox", "list", "--outbox", path});
  ASSERT_TRUE(listed.exited && listed.exit_code == 0) << listed.describe();
  const json array = json_in(listed.output);
  ASSERT_TRUE(array.is_array()) << listed.output;
  ASSERT_EQ(array.size(), 3u) << listed.output;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(array[i]["id"], rows[i].id);
    EXPECT_EQ(array[i]["event_id"], rows[i].event_id);
    EXPECT_EQ(array[i]["name"], rows[i].name);
    EXPECT_EQ(array[i]["payload"], (json{{"n", static_cast<int>(i)}}));
  }

  const auto page = cli({"--json", "outbox", "list", "--outbox", path, "--after", std::to_string(rows[0].id),
                         "--limit", "1"});
  ASSERT_TRUE(page.exited && page.exit_code == 0) << page.describe();
  const json one = json_in(page.output);
  ASSERT_EQ(one.size(), 1u) << page.output;
  EXPECT_EQ(one[0]["event_id"], rows[1].event_id);
}

TEST(CliOutbox, ListRefusesBadArgumentsMissingFilesAndFilesThatAreNoOutboxNamingThem) {
  TempDir dir;
  const std::string missing = dir.file("missing.db");
  const auto gone = cli({"outbox", "list", "--outbox", missing});
  EXPECT_TRUE(gone.exited && gone.exit_code == 4) << gone.describe();
  EXPECT_TRUE(contains(gone.output, missing)) << gone.output;
  EXPECT_FALSE(std::filesystem::exists(missing)) << "never created";

  const std::string store = dir.file("durable.db");
  n::make_sqlite_durable_store(store);
  const auto other = cli({"outbox", "list", "--outbox", store});
  EXPECT_TRUE(other.exited && other.exit_code == 2) << other.describe();
  EXPECT_TRUE(contains(other.output, "no outbox table")) << other.output;

  const auto no_path = cli({"outbox", "list"});
  EXPECT_TRUE(no_path.exited && no_path.exit_code == 2) << no_path.describe();
  EXPECT_TRUE(contains(no_path.output, "--outbox")) << no_path.output;

  const auto bad_limit = cli({"outbox", "list", "--outbox", missing, "--limit", "0"});
  EXPECT_TRUE(bad_limit.exited && bad_limit.exit_code == 2) << bad_limit.describe();
  EXPECT_TRUE(contains(bad_limit.output, "--limit")) << bad_limit.output;

  const auto unknown = cli({"outbox", "list", "--outbox", missing, "--colour"});
  EXPECT_TRUE(unknown.exited && unknown.exit_code == 2) << unknown.describe();
  EXPECT_TRUE(contains(unknown.output, "--colour")) << unknown.output;

  const auto no_command = cli({"outbox"});
  EXPECT_TRUE(no_command.exited && no_command.exit_code == 2) << no_command.describe();
}

TEST(CliOutbox, ListAndReplayTakeTheFileAndTheUrlFromTheConfiguration) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  const auto rows = stranded_outbox(path, 2);
  const std::string events = dir.file("events.db");
  const std::string config = dir.file("service.json");
  {
    std::ofstream out(config);
    out << json{{"url", "sqlite://" + events}, {"durability", "sync"}, {"outbox", {{"path", path}}}}.dump();
  }
  const std::vector<std::string> env{"NOTIFICATIONS_CONFIG=" + config};
  const auto listed = cli({"--json", "--config", config, "outbox", "list"}, env);
  ASSERT_TRUE(listed.exited && listed.exit_code == 0) << listed.describe();
  ASSERT_EQ(json_in(listed.output).size(), 2u) << listed.output;
  EXPECT_EQ(json_in(listed.output)[1]["event_id"], rows[1].event_id);

  ASSERT_EQ(existing_sqlite_url(dir), "sqlite://" + events);
  const auto replay = cli({"--config", config, "outbox", "replay"}, env);
  ASSERT_TRUE(replay.exited && replay.exit_code == 0) << replay.describe();
  EXPECT_TRUE(contains(replay.output, "sent 2 event(s)")) << replay.output;
  EXPECT_TRUE(contains(replay.output, "sqlite://" + events)) << "sent to the configuration's URL: " << replay.output;
  EXPECT_TRUE(n::list_outbox(path).empty());
}

// ---- outbox replay

TEST(CliOutbox, ReplayIntoSqliteSendsEveryRowInOrderWithItsEventIdAndEmptiesTheFile) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  const auto rows = stranded_outbox(path, 5);
  ASSERT_EQ(rows.size(), 5u);
  const std::string url = existing_sqlite_url(dir);

  const auto replay = cli({"--url", url, "outbox", "replay", "--outbox", path}, {"NOTIFICATIONS_URL=" + url});
  ASSERT_TRUE(replay.exited && replay.exit_code == 0) << replay.describe();
  EXPECT_TRUE(contains(replay.output, "sent 5 event(s)")) << replay.output;
  EXPECT_TRUE(n::list_outbox(path).empty());

  auto reader = n::make_transport({url, json::object()});
  reader->start();
  auto seen = std::make_shared<Seen>();
  n::DeliveryOptions from_start;
  from_start.start = n::StartPosition::all_retained();
  subscribe_seen(*reader, "notifications.>", seen, from_start);
  EXPECT_TRUE(wait_until([&] { return seen->size() >= 5; }, 20s)) << seen->size();
  reader->stop(Clock::now() + 5s);
  std::lock_guard<std::mutex> lock(seen->mutex);
  EXPECT_EQ(seen->ids, event_ids(rows)) << "the same ids, in the rows' order";
  EXPECT_EQ(seen->envelope_ids, event_ids(rows));
  EXPECT_EQ(seen->names, (std::vector<std::string>{"order.e0", "order.e1", "order.e2", "order.e3", "order.e4"}));
}

TEST(CliOutbox, ReplayOfAnEmptyFileSendsNothingAndMemoryUrlsAreRefused) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  stranded_outbox(path, 0);
  const std::string url = existing_sqlite_url(dir);
  const auto empty = cli({"--json", "--url", url, "outbox", "replay", "--outbox", path}, {"NOTIFICATIONS_URL=" + url});
  ASSERT_TRUE(empty.exited && empty.exit_code == 0) << empty.describe();
  EXPECT_EQ(json_in(empty.output)["sent"], 0) << empty.output;

  stranded_outbox(path, 2);
  const auto memory = cli({"outbox", "replay", "--outbox", path});  // the environment says memory://
  EXPECT_TRUE(memory.exited && memory.exit_code == 2) << memory.describe();
  EXPECT_TRUE(contains(memory.output, "--url")) << memory.output;
  EXPECT_EQ(n::list_outbox(path).size(), 2u);
}

TEST(CliOutbox, ReplayIsRefusedWhileAServiceHoldsTheOutboxAndTheRowsStay) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  const auto rows = stranded_outbox(path, 3);
  n::BridgeConfig config = test_support::config_for("cli-service");
  config.durability = n::Durability::sync;
  config.outbox.path = path;
  auto running = n::make_sqlite_outbox(config);  // the service's outbox, holding the file's lock
  const std::string url = existing_sqlite_url(dir);
  const auto refused = cli({"--url", url, "outbox", "replay", "--outbox", path}, {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(refused.exited && refused.exit_code == 1) << refused.describe();
  EXPECT_TRUE(contains(refused.output, "stop it first")) << refused.output;
  running.reset();
  EXPECT_EQ(event_ids(n::list_outbox(path)), event_ids(rows));
}

#ifdef CLI_TESTS_HAVE_NATS

TEST(CliOutbox, ReplayIntoNatsSendsEveryRowInOrderWithItsEventId) {
  TempDir dir;
  test_support::NatsServer server;
  const std::string path = dir.file("outbox.db");
  const auto rows = stranded_outbox(path, 6);
  ASSERT_EQ(rows.size(), 6u);
  auto subscriber = n::make_transport({server.url(), json::object()});
  subscriber->start();
  auto seen = std::make_shared<Seen>();
  subscribe_seen(*subscriber, "notifications.>", seen);
  ASSERT_TRUE(subscriber->flush(Clock::now() + 5s));  // the subscription reached the server

  // With NATS headers on (off by default), so that each id shows as Nats-Msg-Id too.
  const std::string url = server.url() + "?headers=true";
  const auto replay = cli({"--json", "--url", url, "outbox", "replay", "--outbox", path}, {"NOTIFICATIONS_URL=" + url});
  ASSERT_TRUE(replay.exited && replay.exit_code == 0) << replay.describe();
  const json report = json_in(replay.output);
  EXPECT_EQ(report["sent"], 6) << replay.output;
  EXPECT_EQ(report["left"], 0) << replay.output;
  EXPECT_TRUE(n::list_outbox(path).empty());
  EXPECT_TRUE(wait_until([&] { return seen->size() >= 6; }, 20s)) << seen->size();
  subscriber->stop(Clock::now() + 5s);
  std::lock_guard<std::mutex> lock(seen->mutex);
  EXPECT_EQ(seen->ids, event_ids(rows)) << "Nats-Msg-Id: the same ids, in the rows' order";
  EXPECT_EQ(seen->envelope_ids, event_ids(rows));
}

TEST(CliOutbox, ReplayToAnUnreachableServerExits3AndKeepsEveryRow) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  const auto rows = stranded_outbox(path, 4);
  const std::string url = "nats://127.0.0.1:" + std::to_string(test_support::free_tcp_port());
  const auto replay = cli({"--url", url, "outbox", "replay", "--outbox", path, "--timeout", "2"},
                          {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(replay.exited && replay.exit_code == 3) << replay.describe();
  EXPECT_TRUE(contains(replay.output, "stay in " + path)) << replay.output;
  EXPECT_EQ(event_ids(n::list_outbox(path)), event_ids(rows)) << "every row kept, in order";
}

#endif  // CLI_TESTS_HAVE_NATS

// ---- dlq list, show, purge

n::DeadLetter letter(const std::string& handler, const std::string& event_id, const std::string& error) {
  n::DeadLetter letter;
  letter.handler = handler;
  letter.event_id = event_id;
  letter.subject = "notifications.order.placed";
  letter.body = R"({"id":")" + event_id + R"(","name":"order.placed"})";
  letter.reason = "max_attempts";
  letter.last_error = error;
  letter.attempts = 5;
  letter.first_failed_at = std::chrono::system_clock::now() - 1min;
  letter.dead_at = std::chrono::system_clock::now();
  return letter;
}

TEST(CliDlq, ListShowAndPurgeDeadLettersAsTextAndJson) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  std::uint64_t b1 = 0;
  std::uint64_t s1 = 0;
  std::uint64_t b2 = 0;
  {
    auto store = n::make_sqlite_durable_store(path);
    b1 = store->add_dead_letter(letter("billing", "e1", "std::runtime_error: card declined"), "");
    s1 = store->add_dead_letter(letter("shipping", "e2", "std::runtime_error: no courier"), "");
    b2 = store->add_dead_letter(letter("billing", "e3", "std::runtime_error: card expired"), "");
  }
  const auto text = cli({"dlq", "list", "--store", path});
  ASSERT_TRUE(text.exited && text.exit_code == 0) << text.describe();
  EXPECT_TRUE(contains(text.output, "card declined")) << text.output;
  EXPECT_TRUE(contains(text.output, "shipping")) << text.output;

  const auto billing = cli({"--json", "dlq", "list", "--store", path, "--handler", "billing"});
  ASSERT_TRUE(billing.exited && billing.exit_code == 0) << billing.describe();
  const json listed = json_in(billing.output);
  ASSERT_EQ(listed.size(), 2u) << billing.output;
  EXPECT_EQ(listed[0]["id"], b1);
  EXPECT_EQ(listed[1]["id"], b2);
  EXPECT_EQ(listed[1]["last_error"], "std::runtime_error: card expired");
  EXPECT_EQ(listed[0]["attempts"], 5);

  const auto show = cli({"dlq", "show", std::to_string(s1), "--store", path});
  ASSERT_TRUE(show.exited && show.exit_code == 0) << show.describe();
  for (const std::string field : {"shipping", "e2", "notifications.order.placed", "max_attempts", "no courier",
                                  "first failed at", "dead at", "attempts", "order.placed"}) {
    EXPECT_TRUE(contains(show.output, field)) << field << " in " << show.output;
  }
  const auto shown = cli({"--json", "dlq", "show", std::to_string(s1), "--store", path});
  ASSERT_TRUE(shown.exited && shown.exit_code == 0) << shown.describe();
  const json one = json_in(shown.output);
  EXPECT_EQ(one["body"], letter("shipping", "e2", "").body) << shown.output;
  EXPECT_EQ(one["reason"], "max_attempts");
  EXPECT_EQ(one["subject"], "notifications.order.placed");

  const auto missing = cli({"dlq", "show", "999", "--store", path});
  EXPECT_TRUE(missing.exited && missing.exit_code == 4) << missing.describe();
  EXPECT_TRUE(contains(missing.output, "no dead letter 999")) << missing.output;

  const auto nothing = cli({"dlq", "purge", "--store", path});
  EXPECT_TRUE(nothing.exited && nothing.exit_code == 2) << nothing.describe();
  EXPECT_TRUE(contains(nothing.output, "--all")) << nothing.output;
  const auto both = cli({"dlq", "purge", std::to_string(b1), "--all", "--store", path});
  EXPECT_TRUE(both.exited && both.exit_code == 2) << both.describe();
  EXPECT_TRUE(contains(both.output, "not both")) << both.output;

  const auto some = cli({"dlq", "purge", std::to_string(b1), "999", "--store", path});
  EXPECT_TRUE(some.exited && some.exit_code == 4) << some.describe();
  EXPECT_TRUE(contains(some.output, "no dead letter 999")) << some.output;
  auto store = n::make_sqlite_durable_store(path);
  EXPECT_FALSE(store->dead_letter(b1).has_value()) << "the ids found were removed";
  EXPECT_TRUE(store->dead_letter(b2).has_value());

  const auto shipping = cli({"--json", "dlq", "purge", "--all", "--handler", "shipping", "--store", path});
  ASSERT_TRUE(shipping.exited && shipping.exit_code == 0) << shipping.describe();
  EXPECT_EQ(json_in(shipping.output)["removed"], 1) << shipping.output;
  EXPECT_FALSE(store->dead_letter(s1).has_value());
  EXPECT_TRUE(store->dead_letter(b2).has_value()) << "another handler's letter stays";
  const auto all = cli({"dlq", "purge", "--all", "--store", path});
  ASSERT_TRUE(all.exited && all.exit_code == 0) << all.describe();
  EXPECT_TRUE(store->dead_letters().empty());
}

TEST(CliDlq, MissingStoresFilesThatAreNoStoreAndMissingOptionsAreRefusedNamingThem) {
  TempDir dir;
  const std::string missing = dir.file("missing.db");
  const auto gone = cli({"dlq", "list", "--store", missing});
  EXPECT_TRUE(gone.exited && gone.exit_code == 4) << gone.describe();
  EXPECT_TRUE(contains(gone.output, missing)) << gone.output;
  EXPECT_FALSE(std::filesystem::exists(missing)) << "never created";

  const std::string outbox = dir.file("outbox.db");
  stranded_outbox(outbox, 1);
  const auto other = cli({"dlq", "list", "--store", outbox});
  EXPECT_TRUE(other.exited && other.exit_code == 2) << other.describe();
  EXPECT_TRUE(contains(other.output, "holds no durable store")) << other.output;

  const auto no_store = cli({"dlq", "list"});
  EXPECT_TRUE(no_store.exited && no_store.exit_code == 2) << no_store.describe();
  EXPECT_TRUE(contains(no_store.output, "--store")) << no_store.output;
  const auto no_id = cli({"dlq", "show", "--store", missing});
  EXPECT_TRUE(no_id.exited && no_id.exit_code == 2) << no_id.describe();
  const auto not_a_number = cli({"dlq", "show", "first", "--store", missing});
  EXPECT_TRUE(not_a_number.exited && not_a_number.exit_code == 2) << not_a_number.describe();
  EXPECT_TRUE(contains(not_a_number.output, "first")) << not_a_number.output;
}

// ---- dlq replay

// A service in this process: a Bridge on `url` with two durable handlers on one SQLite store
// file: "mailer" fails until `fixed` is set, "audit" always succeeds; and a producer Bridge of
// its own (NATS does not echo a connection's messages back to it). State is shared with the
// handlers (they may run after an early return of the test).
struct Service {
  struct State {
    std::atomic<bool> fixed{false};
    std::atomic<int> audit_calls{0};
    std::mutex mutex;
    std::vector<std::uint32_t> mailer_attempts;
  };

  Service(const std::string& url, const std::string& store_path) {
    n::BridgeConfig config = test_support::config_for("cli-service");
    config.url = url;
    config.forward = {};
    config.subscribe = {};
    bridge = n::make_bridge(notifier, config);
    n::BridgeConfig producer_config = test_support::config_for("cli-producer");
    producer_config.url = url;
    producer_config.subscribe = {};
    producer = n::make_bridge(producer_notifier, producer_config);
    n::DurableOptions options;
    options.max_attempts = 3;
    options.backoff.initial = 20ms;
    options.backoff.max = 100ms;
    options.backoff.jitter = 0.0;
    options.handler_deadline = 10s;
    options.store = n::make_sqlite_durable_store(store_path);
    auto shared = state;
    bridge->subscribe_durable(
        "mailer", "user.signed_up",
        [shared](const n::Event&, n::DurableContext& context) {
          {
            std::lock_guard<std::mutex> lock(shared->mutex);
            shared->mailer_attempts.push_back(context.attempt());
          }
          if (!shared->fixed.load()) throw std::runtime_error("smtp down");
        },
        options);
    bridge->subscribe_durable(
        "audit", "user.signed_up",
        [shared](const n::Event&, n::DurableContext&) { shared->audit_calls.fetch_add(1); },
        options);
    bridge->start();
    producer->start();
  }
  ~Service() {
    producer->shutdown(5s);
    bridge->shutdown(5s);
  }
  std::uint64_t count(const std::string& handler, const std::string& key) const {
    return bridge->health()["durable"][handler]["counters"][key].get<std::uint64_t>();
  }

  std::shared_ptr<State> state = std::make_shared<State>();
  n::Notifier notifier;
  std::unique_ptr<n::Bridge> bridge;
  n::Notifier producer_notifier;
  std::unique_ptr<n::Bridge> producer;
};

void replay_end_to_end(const std::string& url, const TempDir& dir) {
  const std::string store_path = dir.file("durable.db");
  Service service(url, store_path);
  service.producer_notifier.instrument("user.signed_up", {{"user", 7}});
  ASSERT_TRUE(wait_until([&] { return service.count("mailer", "dead_lettered") == 1 && service.count("audit", "succeeded") == 1; },
                         30s))
      << service.bridge->health().dump();
  auto store = n::make_sqlite_durable_store(store_path);
  const auto letters = store->dead_letters();
  ASSERT_EQ(letters.size(), 1u);
  EXPECT_EQ(letters[0].handler, "mailer");
  EXPECT_EQ(letters[0].attempts, 3u);
  service.state->fixed.store(true);

  const auto replay = cli({"--url", url, "dlq", "replay", std::to_string(letters[0].id), "--store", store_path},
                          {"NOTIFICATIONS_URL=" + url});
  ASSERT_TRUE(replay.exited && replay.exit_code == 0) << replay.describe();
  EXPECT_TRUE(contains(replay.output, letters[0].event_id)) << replay.output;
  ASSERT_TRUE(wait_until([&] { return service.count("mailer", "succeeded") == 1 && service.count("audit", "duplicates_skipped") == 1; },
                         30s))
      << service.bridge->health().dump();
  {
    std::lock_guard<std::mutex> lock(service.state->mutex);
    EXPECT_EQ(service.state->mailer_attempts, (std::vector<std::uint32_t>{1, 2, 3, 1}))
        << "exactly once more, as a first attempt";
  }
  EXPECT_EQ(service.state->audit_calls.load(), 1) << "audit's inbox said done: it did not run again";
  EXPECT_TRUE(store->dead_letters().empty()) << "the dead letter is gone";
  EXPECT_EQ(service.count("mailer", "dead_lettered"), 1u);
  const auto again = cli({"--url", url, "dlq", "replay", std::to_string(letters[0].id), "--store", store_path},
                         {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(again.exited && again.exit_code == 4) << again.describe();
}

TEST(CliDlq, ReplayOverSqliteRunsTheFailedHandlerOnceMoreAndNotTheOneThatIsDone) {
  TempDir dir;
  replay_end_to_end("sqlite://" + dir.file("events.db"), dir);
}

#ifdef CLI_TESTS_HAVE_NATS

TEST(CliDlq, ReplayOverNatsRunsTheFailedHandlerOnceMoreAndNotTheOneThatIsDone) {
  TempDir dir;
  test_support::NatsServer server;
  replay_end_to_end(server.url(), dir);
}

TEST(CliDlq, ReplayToAnUnreachableServerExits3AndKeepsTheLetter) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = n::make_sqlite_durable_store(path);
  const std::string owner = n::durable_owner();
  ASSERT_EQ(store->claim("mailer", "e1", owner, 1h).outcome, n::InboxClaim::Outcome::claimed);
  const std::uint64_t id = store->add_dead_letter(letter("mailer", "e1", "smtp down"), owner);
  n::release_durable_owner(owner);
  const std::string url = "nats://127.0.0.1:" + std::to_string(test_support::free_tcp_port());
  const auto replay = cli({"--url", url, "dlq", "replay", std::to_string(id), "--store", path},
                          {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(replay.exited && replay.exit_code == 3) << replay.describe();
  EXPECT_TRUE(contains(replay.output, "stays as it was")) << replay.output;
  EXPECT_TRUE(store->dead_letter(id).has_value());
  EXPECT_EQ(store->claim("mailer", "e1", n::durable_owner(), 1h).outcome, n::InboxClaim::Outcome::dead)
      << "the inbox still says dead";
}

#endif  // CLI_TESTS_HAVE_NATS

TEST(CliDlq, ReplayRefusesAMemoryUrlAMissingLetterAndALetterWithoutAnEventId) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = n::make_sqlite_durable_store(path);
  const std::uint64_t malformed = store->add_dead_letter(letter("mailer", "", "not an envelope"), "");
  const auto memory = cli({"dlq", "replay", std::to_string(malformed), "--store", path});
  EXPECT_TRUE(memory.exited && memory.exit_code == 2) << memory.describe();
  EXPECT_TRUE(contains(memory.output, "--url")) << memory.output;

  const std::string url = existing_sqlite_url(dir);
  const auto missing = cli({"--url", url, "dlq", "replay", "999", "--store", path}, {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(missing.exited && missing.exit_code == 4) << missing.describe();
  const auto no_id = cli({"--url", url, "dlq", "replay", std::to_string(malformed), "--store", path},
                         {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(no_id.exited && no_id.exit_code == 1) << no_id.describe();
  EXPECT_TRUE(contains(no_id.output, "no event id")) << no_id.output;
  EXPECT_TRUE(store->dead_letter(malformed).has_value());
}

// A sqlite:// events file that does not exist (a typo in the path) is refused by both replays:
// creating it would send the events where no one reads them, and take them from where they were.
TEST(CliReplays, ASqliteUrlWhoseFileDoesNotExistIsRefusedAndNothingMoves) {
  TempDir dir;
  const std::string outbox = dir.file("outbox.db");
  const auto rows = stranded_outbox(outbox, 3);
  const std::string store_path = dir.file("durable.db");
  auto store = n::make_sqlite_durable_store(store_path);
  const std::string owner = n::durable_owner();
  ASSERT_EQ(store->claim("mailer", "e1", owner, 1h).outcome, n::InboxClaim::Outcome::claimed);
  const std::uint64_t id = store->add_dead_letter(letter("mailer", "e1", "smtp down"), owner);
  n::release_durable_owner(owner);
  const std::string typo = dir.file("evnts.db");
  const std::string url = "sqlite://" + typo;

  const auto outbox_replay = cli({"--url", url, "outbox", "replay", "--outbox", outbox}, {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(outbox_replay.exited && outbox_replay.exit_code == 3) << outbox_replay.describe();
  EXPECT_TRUE(contains(outbox_replay.output, typo)) << outbox_replay.output;
  EXPECT_EQ(event_ids(n::list_outbox(outbox)), event_ids(rows)) << "every row stays";

  const auto dlq_replay =
      cli({"--url", url, "dlq", "replay", std::to_string(id), "--store", store_path}, {"NOTIFICATIONS_URL=" + url});
  EXPECT_TRUE(dlq_replay.exited && dlq_replay.exit_code == 3) << dlq_replay.describe();
  EXPECT_TRUE(contains(dlq_replay.output, typo)) << dlq_replay.output;
  EXPECT_TRUE(store->dead_letter(id).has_value()) << "the letter stays";
  EXPECT_FALSE(std::filesystem::exists(typo)) << "never created";
}

}  // namespace
