// The SQLite durable store (make_sqlite_durable_store, notifications/sqlite.hpp) against the
// DurableStore contract (notifications/durable.hpp): claim outcomes, takeover of claims not
// renewed or of gone owners, the handler's SQL committed with the done mark or not at all, two
// store objects racing for one event, dead letters, pruning, health, bad files, a file shared
// with a sqlite:// transport; and the outbox rows of an outbox file (list_outbox, outbox_row,
// purge_outbox). Every wait is bounded; nothing asserts speed. Each test has its own temporary
// folder.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "notifications/durable.hpp"
#include "notifications/outbox.hpp"
#include "notifications/sqlite.hpp"
#include "notifications/transports/sqlite.hpp"
#include "remote/bridge_test_support.hpp"
#include "sqlite_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using Outcome = n::InboxClaim::Outcome;
using nlohmann::json;
using test_support::scalar;

namespace {

class TempDir : public test_support::TempDir {
 public:
  TempDir() : test_support::TempDir("durable") {}
};

std::shared_ptr<n::DurableStore> store_at(const std::string& path, std::uint32_t busy_timeout_ms = 5000) {
  n::SqliteDurableStoreOptions options;
  options.busy_timeout_ms = busy_timeout_ms;
  return n::make_sqlite_durable_store(path, options);
}

// An owner whose process has exited: a child's pid after it was reaped.
std::string gone_owner() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return std::to_string(child) + ":1";
}

void exec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

// prefix + i (appended: GCC 12 warns, wrongly, about "e" + std::to_string(i) here).
std::string numbered(const char* prefix, int i) {
  std::string out(prefix);
  out += std::to_string(i);
  return out;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const n::DurableError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not a DurableError: ") + e.what();
  }
  return "no exception";
}

n::DeadLetter letter(const std::string& handler, const std::string& event_id, const std::string& body = "{}") {
  n::DeadLetter letter;
  letter.handler = handler;
  letter.event_id = event_id;
  letter.subject = "notifications.order.placed";
  letter.body = body;
  letter.reason = "max_attempts";
  letter.last_error = "std::runtime_error: card declined";
  letter.attempts = 5;
  letter.first_failed_at = std::chrono::system_clock::now() - 1min;
  letter.dead_at = std::chrono::system_clock::now();
  return letter;
}

TEST(SqliteDurableStore, ClaimOutcomesDoneHeldDeadAndReplay) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  EXPECT_EQ(store->description(), "sqlite " + dir.file("durable.db"));
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();

  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed) << "the same owner claims again";
  EXPECT_EQ(store->claim("billing", "e1", b, 1h).outcome, Outcome::held) << "a live owner renewing it holds it";
  EXPECT_EQ(store->claim("shipping", "e1", b, 1h).outcome, Outcome::claimed) << "inboxes are per handler";

  EXPECT_TRUE(store->work("billing", "e1", a)->complete());
  const n::InboxClaim done = store->claim("billing", "e1", b, 1h);
  EXPECT_EQ(done.outcome, Outcome::done);

  // A failure releases the claim: anyone may claim it, and sees the failures so far.
  ASSERT_EQ(store->claim("billing", "e2", a, 1h).outcome, Outcome::claimed);
  EXPECT_EQ(store->fail("billing", "e2", a, "std::runtime_error: first"), 1u);
  EXPECT_EQ(store->fail("billing", "e2", b, "not b's claim"), 1u) << "fail() by a non-owner changes nothing";
  const n::InboxClaim again = store->claim("billing", "e2", b, 1h);
  EXPECT_EQ(again.outcome, Outcome::claimed);
  EXPECT_EQ(again.failed_attempts, 1u);
  EXPECT_EQ(again.last_error, "std::runtime_error: first");
  EXPECT_EQ(store->fail("billing", "e2", b, "std::runtime_error: second"), 2u);
  EXPECT_EQ(store->fail("billing", "unknown", b, "x"), 0u);

  // Dead: skipped, unless replayed.
  ASSERT_EQ(store->claim("billing", "e2", a, 1h).outcome, Outcome::claimed);
  const std::uint64_t id = store->add_dead_letter(letter("billing", "e2"), a);
  EXPECT_GE(id, 1u);
  EXPECT_EQ(store->claim("billing", "e2", b, 1h).outcome, Outcome::dead);
  const n::InboxClaim replayed = store->claim("billing", "e2", b, 1h, /*replay=*/true);
  EXPECT_EQ(replayed.outcome, Outcome::claimed);
  EXPECT_EQ(replayed.failed_attempts, 2u);
  EXPECT_EQ(store->claim("billing", "e1", b, 1h, /*replay=*/true).outcome, Outcome::done) << "replay runs dead only";
}

