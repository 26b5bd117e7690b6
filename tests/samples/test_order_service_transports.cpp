// Swapping transports: the order-service sample (samples/order_service/) run as built, over
// memory://, sqlite://, nats:// and jetstream://, with only NOTIFICATIONS_URL changed (every other
// NOTIFICATIONS_* variable is removed from the children's environment; the arguments are the same
// for every networked transport), counts the same totals each time:
// - memory://: order_service alone runs analytics in its own process; it exits 0 only when that
//   tally of the remote events matched its local outcome, and logs it ("...: matches the local
//   outcome").
// - sqlite://<temp dir>/events.db, nats://127.0.0.1:<port>, jetstream://127.0.0.1:<port>?stream=
//   ORDERS&subjects=notifications.>: order_analytics starts first (consumer group "analytics" on
//   sqlite:// and jetstream://; core NATS has no group here, as in scripts/run-sample-nats.sh) and
//   is waited for until it says it is receiving; then order_service runs. Both exit 0; analytics
//   stops by itself once it counted the 200 orders ("stopped (orders counted)"), and its tally is,
//   character for character, what order_service said it should count (as scripts/run-sample.sh
//   compares them).
// - The sample is deterministic (fixed seeds; stock exceeds demand, so the threads' interleaving
//   does not matter: samples/order_service/main.cpp), so the totals are also the same over all
//   four transports.
// nats-server (-js for jetstream://) is the real one, on 127.0.0.1 and a free port, started by the
// test body's thread and stopped by PID (tests/transports/nats/nats_server.hpp). Every wait is
// bounded, and a child still running at its bound is killed by PID; nothing about speed is
// asserted. Each transport's totals and run time are printed for the CTest log.
#include <gtest/gtest.h>

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "child_process.hpp"
#include "nats_server.hpp"
#include "wait.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using test_support::NatsServer;
using test_support::NatsServerOptions;
using test_support::wait_until;
using Clock = std::chrono::steady_clock;

constexpr int kOrders = 200;  // order_service places 4 x 50 orders (samples/order_service/main.cpp)
// Bounds, generous for the sanitizer builds: they only detect a hang.
constexpr auto kSubscribeBound = 30s;    // order_analytics until "receiving order events"
constexpr int kAnalyticsSeconds = 60;    // order_analytics --seconds: its own time limit
constexpr auto kServiceBound = 60s;      // order_service until it exits
constexpr auto kAnalyticsBound = 70s;    // order_analytics until it exits, after order_service

// A fresh folder under the system's temporary folder, removed at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "order-service-transports-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string contents_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// `program` and `args` under /usr/bin/env, so that the child's environment is this process's
// without any NOTIFICATIONS_* variable, plus NOTIFICATIONS_URL=`url` (env execs the program: the
// PID stays the program's).
std::vector<std::string> with_only_the_url(const std::string& url, const std::string& program,
                                           const std::vector<std::string>& args = {}) {
  std::vector<std::string> command{"/usr/bin/env"};
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (entry.rfind("NOTIFICATIONS_", 0) == 0) command.push_back("--unset=" + entry.substr(0, entry.find('=')));
  }
  command.push_back("NOTIFICATIONS_URL=" + url);
  command.push_back(program);
  command.insert(command.end(), args.begin(), args.end());
  return command;
}

