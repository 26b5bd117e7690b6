// Every way a process ends, with a bridge configured and shutdown() never called: each run is a
// child process (tests/process/exit_child.cpp) that must end as its path demands, never by a
// crash or a hang, with the library's warning and a shutdown report whose events were all
// confirmed or counted.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "scale.hpp"
#ifdef NOTIFICATIONS_TEST_NATS
#include "transports/nats/nats_server.hpp"
#endif

namespace {

using test_support::ChildResult;
using test_support::run_child;

constexpr auto kBound = std::chrono::seconds(30);  // detects a hang; never a speed check
const int kRuns = std::max(2, 20 / test_support::kScale);

struct Path {
  const char* name;
  bool exits;       // ends with exit status `code`; otherwise killed by `signal`
  int code_or_signal;
  bool warns;       // the "shutdown() was not called" warning is expected
};

constexpr Path kReturn{"return", true, 0, true};
constexpr Path kExitThread{"exit_thread", true, 0, true};
constexpr Path kThrow{"throw", false, SIGABRT, true};
constexpr Path kSigterm{"sigterm", false, SIGTERM, false};
constexpr Path kSigtermApp{"sigterm_app", true, 0, false};

void expect_clean_end(const Path& path, const ChildResult& r, const std::string& url, int run) {
  SCOPED_TRACE(std::string(path.name) + " on " + url + ", run " + std::to_string(run));
  ASSERT_FALSE(r.timed_out) << r.describe();
  if (path.exits) {
    ASSERT_TRUE(r.exited) << r.describe();
    EXPECT_EQ(r.exit_code, path.code_or_signal) << r.describe();
  } else {
    ASSERT_FALSE(r.exited) << r.describe();
    EXPECT_EQ(r.signal, path.code_or_signal) << r.describe();
  }
  for (const char* sanitizer : {"AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:"}) {
    EXPECT_EQ(r.output.find(sanitizer), std::string::npos) << r.describe();
  }
  if (path.warns) {
    EXPECT_NE(r.output.find("shutdown() was not called"), std::string::npos) << r.describe();
  }
  // Everything accepted was sent and confirmed: the report of a clean shutdown.
  EXPECT_NE(r.output.find("notifications bridge: shut down: accepted"), std::string::npos) << r.describe();
  EXPECT_NE(r.output.find("undelivered 0"), std::string::npos) << r.describe();
}

void run_path(const Path& path, const std::string& url) {
  for (int run = 0; run < kRuns; ++run) {
    const ChildResult r = run_child({EXIT_CHILD_PATH, path.name}, {"NOTIFICATIONS_URL=" + url}, kBound);
    expect_clean_end(path, r, url, run);
    if (::testing::Test::HasFailure()) return;  // one failing run tells it all
  }
}

TEST(ProcessExit, ReturnFromMainWithoutShutdownEndsCleanly) { run_path(kReturn, "memory://"); }
TEST(ProcessExit, ExitFromAnotherThreadEndsCleanly) { run_path(kExitThread, "memory://"); }
TEST(ProcessExit, ExceptionEscapingMainAbortsWithoutCrashing) { run_path(kThrow, "memory://"); }
TEST(ProcessExit, SigtermShutsDownThenEndsBySigterm) { run_path(kSigterm, "memory://"); }
TEST(ProcessExit, SigtermKeepsTheApplicationsOwnHandler) { run_path(kSigtermApp, "memory://"); }

#ifdef NOTIFICATIONS_TEST_NATS
class ProcessExitNats : public ::testing::Test {
 protected:
  test_support::NatsServer server;
};
TEST_F(ProcessExitNats, ReturnFromMainWithoutShutdownEndsCleanly) { run_path(kReturn, server.url()); }
TEST_F(ProcessExitNats, ExitFromAnotherThreadEndsCleanly) { run_path(kExitThread, server.url()); }
TEST_F(ProcessExitNats, ExceptionEscapingMainAbortsWithoutCrashing) { run_path(kThrow, server.url()); }
TEST_F(ProcessExitNats, SigtermShutsDownThenEndsBySigterm) { run_path(kSigterm, server.url()); }
#endif

}  // namespace