TEST(SqliteDurableStore, ClaimManyClaimsEachAsClaimWouldAndReleaseGivesClaimsBackWithoutAFailure) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  ASSERT_EQ(store->claim("h", "done", a, 1h).outcome, Outcome::claimed);
  ASSERT_TRUE(store->work("h", "done", a)->complete());
  ASSERT_EQ(store->claim("h", "theirs", b, 1h).outcome, Outcome::claimed);
  const auto claims = store->claim_many("h", {"new1", "done", "theirs", "new2"}, a, 1h);
  ASSERT_EQ(claims.size(), 4u);
  EXPECT_EQ(claims[0].outcome, Outcome::claimed);
  EXPECT_EQ(claims[1].outcome, Outcome::done);
  EXPECT_EQ(claims[2].outcome, Outcome::held);
  EXPECT_EQ(claims[3].outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("h", "new1", b, 1h).outcome, Outcome::held);
  // Released: free for anyone, no failure recorded; another owner's claim is left alone.
  store->release("h", {"new1", "new2", "theirs"}, a);
  const n::InboxClaim taken = store->claim("h", "new1", b, 1h);
  EXPECT_EQ(taken.outcome, Outcome::claimed);
  EXPECT_EQ(taken.failed_attempts, 0u);
  EXPECT_EQ(store->claim("h", "theirs", a, 1h).outcome, Outcome::held);
  EXPECT_EQ(scalar(dir.file("durable.db"), "SELECT count(*) FROM notifications_inbox WHERE owner=''"), 1);  // new2
  n::release_durable_owner(a);
  n::release_durable_owner(b);
}

TEST(SqliteDurableStore, AClaimNotRenewedWithinReviveAfterIsTakenOver) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  // Margins of 300 ms either way around revive_after (1 s), for a loaded machine.
  ASSERT_EQ(store->claim("billing", "e1", a, 1s).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("billing", "e1", b, 1s).outcome, Outcome::held);
  std::this_thread::sleep_for(700ms);
  store->renew(a);  // renewed: held for another revive_after
  std::this_thread::sleep_for(700ms);
  EXPECT_EQ(store->claim("billing", "e1", b, 1s).outcome, Outcome::held) << "renew() extended the claim";
  std::this_thread::sleep_for(1300ms);
  EXPECT_EQ(store->claim("billing", "e1", b, 1s).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::held) << "now b's";
}

TEST(SqliteDurableStore, AClaimOfAGoneOwnerIsTakenOverAtOnce) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string b = n::durable_owner();
  const std::string exited = gone_owner();
  ASSERT_TRUE(n::durable_owner_gone(exited));
  ASSERT_EQ(store->claim("billing", "e1", exited, 1h).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("billing", "e1", b, 1h).outcome, Outcome::claimed) << "its process has exited";

  const std::string released = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e2", released, 1h).outcome, Outcome::claimed);
  EXPECT_EQ(store->claim("billing", "e2", b, 1h).outcome, Outcome::held);
  n::release_durable_owner(released);
  EXPECT_EQ(store->claim("billing", "e2", b, 1h).outcome, Outcome::claimed) << "released by this process";
}

TEST(SqliteDurableStore, TheHandlersSqlCommitsWithTheDoneMarkOrNotAtAll) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = store_at(path);
  exec(path, "CREATE TABLE charges(event_id TEXT, amount INTEGER)");
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();

  // Completed: both committed.
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  {
    auto work = store->work("billing", "e1", a);
    work->execute("INSERT INTO charges VALUES(?1, ?2)", json::array({"e1", 100}));
    EXPECT_EQ(scalar(path, "SELECT count(*) FROM charges"), 0) << "not visible before complete()";
    EXPECT_TRUE(work->complete());
  }
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM charges WHERE event_id='e1'"), 1);
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM notifications_inbox WHERE event_id='e1' AND state='done'"), 1);

  // Destroyed without complete(): rolled back, still pending and the owner's.
  ASSERT_EQ(store->claim("billing", "e2", a, 1h).outcome, Outcome::claimed);
  store->work("billing", "e2", a)->execute("INSERT INTO charges VALUES('e2', 1)", json::array());
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM charges WHERE event_id='e2'"), 0);
  EXPECT_EQ(store->claim("billing", "e2", b, 1h).outcome, Outcome::held);

  // Taken over (a released it): a's work neither commits its SQL nor marks it done.
  n::release_durable_owner(a);
  ASSERT_EQ(store->claim("billing", "e2", b, 1h).outcome, Outcome::claimed);
  {
    auto late = store->work("billing", "e2", a);
    late->execute("INSERT INTO charges VALUES('e2', 2)", json::array());
    EXPECT_FALSE(late->complete());
    EXPECT_THROW(late->execute("SELECT 1", json::array()), n::DurableError) << "the work has ended";
  }
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM charges WHERE event_id='e2'"), 0);
  EXPECT_EQ(store->claim("billing", "e2", b, 1h).outcome, Outcome::claimed) << "still b's, pending";
  // complete() without SQL works too.
  EXPECT_TRUE(store->work("billing", "e2", b)->complete());
  EXPECT_EQ(store->claim("billing", "e2", a, 1h).outcome, Outcome::done);
}

