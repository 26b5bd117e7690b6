// The notifications command, run as a program (tools/cli): tail, publish and health against a real
// nats-server on 127.0.0.1 and a real SQLite file, bad arguments, an unreachable server, and
// credentials that must never be printed. Every child runs within a bound.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "child_process.hpp"
#include "notifications/bridge.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifier.hpp"

#if __has_include("nats_server.hpp")
#include "nats_server.hpp"
#define CLI_TESTS_HAVE_NATS 1
#endif

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;
using test_support::ChildResult;

constexpr auto kBound = 30s;  // any one command, start to exit

std::vector<std::string> command_line(const std::vector<std::string>& args) {
  std::vector<std::string> all{NOTIFICATIONS_CLI};
  all.insert(all.end(), args.begin(), args.end());
  return all;
}

// Runs the command to completion (stdout and stderr interleaved in `output`).
ChildResult cli(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  ChildResult result = test_support::run_child(command_line(args), env, kBound);
  EXPECT_FALSE(result.timed_out) << result.describe();
  return result;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

std::string last_line(const std::string& text) {
  const std::vector<std::string> lines = lines_of(text);
  return lines.empty() ? std::string() : lines.back();
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The command running in the background (a tail), its stdout and stderr read apart. Killed by its
// PID if the test ends before it did.
class Background {
 public:
  explicit Background(const std::vector<std::string>& args) : child_(test_support::spawn_child(command_line(args))) {
    ::fcntl(child_.stdout_fd, F_SETFL, O_NONBLOCK);
    ::fcntl(child_.stderr_fd, F_SETFL, O_NONBLOCK);
  }
  ~Background() {
    if (child_.pid > 0) {
      ::kill(child_.pid, SIGKILL);
      test_support::wait_for_child(child_.pid, 5s);
    }
    close_fd(child_.stdout_fd);
    close_fd(child_.stderr_fd);
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  pid_t pid() const { return child_.pid; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }

  // True once standard error holds `text` (false after `timeout`, or when the child closed it).
  bool wait_for_stderr(const std::string& text, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!contains(err_, text)) {
      if (std::chrono::steady_clock::now() >= deadline || (child_.stdout_fd < 0 && child_.stderr_fd < 0)) return false;
      pump(50ms);
    }
    return true;
  }

  // Reads until the child closed its output, then reaps it; all within `bound`.
  ChildResult finish(std::chrono::milliseconds bound) {
    const auto deadline = std::chrono::steady_clock::now() + bound;
    while ((child_.stdout_fd >= 0 || child_.stderr_fd >= 0) && std::chrono::steady_clock::now() < deadline) pump(50ms);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    ChildResult result = test_support::wait_for_child(child_.pid, std::max(left, std::chrono::milliseconds(1000)));
    child_.pid = -1;
    result.output = "stdout:\n" + out_ + "stderr:\n" + err_;
    return result;
  }

 private:
  static void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  void pump(std::chrono::milliseconds wait) {
    pollfd fds[2] = {{child_.stdout_fd, POLLIN, 0}, {child_.stderr_fd, POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(wait.count())) <= 0) return;
    read_from(child_.stdout_fd, out_);
    read_from(child_.stderr_fd, err_);
  }
  static void read_from(int& fd, std::string& into) {
    if (fd < 0) return;
    char buffer[4096];
    while (true) {
      const ssize_t got = ::read(fd, buffer, sizeof buffer);
      if (got > 0) {
        into.append(buffer, static_cast<std::size_t>(got));
        continue;
      }
      if (got == 0) close_fd(fd);  // the child closed it
      return;                      // EAGAIN: nothing more now
    }
  }

  test_support::SpawnedChild child_;
  std::string out_;
  std::string err_;
};

// A private folder for SQLite files, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "ntf-cli-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

// Publishes through a Bridge of the library, as an application would.
void publish_with_library(const std::string& url, const std::string& app,
                          const std::vector<std::pair<std::string, json>>& events) {
  n::Notifier notifier;
  n::BridgeConfig config;
  config.url = url;
  config.app = app;
  config.subscribe = {};
  std::unique_ptr<n::Bridge> bridge = n::make_bridge(notifier, config);
  bridge->start();
  for (const auto& [name, payload] : events) notifier.instrument(name, payload);
  EXPECT_TRUE(bridge->flush(10s));
  bridge->shutdown(5s);
}

bool is_uuid(const std::string& text) {
  return text.size() == 36 && text[8] == '-' && text[13] == '-' && text[18] == '-' && text[23] == '-';
}

// Tail sees one event from `notifications publish` and one from a library Bridge, each line with
// its time, name, producer and payload; --count 2 ends it with 0.
void tail_sees_publish_command_and_library(const std::string& url) {
  Background tail({"tail", "--url", url, "--count", "2"});
  ASSERT_TRUE(tail.wait_for_stderr("tailing > on ", 20s)) << tail.err();
  const ChildResult published = cli({"publish", "order.placed", R"({"id": 7, "total": 12.5})", "--url", url, "--app", "shop"});
  ASSERT_TRUE(published.exited && published.exit_code == 0) << published.describe();
  const std::string id = last_line(published.output);
  EXPECT_TRUE(is_uuid(id)) << published.output;
  publish_with_library(url, "library-app", {{"user.signed_up", json{{"user", "ada"}}}});

  const ChildResult ended = tail.finish(kBound);
  ASSERT_TRUE(ended.exited && ended.exit_code == 0) << ended.describe();
  const std::vector<std::string> lines = lines_of(tail.out());
  ASSERT_EQ(lines.size(), 2u) << tail.out();
  EXPECT_TRUE(contains(lines[0], "order.placed")) << lines[0];
  EXPECT_TRUE(contains(lines[0], "shop/")) << lines[0];
  EXPECT_TRUE(contains(lines[0], R"({"id":7,"total":12.5})")) << lines[0];
  EXPECT_EQ(lines[0][2], ':') << "starts with the time: " << lines[0];
  EXPECT_TRUE(contains(lines[1], "user.signed_up")) << lines[1];
  EXPECT_TRUE(contains(lines[1], "library-app/")) << lines[1];
  EXPECT_TRUE(contains(lines[1], R"({"user":"ada"})")) << lines[1];
}

// --json: one object per line, with the published event's id, producer and payload.
void tail_json_lines(const std::string& url, const std::string& transport) {
  Background tail({"--json", "tail", "order.*", "--url", url, "--count", "1"});
  ASSERT_TRUE(tail.wait_for_stderr("tailing order.* on ", 20s)) << tail.err();
  // Not matched by the pattern: never printed.
  publish_with_library(url, "other", {{"user.signed_up", json{{"user", "bob"}}}});
  const ChildResult published =
      cli({"publish", "--json", "order.shipped", R"({"parcel": "A-1"})", "--url", url, "--app", "warehouse"});
  ASSERT_TRUE(published.exited && published.exit_code == 0) << published.describe();
  const json answer = json::parse(last_line(published.output));
  EXPECT_TRUE(answer["confirmed"].get<bool>());

  const ChildResult ended = tail.finish(kBound);
  ASSERT_TRUE(ended.exited && ended.exit_code == 0) << ended.describe();
  const std::vector<std::string> lines = lines_of(tail.out());
  ASSERT_EQ(lines.size(), 1u) << tail.out();
  const json event = json::parse(lines[0]);
  EXPECT_EQ(event["name"], "order.shipped");
  EXPECT_EQ(event["id"], answer["id"]);
  EXPECT_EQ(event["producer"], "warehouse");
  EXPECT_FALSE(event["producer_instance"].get<std::string>().empty());
  EXPECT_EQ(event["transport"], transport);
  EXPECT_EQ(event["payload"], json({{"parcel", "A-1"}}));
  EXPECT_TRUE(event["exception"].is_null());
  EXPECT_TRUE(n::parse_rfc3339(event["time"].get<std::string>()).has_value()) << event["time"];
}

// ---- Arguments and configuration (no server) ---------------------------------------------------

TEST(Cli, UnknownSubcommandIsAUsageErrorNamingIt) {
  const ChildResult result = cli({"frobnicate"});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
  EXPECT_TRUE(contains(result.output, "frobnicate")) << result.output;
}

TEST(Cli, UnknownOptionIsAUsageErrorNamingIt) {
  const ChildResult result = cli({"tail", "--frobnicate", "--url", "nats://127.0.0.1:1"});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
  EXPECT_TRUE(contains(result.output, "--frobnicate")) << result.output;
}

// A URL with credentials typed where a command, a pattern, a name or no argument belongs is echoed
// by the usage error without its credentials (CLI11's own messages included).
TEST(Cli, ACredentialGivenInTheWrongPlaceIsNotEchoed) {
  const std::string secret = "Pw-misplaced-never-print";
  const std::string url = "nats://alice:" + secret + ".x@127.0.0.1:1";  // a '.' splits it into two tokens
  const std::vector<std::vector<std::string>> commands{
      {url, "tail"}, {"tail", url}, {"publish", url}, {"health", url}, {"tail", "--width", url}};
  for (const auto& args : commands) {
    const ChildResult result = cli(args);
    EXPECT_TRUE(result.exited && result.exit_code == 2) << args[0] << " " << args[1] << ": " << result.describe();
    EXPECT_FALSE(contains(result.output, secret)) << result.output;
  }
  // A secret in the query (token=, password=) and a password holding a '/' are secrets too.
  const std::string token_url = "nats://127.0.0.1:1?token=" + secret;
  const std::string slash_url = "nats://alice:" + secret + "/x@127.0.0.1:1";
  for (const std::string& other : {token_url, slash_url}) {
    for (const auto& args : std::vector<std::vector<std::string>>{{other, "tail"}, {"tail", other}}) {
      const ChildResult result = cli(args);
      EXPECT_TRUE(result.exited && result.exit_code == 2) << args[0] << " " << args[1] << ": " << result.describe();
      EXPECT_FALSE(contains(result.output, secret)) << result.output;
    }
  }
  // The echo is kept, only the credentials go: the user can still see what was misplaced.
  EXPECT_TRUE(contains(cli({"health", url}).output, "nats://***@127.0.0.1:1"));
  EXPECT_TRUE(contains(cli({"tail", url}).output, "is a URL: give the transport's URL with --url"));
}

TEST(Cli, MissingSubcommandIsAUsageError) {
  const ChildResult result = cli({});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
}

TEST(Cli, HelpExitsZeroAndListsTheCommands) {
  const ChildResult result = cli({"--help"});
  EXPECT_TRUE(result.exited && result.exit_code == 0) << result.describe();
  for (const char* command : {"tail", "publish", "health", "Exit codes"}) EXPECT_TRUE(contains(result.output, command)) << command;
}

TEST(Cli, MemoryTransportIsRefusedSayingWhatToPass) {
  for (const std::string command : {"tail", "publish", "health"}) {
    std::vector<std::string> args{command};
    if (command == "publish") args.push_back("some.event");
    const ChildResult result = cli(args, {"NOTIFICATIONS_URL=memory://"});
    EXPECT_TRUE(result.exited && result.exit_code == 2) << command << ": " << result.describe();
    EXPECT_TRUE(contains(result.output, "memory://")) << result.output;
    EXPECT_TRUE(contains(result.output, "--url")) << result.output;
    EXPECT_TRUE(contains(result.output, "NOTIFICATIONS_URL")) << result.output;
  }
  const ChildResult explicit_url = cli({"health", "--url", "mock://"});
  EXPECT_TRUE(explicit_url.exited && explicit_url.exit_code == 2) << explicit_url.describe();
}

TEST(Cli, PublishBadJsonNamesThePosition) {
  const ChildResult result = cli({"publish", "order.placed", R"({"id": 7,)", "--url", "nats://127.0.0.1:1"});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
  EXPECT_TRUE(contains(result.output, "JSON payload")) << result.output;
  EXPECT_TRUE(contains(result.output, "column 10")) << result.output;
}

TEST(Cli, PublishPayloadMustBeAnObject) {
  const ChildResult result = cli({"publish", "order.placed", "[1, 2]", "--url", "nats://127.0.0.1:1"});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
  EXPECT_TRUE(contains(result.output, "must be an object")) << result.output;
  EXPECT_TRUE(contains(result.output, "array")) << result.output;
}

TEST(Cli, PublishBadNameIsNamed) {
  for (const std::string name : {"order placed", "order..placed", "order.*"}) {
    const ChildResult result = cli({"publish", name, "--url", "nats://127.0.0.1:1"});
    EXPECT_TRUE(result.exited && result.exit_code == 2) << name << ": " << result.describe();
    EXPECT_TRUE(contains(result.output, "\"" + name + "\"")) << result.output;
  }
}

TEST(Cli, TailBadPatternIsNamed) {
  const ChildResult result = cli({"tail", "order.*x", "--url", "nats://127.0.0.1:1"});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
  EXPECT_TRUE(contains(result.output, "order.*x")) << result.output;
}

TEST(Cli, BadOptionValuesAreUsageErrors) {
  const ChildResult count = cli({"tail", "--count", "zero", "--url", "nats://127.0.0.1:1"});
  EXPECT_TRUE(count.exited && count.exit_code == 2) << count.describe();
  EXPECT_TRUE(contains(count.output, "--count")) << count.output;
  const ChildResult timeout = cli({"publish", "a.b", "--timeout", "0", "--url", "nats://127.0.0.1:1"});
  EXPECT_TRUE(timeout.exited && timeout.exit_code == 2) << timeout.describe();
  EXPECT_TRUE(contains(timeout.output, "--timeout")) << timeout.output;
}

TEST(Cli, UnknownSchemeIsAUsageError) {
  const ChildResult result = cli({"health", "--url", "carrier-pigeon://loft"});
  EXPECT_TRUE(result.exited && result.exit_code == 2) << result.describe();
  EXPECT_TRUE(contains(result.output, "carrier-pigeon")) << result.output;
}

TEST(Cli, ConfigFileErrorsNameTheFileAndTheKey) {
  TempDir dir;
  const ChildResult missing = cli({"health", "--config", dir.file("absent.json")});
  EXPECT_TRUE(missing.exited && missing.exit_code == 2) << missing.describe();
  EXPECT_TRUE(contains(missing.output, dir.file("absent.json"))) << missing.output;

  const std::string bad_key = dir.file("bad.json");
  std::ofstream(bad_key) << R"({"url": "sqlite:///tmp/x.db", "queue_capacity": "many"})";
  const ChildResult wrong = cli({"health", "--config", bad_key});
  EXPECT_TRUE(wrong.exited && wrong.exit_code == 2) << wrong.describe();
  EXPECT_TRUE(contains(wrong.output, "queue_capacity")) << wrong.output;

  const std::string routes = dir.file("routes.json");
  std::ofstream(routes) << R"({"routes": [{"name": "a", "url": "sqlite:///tmp/a.db"}, {"name": "b", "url": "sqlite:///tmp/b.db"}]})";
  const ChildResult ambiguous = cli({"health", "--config", routes});
  EXPECT_TRUE(ambiguous.exited && ambiguous.exit_code == 2) << ambiguous.describe();
  EXPECT_TRUE(contains(ambiguous.output, "--route")) << ambiguous.output;
  const ChildResult unknown = cli({"health", "--config", routes, "--route", "c"});
  EXPECT_TRUE(unknown.exited && unknown.exit_code == 2) << unknown.describe();
  EXPECT_TRUE(contains(unknown.output, "\"c\"")) << unknown.output;
}

// ---- SQLite: a real file ---------------------------------------------------------------------

TEST(CliSqlite, TailSeesPublishCommandAndLibraryEvents) {
  TempDir dir;
  tail_sees_publish_command_and_library("sqlite://" + dir.file("events.db"));
}

TEST(CliSqlite, TailJsonLinesCarryTheFields) {
  TempDir dir;
  tail_json_lines("sqlite://" + dir.file("events.db"), "sqlite");
}

// A block that raised shows its exception; a long payload is cut to --width at a character
// boundary.
TEST(CliSqlite, TailLinesShowExceptionsAndCutLongPayloads) {
  TempDir dir;
  const std::string url = "sqlite://" + dir.file("events.db");
  Background tail({"tail", "--url", url, "--count", "2", "--width", "30"});
  ASSERT_TRUE(tail.wait_for_stderr("tailing > on ", 20s)) << tail.err();
  {
    n::Notifier notifier;
    n::BridgeConfig config;
    config.url = url;
    config.app = "payments";
    config.subscribe = {};
    std::unique_ptr<n::Bridge> bridge = n::make_bridge(notifier, config);
    bridge->start();
    EXPECT_THROW(notifier.instrument("charge.failed", json{{"amount", 30}}, [] { throw std::runtime_error("card expired"); }),
                 std::runtime_error);
    std::string long_text;
    for (int i = 0; i < 100; ++i) long_text += "\xc3\xa9";  // e with an acute accent: two bytes each
    notifier.instrument("note.long", json{{"text", long_text}});
    EXPECT_TRUE(bridge->flush(10s));
    bridge->shutdown(5s);
  }
  const ChildResult ended = tail.finish(kBound);
  ASSERT_TRUE(ended.exited && ended.exit_code == 0) << ended.describe();
  const std::vector<std::string> lines = lines_of(tail.out());
  ASSERT_EQ(lines.size(), 2u) << tail.out();
  EXPECT_TRUE(contains(lines[0], "charge.failed")) << lines[0];
  EXPECT_TRUE(contains(lines[0], "raised std::runtime_error: card expired")) << lines[0];
  const std::string cut = lines[1].substr(lines[1].find("{\"text\""));
  EXPECT_LE(cut.size(), 30u) << cut;
  EXPECT_EQ(cut.substr(cut.size() - 3), "...") << cut;
  EXPECT_TRUE(json::accept("\"" + cut.substr(9, cut.size() - 12) + "\"")) << "cut inside a character: " << cut;
}

TEST(CliSqlite, HealthOfAFileAndOfAMissingOne) {
  TempDir dir;
  const std::string url = "sqlite://" + dir.file("events.db");
  const ChildResult missing = cli({"health", "--url", url});
  EXPECT_TRUE(missing.exited && missing.exit_code == 3) << missing.describe();
  EXPECT_TRUE(contains(missing.output, dir.file("events.db"))) << missing.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("events.db"))) << "health must not create the file";

  publish_with_library(url, "app", {{"a.b", json::object()}});
  // From a configuration file this time: the same format as NOTIFICATIONS_CONFIG.
  const std::string config = dir.file("config.json");
  std::ofstream(config) << json{{"url", url}, {"app", "checker"}}.dump();
  const ChildResult healthy = cli({"health", "--config", config});
  EXPECT_TRUE(healthy.exited && healthy.exit_code == 0) << healthy.describe();
  EXPECT_TRUE(contains(healthy.output, "ok")) << healthy.output;
  EXPECT_TRUE(contains(healthy.output, "checker")) << healthy.output;

  const ChildResult as_json = cli({"health", "--json", "--url", url});
  ASSERT_TRUE(as_json.exited && as_json.exit_code == 0) << as_json.describe();
  const json health = json::parse(last_line(as_json.output));
  EXPECT_TRUE(health["ok"].get<bool>());
  EXPECT_EQ(health["health"]["transport"]["kind"], "sqlite");
  EXPECT_EQ(health["health"]["transport"]["last_sequence"], 1);
}