// A child started by spawn_child, its output in a log file; killed (SIGKILL, by PID) and reaped
// when the test leaves before waiting for it.
class Child {
 public:
  Child(const std::string& name, const std::vector<std::string>& command, std::string log)
      : name_(name), log_(std::move(log)) {
    pid_ = test_support::spawn_child(command, log_).pid;
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  std::string output() const { return contents_of(log_); }
  // Reaps it within `bound` (then kills it); "" when it exited 0, else how it ended ("order_service
  // exited 1", "... timed out (killed)").
  std::string wait_for_success(std::chrono::milliseconds bound) {
    const test_support::ChildResult result = test_support::wait_for_child(pid_, bound);
    pid_ = -1;
    if (result.exited && result.exit_code == 0) return {};
    const std::string how = result.describe();  // "<how it ended>; output:\n" (none: it went to the log)
    return name_ + " " + how.substr(0, how.find(';'));
  }

 private:
  std::string name_;
  std::string log_;
  pid_t pid_ = -1;
};

// The last match's group 1 (and `second`'s group 2) of `pattern` on a line of `log`; "" when none.
std::string last_match(const std::string& log, const std::regex& pattern, std::string* second = nullptr) {
  std::string found;
  std::istringstream lines(log);
  std::string line;
  std::smatch match;
  while (std::getline(lines, line)) {
    if (!std::regex_search(line, match, pattern)) continue;
    found = match[1].str();
    if (second != nullptr) *second = match[2].str();
  }
  return found;
}

// order_service's line for a transport that reaches other processes.
const std::regex kShouldCount(R"(order_analytics, from remote events of .*, should count: (.*)$)");
// order_analytics' last line of its tally (as scripts/run-sample.sh reads it).
const std::regex kAnalyticsStopped(R"(stopped \(([^)]*)\); analytics, from remote events of [^:]*: (.*)$)");
// order_service's in-process analytics over memory://, when it matched the local outcome.
const std::regex kMatchedInProcess(R"(analytics, from remote events of [^:]*: (.*): matches the local outcome$)");

// memory://: order_service alone; returns the totals its in-process analytics counted, "" after
// a failure (reported).
std::string totals_in_one_process(const TempDir& dir) {
  Child service("order_service", with_only_the_url("memory://", ORDER_SERVICE_PATH), dir.file("order_service.log"));
  const std::string failure = service.wait_for_success(kServiceBound);
  EXPECT_EQ(failure, "") << "over memory://, order_service's exit status 1 means its in-process analytics "
                            "did not count what it did";
  const std::string log = service.output();
  const std::string matched = last_match(log, kMatchedInProcess);
  EXPECT_NE(matched, "") << "order_service did not log its in-process tally as matching";
  if (!failure.empty() || matched.empty()) ADD_FAILURE() << "order_service's log:\n" << log;
  return failure.empty() ? matched : std::string();
}

// A transport that reaches other processes: order_analytics (subscribed first), then
// order_service; returns the totals when analytics counted exactly what order_service said it
// should, "" after a failure (reported).
std::string totals_in_two_processes(const TempDir& dir, const std::string& url, const std::string& group) {
  std::vector<std::string> analytics_args{"--orders", std::to_string(kOrders), "--seconds",
                                          std::to_string(kAnalyticsSeconds)};
  if (!group.empty()) analytics_args.insert(analytics_args.end(), {"--group", group});
  Child analytics("order_analytics", with_only_the_url(url, ORDER_ANALYTICS_PATH, analytics_args),
                  dir.file("order_analytics.log"));
  // Core NATS keeps nothing for a subscriber that is not there yet: wait for its subscription.
  if (!wait_until([&] { return analytics.output().find("receiving order events") != std::string::npos; },
                  kSubscribeBound)) {
    ADD_FAILURE() << "order_analytics did not say it was receiving within " << kSubscribeBound.count()
                  << " s; its log:\n" << analytics.output();
    return {};
  }

  Child service("order_service", with_only_the_url(url, ORDER_SERVICE_PATH), dir.file("order_service.log"));
  const std::string service_failure = service.wait_for_success(kServiceBound);
  const std::string analytics_failure = analytics.wait_for_success(kAnalyticsBound);
  EXPECT_EQ(service_failure, "");
  EXPECT_EQ(analytics_failure, "");

  const std::string service_log = service.output();
  const std::string analytics_log = analytics.output();
  const std::string expected = last_match(service_log, kShouldCount);
  std::string counted;
  const std::string reason = last_match(analytics_log, kAnalyticsStopped, &counted);
  EXPECT_NE(expected, "") << "order_service did not say what analytics should count";
  EXPECT_NE(counted, "") << "order_analytics did not report its tally";
  EXPECT_EQ(reason, "orders counted") << "order_analytics stopped before it counted " << kOrders << " orders";
  EXPECT_EQ(counted, expected) << "order_analytics' tally differs from what order_service did";
  const bool ok = service_failure.empty() && analytics_failure.empty() && !expected.empty() &&
                  reason == "orders counted" && counted == expected;
  if (!ok) ADD_FAILURE() << "order_service's log:\n" << service_log << "order_analytics' log:\n" << analytics_log;
  return ok ? counted : std::string();
}

TEST(OrderServiceSample, TheTotalsMatchOverEveryTransportWithOnlyTheUrlChanged) {
  std::map<std::string, std::string> totals;  // by transport
  const auto run = [&](const std::string& transport, const std::function<std::string()>& body) {
    SCOPED_TRACE("over " + transport);
    const auto started = Clock::now();
    const std::string counted = body();
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    std::printf("order_service sample over %-13s %s (%.1f s)\n", (transport + ":").c_str(),
                counted.empty() ? "FAILED" : counted.c_str(), seconds);
    std::fflush(stdout);
    totals[transport] = counted;
  };

  run("memory://", [] {
    const TempDir dir;
    return totals_in_one_process(dir);
  });
  run("sqlite://", [] {
    const TempDir dir;
    return totals_in_two_processes(dir, "sqlite://" + dir.file("events.db"), "analytics");
  });
  run("nats://", [] {
    NatsServer server;
    const TempDir dir;
    return totals_in_two_processes(dir, "nats://127.0.0.1:" + std::to_string(server.port()), "");
  });
  run("jetstream://", [] {
    NatsServerOptions options;
    options.jetstream = true;
    NatsServer server(options);
    const TempDir dir;
    return totals_in_two_processes(
        dir, "jetstream://127.0.0.1:" + std::to_string(server.port()) + "?stream=ORDERS&subjects=notifications.>",
        "analytics");
  });

  // Deterministic sample: one set of totals, whatever the transport.
  const std::string& reference = totals.at("memory://");
  ASSERT_NE(reference, "");
  for (const auto& [transport, counted] : totals) {
    if (counted.empty()) continue;  // that run failed, and said why
    EXPECT_EQ(counted, reference) << "over " << transport << " (memory:// counted " << reference << ")";
  }
}

}  // namespace