TEST(SqliteDurableStore, ExecuteBindsParametersAndReturnsRows) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = store_at(path);
  const std::string a = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  auto work = store->work("billing", "e1", a);
  const json rows = work->execute("SELECT ?1, ?2, ?3, ?4, ?5, ?6, x'00ff10', 7 / 2.0",
                                  json::array({nullptr, true, 42, -1.5, "text", 18446744073709551ull}));
  EXPECT_EQ(rows, json::parse(R"([[null, 1, 42, -1.5, "text", 18446744073709551, "AP8Q", 3.5]])"));
  EXPECT_EQ(work->execute("CREATE TABLE t(a, b)", json::array()), json::array());
  EXPECT_EQ(work->execute("INSERT INTO t VALUES(1, 'x'), (2, 'y') RETURNING a", json::array()),
            json::parse("[[1], [2]]"));
  EXPECT_EQ(work->execute("SELECT b FROM t WHERE a > ? ORDER BY a", json::array({0})), json::parse(R"([["x"], ["y"]])"));
  EXPECT_EQ(work->execute("SELECT b FROM t WHERE a > 5", nullptr), json::array()) << "null: no parameters";

  const auto object = error_of([&] { work->execute("SELECT ?1, ?2", json::array({1, {{"a", 1}}})); });
  EXPECT_NE(object.find("parameter 2"), std::string::npos) << object;
  EXPECT_NE(object.find(path), std::string::npos) << object;
  const auto huge = error_of([&] { work->execute("SELECT ?1", json::array({18446744073709551615ull})); });
  EXPECT_NE(huge.find("parameter 1"), std::string::npos) << huge;
  const auto count = error_of([&] { work->execute("SELECT ?1, ?2", json::array({1})); });
  EXPECT_NE(count.find("1 parameters given"), std::string::npos) << count;
  const auto not_array = error_of([&] { work->execute("SELECT ?1", json{{"a", 1}}); });
  EXPECT_NE(not_array.find("JSON array"), std::string::npos) << not_array;
  const auto two = error_of([&] { work->execute("SELECT 1; SELECT 2", json::array()); });
  EXPECT_NE(two.find("more than one statement"), std::string::npos) << two;
  const auto commit = error_of([&] { work->execute("COMMIT", json::array()); });
  EXPECT_NE(commit.find("may not BEGIN, COMMIT or ROLLBACK"), std::string::npos) << commit;
  const auto syntax = error_of([&] { work->execute("SELEC 1", json::array()); });
  EXPECT_NE(syntax.find("syntax error"), std::string::npos) << syntax;
  const auto missing = error_of([&] { work->execute("INSERT INTO nowhere VALUES(1)", json::array()); });
  EXPECT_NE(missing.find("no such table: nowhere"), std::string::npos) << missing;
  EXPECT_EQ(error_of([&] { work->execute("SELECT 1; -- a comment", json::array()); }), "no exception");
  EXPECT_NE(error_of([&] { work->execute("END", json::array()); }).find("may not BEGIN"), std::string::npos);
  EXPECT_EQ(error_of([&] {
              work->execute("SAVEPOINT s", json::array());
              work->execute("INSERT INTO t VALUES(3, 'z')", json::array());
              work->execute("ROLLBACK TO s", json::array());
              work->execute("RELEASE s", json::array());
            }),
            "no exception")
      << "savepoints nest inside the work's transaction";

  EXPECT_TRUE(work->complete()) << "statements that failed leave the work's transaction usable";
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM t"), 2);
  EXPECT_THROW(work->complete(), n::DurableError);
}

TEST(SqliteDurableStore, TwoStoreObjectsOnOneFileClaimingOneEventFromTenThreadsClaimItOnce) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto first = store_at(path);
  auto second = store_at(path);
  constexpr int kEvents = 20;
  constexpr int kThreads = 10;
  for (int e = 0; e < kEvents; ++e) {
    const std::string event_id = numbered("e", e);
    std::atomic<int> claimed{0};
    std::atomic<int> held{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const std::string owner = n::durable_owner();
        while (!go.load()) std::this_thread::yield();
        auto& store = t % 2 == 0 ? first : second;
        const auto outcome = store->claim("billing", event_id, owner, 1h).outcome;
        (outcome == Outcome::claimed ? claimed : held).fetch_add(1);
      });
    }
    go.store(true);
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(claimed.load(), 1) << event_id;
    EXPECT_EQ(held.load(), kThreads - 1) << event_id;
  }
}

// The child of SeveralProcesses...: claims events e0 .. e49 of the file named by
// DURABLE_STORE_CHILD once each, completing those it claimed with an effect row in the work's
// transaction; prints how many it claimed.
TEST(SqliteDurableStoreChild, ClaimAll) {
  const char* path = std::getenv("DURABLE_STORE_CHILD");
  if (path == nullptr) GTEST_SKIP() << "run by SeveralProcessesOnOneFileRunEachEventOnce only";
  auto store = store_at(path, 30000);
  const std::string owner = n::durable_owner();
  int claimed = 0;
  for (int e = 0; e < 50; ++e) {
    const std::string event_id = numbered("e", e);
    if (store->claim("billing", event_id, owner, 1h).outcome != Outcome::claimed) continue;
    auto work = store->work("billing", event_id, owner);
    work->execute("INSERT INTO effects(event_id, pid) VALUES(?1, ?2)", json::array({event_id, ::getpid()}));
    ASSERT_TRUE(work->complete());
    ++claimed;
  }
  std::printf("claimed %d\n", claimed);
}