TEST(CliSqlite, PublishToAFolderThatDoesNotExistIsUnreachable) {
  TempDir dir;
  const std::string url = "sqlite://" + dir.file("no-such-folder") + "/events.db";
  const ChildResult result = cli({"publish", "a.b", "--url", url});
  EXPECT_TRUE(result.exited && result.exit_code == 3) << result.describe();
  EXPECT_TRUE(contains(result.output, "no-such-folder")) << result.output;
}

TEST(CliSqlite, SigtermEndsATailWithZero) {
  TempDir dir;
  Background tail({"tail", "--url", "sqlite://" + dir.file("events.db")});
  ASSERT_TRUE(tail.wait_for_stderr("tailing > on ", 20s)) << tail.err();
  ASSERT_EQ(::kill(tail.pid(), SIGTERM), 0);
  const ChildResult ended = tail.finish(kBound);
  EXPECT_TRUE(ended.exited && ended.exit_code == 0) << ended.describe();
}

TEST(CliSqlite, ForEndsATailWithZero) {
  TempDir dir;
  const ChildResult result = cli({"tail", "--for", "0.5", "--url", "sqlite://" + dir.file("events.db")});
  EXPECT_TRUE(result.exited && result.exit_code == 0) << result.describe();
}

#ifdef CLI_TESTS_HAVE_NATS