TEST(SqliteDurableStore, SeveralProcessesOnOneFileRunEachEventOnce) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  store_at(path);
  exec(path, "CREATE TABLE effects(event_id TEXT NOT NULL, pid INTEGER NOT NULL)");
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  constexpr int kChildren = 4;
  std::vector<test_support::ChildResult> results(kChildren);
  std::vector<std::thread> threads;
  for (int c = 0; c < kChildren; ++c) {
    threads.emplace_back([&, c] {
      results[c] = test_support::run_child({self, "--gtest_filter=SqliteDurableStoreChild.ClaimAll"},
                                           {"DURABLE_STORE_CHILD=" + path}, 120s);
    });
  }
  for (auto& thread : threads) thread.join();
  int claimed = 0;
  for (const auto& result : results) {
    ASSERT_TRUE(result.exited && result.exit_code == 0) << result.describe();
    const auto at = result.output.find("claimed ");
    ASSERT_NE(at, std::string::npos) << result.output;
    claimed += std::atoi(result.output.c_str() + at + 8);
  }
  EXPECT_EQ(claimed, 50);
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM effects"), 50);
  EXPECT_EQ(scalar(path, "SELECT count(DISTINCT event_id) FROM effects"), 50);
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM notifications_inbox WHERE state='done'"), 50);
}

TEST(SqliteDurableStore, AnOpenWorkDoesNotBlockTheStoreObjectsOtherCalls) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = store_at(path);
  const std::string a = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  // A runner thread holds the work's transaction (after its first statement) for a while; the
  // dispatcher's calls on the same store object wait for the file's lock, then go on.
  std::atomic<bool> executed{false};
  std::thread runner([&] {
    auto work = store->work("billing", "e1", a);
    work->execute("CREATE TABLE side(x)", json::array());
    executed.store(true);
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(work->complete());
  });
  ASSERT_TRUE(test_support::wait_until([&] { return executed.load(); }, 10s));
  EXPECT_EQ(store->claim("billing", "e2", a, 1h).outcome, Outcome::claimed);
  store->renew(a);
  EXPECT_EQ(store->fail("billing", "e2", a, "x"), 1u);
  runner.join();
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::done);
  // An open work that ran no SQL holds no lock at all.
  ASSERT_EQ(store->claim("billing", "e3", a, 1h).outcome, Outcome::claimed);
  auto idle = store->work("billing", "e3", a);
  EXPECT_EQ(store->claim("billing", "e4", a, 1h).outcome, Outcome::claimed);
  EXPECT_TRUE(idle->complete());
}

TEST(SqliteDurableStore, AWriterPastBusyTimeoutFailsNamingTheFileAndTheOption) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = store_at(path);
  auto impatient = store_at(path, 50);
  const std::string a = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  auto work = store->work("billing", "e1", a);
  work->execute("CREATE TABLE side(x)", json::array());
  const std::string error = error_of([&] { impatient->claim("billing", "e2", a, 1h); });
  EXPECT_NE(error.find(path), std::string::npos) << error;
  EXPECT_NE(error.find("busy_timeout_ms"), std::string::npos) << error;
  EXPECT_NE(error.find("[notifications.durable]"), std::string::npos) << error;
  EXPECT_TRUE(work->complete());
  EXPECT_EQ(impatient->claim("billing", "e2", a, 1h).outcome, Outcome::claimed);
}

TEST(SqliteDurableStore, DeadLettersAddListPageShowUpdateRemovePurge) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  const std::string binary("env\0elope\xff", 10);
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  const auto l1 = letter("billing", "e1", binary);
  const std::uint64_t id1 = store->add_dead_letter(l1, a);
  const std::uint64_t id2 = store->add_dead_letter(letter("shipping", "e2"), a);  // inbox off: no claim
  n::DeadLetter malformed = letter("billing", "", "not json");
  malformed.reason = "malformed";
  const std::uint64_t id3 = store->add_dead_letter(malformed, a);
  EXPECT_LT(id1, id2);
  EXPECT_LT(id2, id3);
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::dead);
  EXPECT_EQ(store->claim("shipping", "e2", a, 1h).outcome, Outcome::dead) << "inserted when missing";

  const auto shown = store->dead_letter(id1);
  ASSERT_TRUE(shown.has_value());
  EXPECT_EQ(shown->id, id1);
  EXPECT_EQ(shown->handler, "billing");
  EXPECT_EQ(shown->event_id, "e1");
  EXPECT_EQ(shown->subject, l1.subject);
  EXPECT_EQ(shown->body, binary) << "the body's bytes as received";
  EXPECT_EQ(shown->reason, "max_attempts");
  EXPECT_EQ(shown->last_error, l1.last_error);
  EXPECT_EQ(shown->attempts, 5u);
  EXPECT_LE(std::chrono::abs(shown->first_failed_at - l1.first_failed_at), 1us);
  EXPECT_LE(std::chrono::abs(shown->dead_at - l1.dead_at), 1us);
  EXPECT_FALSE(store->dead_letter(id3 + 100).has_value());

  auto ids = [](const std::vector<n::DeadLetter>& letters) {
    std::vector<std::uint64_t> out;
    for (const auto& l : letters) out.push_back(l.id);
    return out;
  };
  EXPECT_EQ(ids(store->dead_letters()), (std::vector<std::uint64_t>{id1, id2, id3}));
  EXPECT_EQ(ids(store->dead_letters({.handler = "billing"})), (std::vector<std::uint64_t>{id1, id3}));
  EXPECT_EQ(ids(store->dead_letters({.handler = "", .limit = 2})), (std::vector<std::uint64_t>{id1, id2}));
  EXPECT_EQ(ids(store->dead_letters({.handler = "", .after_id = id2, .limit = 2})), (std::vector<std::uint64_t>{id3}));
  EXPECT_EQ(ids(store->dead_letters({.handler = "billing", .after_id = id1})), (std::vector<std::uint64_t>{id3}));

  // A replay that fails again: attempts + 1, the new error, dead again in the inbox.
  ASSERT_EQ(store->claim("billing", "e1", a, 1h, true).outcome, Outcome::claimed);
  const auto before = std::chrono::system_clock::now();
  store->update_dead_letter(id1, "std::runtime_error: still declined", a);
  const auto updated = store->dead_letter(id1);
  ASSERT_TRUE(updated.has_value());
  EXPECT_EQ(updated->attempts, 6u);
  EXPECT_EQ(updated->last_error, "std::runtime_error: still declined");
  EXPECT_GE(updated->dead_at, before - 1ms);
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::dead);
  store->update_dead_letter(id3 + 100, "no such letter", a);  // nothing to update

  // A replay that succeeds: the letter goes, the inbox row is marked done by the work.
  ASSERT_EQ(store->claim("billing", "e1", a, 1h, true).outcome, Outcome::claimed);
  EXPECT_TRUE(store->work("billing", "e1", a)->complete());
  EXPECT_TRUE(store->remove_dead_letter(id1));
  EXPECT_FALSE(store->remove_dead_letter(id1));
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::done);

  EXPECT_EQ(store->health()["dead_letters"], 2);
  EXPECT_EQ(store->purge_dead_letters("billing"), 1u);
  EXPECT_EQ(ids(store->dead_letters()), (std::vector<std::uint64_t>{id2}));
  const std::uint64_t id4 = store->add_dead_letter(letter("other", "e9"), a);
  EXPECT_GT(id4, id3) << "ids are never reused";
  EXPECT_EQ(store->purge_dead_letters(), 2u);
  EXPECT_TRUE(store->dead_letters().empty());
}

TEST(SqliteDurableStore, TakeBackRemovesTheLetterAndMakesItsDeadEventClaimableWithNoFailures) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = store_at(path);
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  store->fail("billing", "e1", a, "boom 1");
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  store->fail("billing", "e1", a, "boom 2");
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  const std::string binary("env\0elope", 9);
  const std::uint64_t id = store->add_dead_letter(letter("billing", "e1", binary), a);
  ASSERT_EQ(store->claim("billing", "e1", b, 1h).outcome, Outcome::dead);
  // Another handler's row for the same event is not touched.
  ASSERT_EQ(store->claim("audit", "e1", a, 1h).outcome, Outcome::claimed);
  ASSERT_TRUE(store->work("audit", "e1", a)->complete());

  const auto taken = store->take_back_dead_letter(id);
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->id, id);
  EXPECT_EQ(taken->handler, "billing");
  EXPECT_EQ(taken->event_id, "e1");
  EXPECT_EQ(taken->subject, "notifications.order.placed");
  EXPECT_EQ(taken->body, binary);
  EXPECT_FALSE(store->dead_letter(id).has_value()) << "the letter is gone";
  EXPECT_FALSE(store->take_back_dead_letter(id).has_value()) << "once";
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM notifications_inbox WHERE handler='billing' AND event_id='e1' AND"
                         " state='pending' AND owner='' AND failed_attempts=0 AND last_error='' AND"
                         " first_failed_at_us IS NULL"),
            1);
  const n::InboxClaim claim = store->claim("billing", "e1", b, 1h);  // any owner: b, not a
  EXPECT_EQ(claim.outcome, Outcome::claimed);
  EXPECT_EQ(claim.failed_attempts, 0u) << "max_attempts starts again";
  EXPECT_EQ(claim.last_error, "");
  EXPECT_EQ(store->claim("audit", "e1", b, 1h).outcome, Outcome::done) << "the other handler's inbox says done";
  // A failure after the take-back is the first one again.
  const auto before = std::chrono::system_clock::now();
  EXPECT_EQ(store->fail("billing", "e1", b, "boom 3"), 1u);
  ASSERT_EQ(store->claim("billing", "e1", b, 1h).outcome, Outcome::claimed);
  const auto again = store->dead_letter(store->add_dead_letter(letter("billing", "e1"), b));
  ASSERT_TRUE(again.has_value());
  EXPECT_GE(again->first_failed_at, before - 1ms) << "not the first failure before the take-back";
}