using test_support::NatsServer;

std::string closed_port_url() { return "nats://127.0.0.1:" + std::to_string(test_support::free_tcp_port()); }

// ---- NATS: a real nats-server ------------------------------------------------------------------

TEST(CliNats, TailSeesPublishCommandAndLibraryEvents) {
  NatsServer server;
  tail_sees_publish_command_and_library(server.url());
}

TEST(CliNats, TailJsonLinesCarryTheFields) {
  NatsServer server;
  tail_json_lines(server.url(), "nats");
}

TEST(CliNats, RateTableCountsByName) {
  NatsServer server;
  Background tail({"tail", "--rate", "--for", "3", "--url", server.url()});
  ASSERT_TRUE(tail.wait_for_stderr("tailing > on ", 20s)) << tail.err();
  publish_with_library(server.url(), "app",
                       {{"cart.add", json::object()}, {"cart.add", json::object()}, {"cart.add", json::object()},
                        {"cart.remove", json::object()}});
  const ChildResult ended = tail.finish(kBound);
  ASSERT_TRUE(ended.exited && ended.exit_code == 0) << ended.describe();
  EXPECT_TRUE(contains(tail.out(), "EVENTS/S")) << tail.out();
  // The last table (printed at the end) holds the totals.
  std::string add_row;
  std::string remove_row;
  for (const std::string& line : lines_of(tail.out())) {
    if (line.rfind("cart.add ", 0) == 0) add_row = line;
    if (line.rfind("cart.remove ", 0) == 0) remove_row = line;
  }
  ASSERT_FALSE(add_row.empty()) << tail.out();
  ASSERT_FALSE(remove_row.empty()) << tail.out();
  EXPECT_EQ(add_row.substr(add_row.find_last_of(' ') + 1), "3") << add_row;
  EXPECT_EQ(remove_row.substr(remove_row.find_last_of(' ') + 1), "1") << remove_row;
}