TEST(SqliteDurableStore, TakeBackLeavesADoneEventAsItIsAndRefusesWhileAReplayRuns) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  // Done after the letter was stored (a replay by the service that then failed to remove it).
  ASSERT_EQ(store->claim("billing", "done", a, 1h).outcome, Outcome::claimed);
  const std::uint64_t done_letter = store->add_dead_letter(letter("billing", "done"), a);
  ASSERT_EQ(store->claim("billing", "done", a, 1h, true).outcome, Outcome::claimed);
  ASSERT_TRUE(store->work("billing", "done", a)->complete());
  ASSERT_TRUE(store->take_back_dead_letter(done_letter).has_value());
  EXPECT_EQ(store->claim("billing", "done", b, 1h).outcome, Outcome::done);
  // A replay running under owner a: the take-back is refused, and the letter and the claim stay
  // (the replay's failure is then recorded on its letter, which a take-back would have removed).
  ASSERT_EQ(store->claim("billing", "running", a, 1h).outcome, Outcome::claimed);
  const std::uint64_t running_letter = store->add_dead_letter(letter("billing", "running"), a);
  ASSERT_EQ(store->claim("billing", "running", a, 1h, true).outcome, Outcome::claimed);
  const std::string refused = error_of([&] { store->take_back_dead_letter(running_letter); });
  EXPECT_NE(refused.find("being run again by a replay"), std::string::npos) << refused;
  EXPECT_NE(refused.find(a), std::string::npos) << "names the owner: " << refused;
  EXPECT_TRUE(store->dead_letter(running_letter).has_value()) << "the letter stays";
  EXPECT_EQ(store->claim("billing", "running", b, 1h).outcome, Outcome::held);
  store->update_dead_letter(running_letter, "failed again", a);
  EXPECT_EQ(store->dead_letter(running_letter)->last_error, "failed again");
  // A malformed letter has no inbox row: it is only removed.
  const std::uint64_t malformed = store->add_dead_letter(letter("billing", "", "not json"), a);
  const auto taken = store->take_back_dead_letter(malformed);
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->body, "not json");
  const auto left = store->dead_letters();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].id, running_letter) << "only the letter of the running replay stays";
}

TEST(SqliteDurableStore, OneLetterTakenBackFromTwoStoreObjectsAndEightThreadsIsTakenOnce) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto first = store_at(path);
  auto second = store_at(path);
  const std::string a = n::durable_owner();
  ASSERT_EQ(first->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  const std::uint64_t id = first->add_dead_letter(letter("billing", "e1"), a);
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      if ((i % 2 == 0 ? first : second)->take_back_dead_letter(id).has_value()) taken.fetch_add(1);
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(taken.load(), 1);
  EXPECT_EQ(second->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
}

TEST(SqliteDurableStore, OpeningWithoutCreateRefusesMissingFilesAndFilesWithoutAStore) {
  TempDir dir;
  n::SqliteDurableStoreOptions existing;
  existing.create = false;
  const std::string missing = dir.file("missing.db");
  const std::string message = error_of([&] { n::make_sqlite_durable_store(missing, existing); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  EXPECT_NE(message.find("does not exist"), std::string::npos) << message;
  EXPECT_FALSE(std::filesystem::exists(missing)) << "never created";
  const std::string other = dir.file("other.db");
  exec(other, "CREATE TABLE t(x)");
  const std::string without = error_of([&] { n::make_sqlite_durable_store(other, existing); });
  EXPECT_NE(without.find("holds no durable store"), std::string::npos) << without;
  EXPECT_EQ(scalar(other, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'notifications_%'"), 0)
      << "nothing was created in it";
  const std::string path = dir.file("durable.db");
  store_at(path)->add_dead_letter(letter("billing", "e1"), n::durable_owner());
  EXPECT_EQ(n::make_sqlite_durable_store(path, existing)->dead_letters().size(), 1u);
}

TEST(SqliteDurableStore, ADeadLettersFirstFailureIsTheFirstOneTheInboxRecorded) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  const auto before = std::chrono::system_clock::now();
  store->fail("billing", "e1", a, "first");
  const auto after = std::chrono::system_clock::now();
  std::this_thread::sleep_for(20ms);
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  store->fail("billing", "e1", a, "second");
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  n::DeadLetter late = letter("billing", "e1");
  late.first_failed_at = std::chrono::system_clock::now();
  const auto stored = store->dead_letter(store->add_dead_letter(late, a));
  ASSERT_TRUE(stored.has_value());
  EXPECT_GE(stored->first_failed_at, before - 1us);
  EXPECT_LE(stored->first_failed_at, after + 1us);
  // Without a recorded failure (inbox off, malformed): the caller's value.
  const n::DeadLetter other = letter("billing", "");
  const auto kept = store->dead_letter(store->add_dead_letter(other, a));
  ASSERT_TRUE(kept.has_value());
  EXPECT_LE(std::chrono::abs(kept->first_failed_at - other.first_failed_at), 1us);
}

TEST(SqliteDurableStore, ADeadLetterDoesNotTakeAnotherOwnersClaimOrADoneEvent) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  const std::string b = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", b, 1h).outcome, Outcome::claimed);
  store->add_dead_letter(letter("billing", "e1"), a);  // a's claim was taken over by b meanwhile
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::held) << "b's claim stands";
  const std::uint64_t id = store->add_dead_letter(letter("billing", "e1"), a);
  store->update_dead_letter(id, "replayed by a, taken over by b", a);
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::held) << "still b's";
  EXPECT_TRUE(store->work("billing", "e1", b)->complete());
  store->add_dead_letter(letter("billing", "e1"), a);
  EXPECT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::done);
}