TEST(CliNats, HealthOfARunningServer) {
  NatsServer server;
  const ChildResult human = cli({"health", "--url", server.url()});
  EXPECT_TRUE(human.exited && human.exit_code == 0) << human.describe();
  EXPECT_TRUE(contains(human.output, "connected")) << human.output;
  EXPECT_TRUE(contains(human.output, std::to_string(server.port()))) << human.output;

  const ChildResult as_json = cli({"health", "--url", server.url(), "--json"});
  ASSERT_TRUE(as_json.exited && as_json.exit_code == 0) << as_json.describe();
  const json health = json::parse(last_line(as_json.output));
  EXPECT_TRUE(health["ok"].get<bool>());
  EXPECT_EQ(health["health"]["transport"]["connection"], "connected");
}

TEST(CliNats, EveryCommandExitsThreeOnAClosedPortNamingTheUrl) {
  const std::string url = closed_port_url();
  const std::vector<std::vector<std::string>> commands{
      {"health", "--url", url}, {"publish", "a.b", "--url", url}, {"tail", "--url", url}};
  for (const auto& args : commands) {
    const ChildResult result = cli(args);
    EXPECT_TRUE(result.exited && result.exit_code == 3) << args[0] << ": " << result.describe();
    EXPECT_TRUE(contains(result.output, url.substr(std::string("nats://").size()))) << result.output;
  }
}