TEST(SqliteDurableStore, PruneDoneKeepsTheNewestAndTheRecentOfOneHandler) {
  TempDir dir;
  auto store = store_at(dir.file("durable.db"));
  const std::string a = n::durable_owner();
  for (int i = 0; i < 5; ++i) {
    const std::string id = numbered("e", i);
    ASSERT_EQ(store->claim("billing", id, a, 1h).outcome, Outcome::claimed);
    ASSERT_TRUE(store->work("billing", id, a)->complete());
    ASSERT_EQ(store->claim("shipping", id, a, 1h).outcome, Outcome::claimed);
    ASSERT_TRUE(store->work("shipping", id, a)->complete());
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_EQ(store->claim("billing", "pending", a, 1h).outcome, Outcome::claimed);
  EXPECT_EQ(store->prune_done("billing", 2, 24h), 3u);
  EXPECT_EQ(store->claim("billing", "e4", a, 1h).outcome, Outcome::done);
  EXPECT_EQ(store->claim("billing", "e3", a, 1h).outcome, Outcome::done);
  EXPECT_EQ(store->claim("billing", "e2", a, 1h).outcome, Outcome::claimed) << "forgotten: runs again";
  EXPECT_EQ(store->claim("shipping", "e0", a, 1h).outcome, Outcome::done) << "another handler's rows stay";
  EXPECT_EQ(store->prune_done("shipping", 100, 0h), 5u) << "older than keep_for (0): all";
  EXPECT_EQ(store->prune_done("shipping", 100, 0h), 0u);
  EXPECT_NE(error_of([&] { store->prune_done("billing", 0, 1h); }).find("keep_done"), std::string::npos);
  EXPECT_EQ(store->health()["pending"], 2) << "pending rows are never pruned";
}

TEST(SqliteDurableStore, HealthCountsPendingDoneAndDeadLetters) {
  TempDir dir;
  const std::string path = dir.file("durable.db");
  auto store = store_at(path);
  const std::string a = n::durable_owner();
  store->claim("billing", "e1", a, 1h);
  store->claim("billing", "e2", a, 1h);
  store->work("billing", "e2", a)->complete();
  store->add_dead_letter(letter("billing", "e3"), a);
  const json health = store->health();
  EXPECT_EQ(health["kind"], "sqlite");
  EXPECT_EQ(health["path"], path);
  EXPECT_EQ(health["pending"], 1);
  EXPECT_EQ(health["done"], 1);
  EXPECT_EQ(health["dead"], 1);
  EXPECT_EQ(health["dead_letters"], 1);
}

TEST(SqliteDurableStore, BadFilesAndOptionsFailNamingTheFileAndWhatToDo) {
  TempDir dir;
  const std::string missing_folder = dir.file("missing/durable.db");
  const std::string folder = error_of([&] { store_at(missing_folder); });
  EXPECT_NE(folder.find(missing_folder), std::string::npos) << folder;
  EXPECT_NE(folder.find("folder must exist"), std::string::npos) << folder;

  const std::string garbage = dir.file("garbage.db");
  std::ofstream(garbage) << std::string(4096, 'x');
  const std::string not_db = error_of([&] { store_at(garbage); });
  EXPECT_NE(not_db.find(garbage), std::string::npos) << not_db;
  EXPECT_NE(not_db.find("not a SQLite database"), std::string::npos) << not_db;

  const std::string timeout = error_of([&] { store_at(dir.file("ok.db"), 0); });
  EXPECT_NE(timeout.find("busy_timeout_ms"), std::string::npos) << timeout;
  EXPECT_NE(error_of([&] { n::make_sqlite_durable_store(""); }).find("path is empty"), std::string::npos);

  const std::string newer = dir.file("newer.db");
  store_at(newer);
  exec(newer, "UPDATE notifications_meta SET value='2' WHERE key='durable_schema'");
  const std::string version = error_of([&] { store_at(newer); });
  EXPECT_NE(version.find("newer"), std::string::npos) << version;
  EXPECT_NE(version.find(newer), std::string::npos) << version;
}

TEST(SqliteDurableStore, SharesItsFileWithASqliteTransport) {
  TempDir dir;
  const std::string path = dir.file("events.db");
  n::SqliteTransportOptions options;
  options.path = path;
  options.idle_interval = 20ms;
  auto transport = n::make_sqlite_transport(options);
  transport->start();
  std::mutex mutex;
  std::vector<std::string> bodies;
  transport->subscribe("orders.>", "", [&](n::Delivery&& delivery) {
    std::lock_guard lock(mutex);
    bodies.push_back(delivery.message.body);
    delivery.settle(n::Settle::ack);
  });

  auto store = store_at(path);
  const std::string a = n::durable_owner();
  ASSERT_EQ(store->claim("billing", "e1", a, 1h).outcome, Outcome::claimed);
  const std::vector<n::Message> batch{n::Message{"orders.placed", "1", {}, "m1"}, n::Message{"orders.placed", "2", {}, "m2"}};
  EXPECT_EQ(transport->publish(batch).published, 2u);
  EXPECT_TRUE(store->work("billing", "e1", a)->complete());
  store->add_dead_letter(letter("billing", "e2"), a);
  EXPECT_TRUE(test_support::wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return bodies.size() == 2;
      },
      10s));

  // A second transport and a second store open the file with both schemas in it.
  auto second = n::make_sqlite_transport(options);
  EXPECT_NO_THROW(second->start());
  auto again = store_at(path);
  EXPECT_EQ(again->claim("billing", "e1", a, 1h).outcome, Outcome::done);
  EXPECT_EQ(again->dead_letters().size(), 1u);
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM notifications_events"), 2);
  EXPECT_EQ(scalar(path, "SELECT count(*) FROM notifications_meta WHERE key IN ('durable_schema','transport_schema')"),
            2);
  second->stop(std::chrono::steady_clock::now() + 5s);
  transport->stop(std::chrono::steady_clock::now() + 5s);
}