TEST(CliNats, CredentialsNeverAppearInAnyOutput) {
  const std::string secret = "Pw-7f3kQz-never-print";
  test_support::NatsServerOptions options;
  options.user = "alice";
  options.password = secret;
  NatsServer server(options);
  const std::string url = "nats://alice:" + secret + "@127.0.0.1:" + std::to_string(server.port());
  const std::string wrong = "nats://alice:Wrong-" + secret + "@127.0.0.1:" + std::to_string(server.port());

  Background tail({"tail", "--url", url, "--count", "1"});
  ASSERT_TRUE(tail.wait_for_stderr("tailing > on ", 20s)) << tail.err();
  std::vector<ChildResult> results;
  results.push_back(cli({"publish", "a.b", "{\"x\": 1}", "--url", url}));
  EXPECT_EQ(results.back().exit_code, 0) << results.back().describe();
  results.push_back(cli({"health", "--url", url}));
  EXPECT_EQ(results.back().exit_code, 0) << results.back().describe();
  results.push_back(cli({"health", "--json", "--url", url}));
  EXPECT_EQ(results.back().exit_code, 0) << results.back().describe();
  results.push_back(cli({"health", "--url", wrong}));
  EXPECT_EQ(results.back().exit_code, 3) << results.back().describe();
  results.push_back(cli({"publish", "a.b", "--url", wrong}));
  EXPECT_EQ(results.back().exit_code, 3) << results.back().describe();
  results.push_back(cli({"health", "--url", "nats://alice:" + secret + "@127.0.0.1:" + std::to_string(test_support::free_tcp_port())}));
  EXPECT_EQ(results.back().exit_code, 3) << results.back().describe();
  results.push_back(tail.finish(kBound));
  EXPECT_EQ(results.back().exit_code, 0) << results.back().describe();
  for (const ChildResult& result : results) EXPECT_FALSE(contains(result.output, secret)) << result.output;
}

#endif  // CLI_TESTS_HAVE_NATS

}  // namespace