// ---- outbox rows

n::BridgeConfig outbox_config(const std::string& path) {
  n::BridgeConfig config = test_support::config_for("outbox-rows");
  config.durability = n::Durability::sync;
  config.outbox.path = path;
  return config;
}

void push(n::Outbox& outbox, const std::string& name, std::uint64_t id_sequence) {
  n::OutboxEvent event;
  event.set_text(name, R"({"n":1})", "");
  event.id_sequence = id_sequence;
  ASSERT_EQ(outbox.push(std::move(event), n::OverflowPolicy::block, 1s, nullptr, nullptr), n::Outbox::Push::accepted);
}

std::vector<std::string> names(const std::vector<n::OutboxRow>& rows) {
  std::vector<std::string> out;
  for (const auto& row : rows) out.push_back(row.name);
  return out;
}

TEST(SqliteOutboxRows, ListShowAndPurgeWhatAnOutboxLeftInItsFile) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  {
    auto outbox = n::make_sqlite_outbox(outbox_config(path));
    for (int i = 0; i < 5; ++i) push(*outbox, "order.e" + std::to_string(i), 100 + i);
  }  // nothing was sent: all five stay in the file for the next start
  const auto rows = n::list_outbox(path);
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(names(rows), (std::vector<std::string>{"order.e0", "order.e1", "order.e2", "order.e3", "order.e4"}));
  EXPECT_EQ(rows[0].payload, R"({"n":1})");
  EXPECT_EQ(rows[0].event_id.size(), 36u) << rows[0].event_id;
  EXPECT_NE(rows[0].event_id, rows[1].event_id);
  EXPECT_FALSE(rows[0].exception.has_value());
  EXPECT_LT(rows[0].id, rows[1].id);

  EXPECT_EQ(names(n::list_outbox(path, 2)), (std::vector<std::string>{"order.e0", "order.e1"}));
  EXPECT_EQ(names(n::list_outbox(path, 2, rows[1].id)), (std::vector<std::string>{"order.e2", "order.e3"}));
  const auto shown = n::outbox_row(path, rows[2].id);
  ASSERT_TRUE(shown.has_value());
  EXPECT_EQ(shown->name, "order.e2");
  EXPECT_EQ(shown->event_id, rows[2].event_id);
  EXPECT_FALSE(n::outbox_row(path, rows[4].id + 1).has_value());

  EXPECT_EQ(n::purge_outbox(path, {rows[1].id, rows[3].id, rows[4].id + 50}), 2u);
  EXPECT_EQ(names(n::list_outbox(path)), (std::vector<std::string>{"order.e0", "order.e2", "order.e4"}));
  {
    auto reopened = n::make_sqlite_outbox(outbox_config(path));
    EXPECT_EQ(reopened->stats().depth, 3u) << "the next start sends what is left";
  }
  EXPECT_EQ(n::purge_outbox(path), 3u);
  EXPECT_TRUE(n::list_outbox(path).empty());
}

TEST(SqliteOutboxRows, ReadingWorksWhileAnOutboxWritesAndPurgingIsRefused) {
  TempDir dir;
  const std::string path = dir.file("outbox.db");
  auto outbox = n::make_sqlite_outbox(outbox_config(path));
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (std::uint64_t i = 0; !stop.load() && i < 2000; ++i) push(*outbox, "order.w", i + 1);
  });
  std::size_t last = 0;
  for (int i = 0; i < 20; ++i) {
    const auto rows = n::list_outbox(path, 100000);
    EXPECT_GE(rows.size(), last) << "committed rows only grow while nothing is sent";
    last = rows.size();
    std::this_thread::sleep_for(2ms);
  }
  stop.store(true);
  writer.join();
  try {
    n::purge_outbox(path);
    ADD_FAILURE() << "purged a file a running outbox holds";
  } catch (const n::OutboxError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find("stop the service first"), std::string::npos) << message;
  }
  EXPECT_EQ(n::list_outbox(path, 100000).size(), outbox->stats().stored);
  outbox.reset();
  EXPECT_GT(n::purge_outbox(path), 0u) << "once the outbox is gone";
}

TEST(SqliteOutboxRows, MissingFilesAndFilesWithoutAnOutboxAreRefusedNamingThem) {
  TempDir dir;
  const std::string missing = dir.file("missing.db");
  try {
    n::list_outbox(missing);
    ADD_FAILURE() << "listed a missing file";
  } catch (const n::OutboxError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(missing)) << "never created";
  const std::string other = dir.file("durable.db");
  store_at(other);
  try {
    n::outbox_row(other, 1);
    ADD_FAILURE() << "read a file without an outbox";
  } catch (const n::OutboxError& e) {
    EXPECT_NE(std::string(e.what()).find("no outbox table"), std::string::npos) << e.what();
  }
  EXPECT_THROW(n::purge_outbox(other), n::OutboxError);
}

}  // namespace
