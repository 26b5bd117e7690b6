// Interop with a third-party client: nats.js (the npm package `nats`, run by node) and a Bridge
// over the NATS transport exchange envelopes through a real nats-server, both ways. The node
// side (peer.mjs) builds and checks envelopes from docs/envelope.md and envelope.schema.json
// alone, so these tests prove the wire format, not just that our encoder agrees with our decoder.
//
// Skipped when node is not installed or tests/transports/nats/interop/node_modules is missing (run
// tests/transports/nats/interop/install.sh). Every wait is bounded; the node child is stopped by its PID
// and gets SIGKILL if this test's thread dies first.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "child_process.hpp"
#include "nats_server.hpp"
#include "notifications/bridge.hpp"
#include "notifications/context.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transports/jetstream.hpp"
#include "notifications/transports/nats.hpp"
#include "wait.hpp"

#ifndef INTEROP_DIR
#error "INTEROP_DIR (the tests/transports/nats/interop source folder) must be defined by the build"
#endif

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

const std::filesystem::path kInteropDir{INTEROP_DIR};
constexpr auto kPeerStartTimeout = 20s;  // node start, module loading, connect, subscribe
constexpr auto kPeerResultTimeout = 15s;  // the peer itself gives up after 10 s
constexpr auto kPeerExitTimeout = 5s;
constexpr auto kDeliveryTimeout = 10s;


// The node executable: the first "node" on PATH, else /usr/bin/node; empty when there is none.
std::string find_node() {
  if (const char* path = std::getenv("PATH")) {
    std::istringstream dirs(path);
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
      if (dir.empty()) continue;
      const std::string candidate = dir + "/node";
      if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate)) {
        return candidate;
      }
    }
  }
  return ::access("/usr/bin/node", X_OK) == 0 ? "/usr/bin/node" : "";
}

// One child process (node peer.mjs ...) with its stdout and stderr on pipes.
// Thread-safety: not thread-safe; the test thread owns it. The child gets SIGKILL when the thread
// that started it exits, and when this object is destroyed before the child ended.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    const test_support::SpawnedChild child = test_support::spawn_child(args);  // output on pipes
    pid_ = child.pid;
    out_fd_ = child.stdout_fd;
    err_fd_ = child.stderr_fd;
  }

  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
    close_all({out_fd_, err_fd_});
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // The next line the child wrote on stdout (without the newline); nothing when `timeout` passed
  // or stdout closed first.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (const auto newline = out_.find('\n'); newline != std::string::npos) {
        std::string line = out_.substr(0, newline);
        out_.erase(0, newline + 1);
        return line;
      }
      if (out_fd_ < 0) return std::nullopt;  // EOF and no complete line left
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pump(static_cast<int>(std::min<long long>(left.count(), 100)));
    }
  }

  // The exit status once the child exited within `timeout`; otherwise kills it (SIGKILL by PID),
  // reaps it and returns nothing.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return exit_status_;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = 0;
        drain();
        if (WIFEXITED(status)) exit_status_ = WEXITSTATUS(status);
        else exit_status_ = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        return exit_status_;
      }
      if (r < 0 && errno != EINTR) return std::nullopt;
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        pid_ = 0;
        drain();
        return std::nullopt;
      }
      pump(10);  // keeps the pipes flowing while waiting
    }
  }

  // What the child wrote so far, for failure messages.
  std::string diagnostics() {
    pump(0);
    return "child stdout (unread): " + out_ + "\nchild stderr: " + err_;
  }

 private:
  static void close_all(std::initializer_list<int> fds) {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
  }

  // Reads what is available on stdout and stderr, waiting at most `wait_ms` for something.
  void pump(int wait_ms) {
    pollfd fds[2];
    int count = 0;
    if (out_fd_ >= 0) fds[count++] = {out_fd_, POLLIN, 0};
    if (err_fd_ >= 0) fds[count++] = {err_fd_, POLLIN, 0};
    if (count == 0) {
      if (wait_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
      return;
    }
    if (::poll(fds, count, wait_ms) <= 0) return;
    for (int i = 0; i < count; ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const bool is_out = fds[i].fd == out_fd_;
      read_some(is_out ? out_fd_ : err_fd_, is_out ? out_ : err_);
    }
  }

  // One read; closes the descriptor at EOF or on error.
  static void read_some(int& fd, std::string& into) {
    char buffer[4096];
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got > 0) {
      into.append(buffer, static_cast<std::size_t>(got));
    } else if (got == 0 || errno != EINTR) {
      ::close(fd);
      fd = -1;
    }
  }

  // Everything still in the pipes of an exited child (bounded: the writers are gone).
  void drain() {
    const auto deadline = std::chrono::steady_clock::now() + 1s;
    while ((out_fd_ >= 0 || err_fd_ >= 0) && std::chrono::steady_clock::now() < deadline) pump(50);
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string out_;
  std::string err_;
  std::optional<int> exit_status_;
};

class NatsInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    node_ = find_node();
    if (node_.empty()) GTEST_SKIP() << "node not found on PATH nor at /usr/bin/node";
    for (const char* package : {"nats", "ajv"}) {
      const auto dir = kInteropDir / "node_modules" / package;
      if (!std::filesystem::is_directory(dir)) {
        GTEST_SKIP() << dir.string() << " is missing: run tests/transports/nats/interop/install.sh";
      }
    }
    // Started on the test body's thread, which outlives the server (see NatsServer). With
    // JetStream, for the jetstream:// cases; core NATS is the same with it.
    test_support::NatsServerOptions options;
    options.jetstream = true;
    server_ = std::make_unique<test_support::NatsServer>(options);
  }

  // `node peer.mjs <url> interop <mode> [argument]`, started now.
  std::unique_ptr<Child> start_peer(const std::string& mode, const std::string& argument = {}) {
    std::vector<std::string> args{node_, (kInteropDir / "peer.mjs").string(), server_->url(), "interop", mode};
    if (!argument.empty()) args.push_back(argument);
    return std::make_unique<Child>(args);
  }

  // The default options, but for `headers`.
  std::shared_ptr<n::Transport> transport(const std::string& name, bool headers = n::NatsOptions{}.headers) {
    n::NatsOptions options;
    options.servers = {server_->url()};
    options.name = name;
    options.headers = headers;
    return n::make_nats_transport(options);
  }

  // jetstream:// on stream "INTEROP" for the subjects under the prefix.
  std::shared_ptr<n::Transport> jetstream_transport(const std::string& name) {
    n::JetStreamOptions options;
    options.connection.servers = {server_->url()};
    options.connection.name = name;
    options.stream = "INTEROP";
    options.subjects = {"interop.>"};
    return n::make_jetstream_transport(options);
  }

  // The bus publishes one event (with context and tags); the peer receives and checks it.
  // Returns the peer's result line as JSON, after checking what the body carried.
  json js_receives_one_event(bool headers);

  static n::BridgeConfig config(std::vector<std::string> forward,
                                std::vector<std::string> subscribe) {
    n::BridgeConfig config;
    config.app = "cpp";
    config.prefix = "interop";
    config.forward = std::move(forward);
    config.subscribe = std::move(subscribe);  // relative to the prefix
    return config;
  }

  std::string server_log() { return server_ ? "\nnats-server log:\n" + server_->log_tail() : ""; }

  std::string node_;
  std::unique_ptr<test_support::NatsServer> server_;
};

// The peer's result line as JSON; a discarded value when it is not JSON.
json parse_result(const std::string& line) { return json::parse(line, nullptr, false); }

json NatsInterop::js_receives_one_event(bool headers) {
  auto peer = start_peer("receive");
  const auto ready = peer->read_line(kPeerStartTimeout);
  EXPECT_EQ(ready, std::optional<std::string>("ready")) << peer->diagnostics() << server_log();
  if (ready != std::optional<std::string>("ready")) return json();

  n::Notifier notifier;
  n::Bridge bridge(notifier, transport("interop-cpp-sender", headers), config({"order.>"}, {}));
  bridge.start();
  {
    n::ContextScope request({{"request_id", "r-42"}});
    n::tagged("checkout", [&] { notifier.instrument("order.placed", json{{"order_id", 7}}); });
  }
  EXPECT_TRUE(bridge.flush(kDeliveryTimeout)) << bridge.health().dump() << server_log();

  const auto line = peer->read_line(kPeerResultTimeout);
  EXPECT_TRUE(line.has_value()) << "no result line from the peer\n" << peer->diagnostics() << server_log();
  if (!line) return json();
  const json result = parse_result(*line);
  EXPECT_FALSE(result.is_discarded()) << "not JSON: " << *line << "\n" << peer->diagnostics();
  if (result.is_discarded()) return json();
  EXPECT_EQ(result.value("ok", false), true) << *line << "\n" << peer->diagnostics();
  EXPECT_EQ(result.value("subject", ""), "interop.order.placed") << *line;
  EXPECT_EQ(result.value("name", ""), "order.placed") << *line;
  EXPECT_EQ(result.value("producer", ""), "cpp") << *line;
  EXPECT_TRUE(result.contains("payload") && result["payload"].is_object()) << *line;
  EXPECT_EQ(result.value("payload", json::object()).value("order_id", -1), 7) << *line;
  EXPECT_EQ(result.value("payload", json::object()).size(), 1u) << "context or tags leaked into the payload: " << *line;
  EXPECT_EQ(result.value("context", json()), json({{"request_id", "r-42"}})) << *line;
  EXPECT_EQ(result.value("tags", json()), json({{"checkout", true}})) << *line;
  EXPECT_EQ(peer->wait_exit(kPeerExitTimeout), std::optional<int>(0)) << peer->diagnostics();

  const n::ShutdownReport report = bridge.shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;
  EXPECT_EQ(report.sent, 1u) << report.detail;
  return result;
}

// With the default options: the envelope body alone, which nats.js reads as it is.
TEST_F(NatsInterop, JsReceivesWhatTheBusPublished) {
  ASSERT_FALSE(n::NatsOptions{}.headers) << "this case is about the default: bodies only";
  const json result = js_receives_one_event(false);
  ASSERT_TRUE(result.is_object());
  EXPECT_TRUE(result["headers"].is_null()) << result.dump();
}

// With headers on: nats.js sees Nats-Msg-Id (== the body's id) and the envelope's Content-Type.
TEST_F(NatsInterop, JsReceivesTheHeadersWhenEnabled) {
  const json result = js_receives_one_event(true);
  ASSERT_TRUE(result.is_object());
  ASSERT_TRUE(result["headers"].is_object()) << result.dump();
  EXPECT_EQ(result["headers"].value("Nats-Msg-Id", ""), result.value("id", "-")) << result.dump();
  EXPECT_EQ(result["headers"].value("Content-Type", ""), n::Envelope::kContentType) << result.dump();
}

TEST_F(NatsInterop, BusDeliversWhatJsPublished) {
  n::Notifier notifier;
  std::mutex mutex;
  std::vector<n::Event> received;  // guarded by mutex; filled on the bridge's dispatcher thread
  n::Subscription listener = notifier.subscribe("interop.from_js", [&](const n::Event& event) {
    std::lock_guard lock(mutex);
    received.push_back(event);
  });
  auto count = [&] {
    std::lock_guard lock(mutex);
    return received.size();
  };

  // Subscribes to "interop.>" (the pattern is relative to the prefix); start() returns once the
  // server has the subscription.
  n::Bridge bridge(notifier, transport("interop-cpp-receiver"), config({}, {">"}));
  bridge.start();

  auto peer = start_peer("send");
  const auto line = peer->read_line(kPeerStartTimeout);
  ASSERT_TRUE(line.has_value()) << "no result line from the peer\n"
                                << peer->diagnostics() << server_log();
  const json result = parse_result(*line);
  ASSERT_FALSE(result.is_discarded()) << "not JSON: " << *line << "\n" << peer->diagnostics();
  ASSERT_EQ(result.value("ok", false), true) << *line << "\n" << peer->diagnostics();
  EXPECT_EQ(result.value("subject", ""), "interop.interop.from_js") << *line;
  EXPECT_EQ(peer->wait_exit(kPeerExitTimeout), std::optional<int>(0)) << peer->diagnostics();

  ASSERT_TRUE(test_support::wait_until([&] { return count() >= 1; }, kDeliveryTimeout))
      << "no remote event interop.from_js; bridge health: " << bridge.health().dump()
      << server_log();
  std::this_thread::sleep_for(100ms);  // a duplicate would arrive about now
  const n::ShutdownReport report = bridge.shutdown(5s);
  EXPECT_TRUE(report.clean) << report.detail;

  std::lock_guard lock(mutex);
  ASSERT_EQ(received.size(), 1u);
  const n::Event& event = received.front();
  EXPECT_EQ(event.name(), "interop.from_js");
  EXPECT_TRUE(event.remote());
  ASSERT_TRUE(event.origin().has_value());
  EXPECT_EQ(event.origin()->producer, "nodejs");
  EXPECT_FALSE(event.origin()->producer_instance.empty());
  EXPECT_EQ(event.id(), result.value("id", "")) << "the receiver keeps the sender's id";
  EXPECT_EQ(event.duration(), std::chrono::nanoseconds(0));
  const auto age = std::chrono::system_clock::now() - event.time();
  EXPECT_LT(std::chrono::abs(age), std::chrono::minutes(5)) << "the envelope's time was misread";
  ASSERT_TRUE(event.payload().is_object()) << event.payload().dump();
  EXPECT_EQ(event.payload().value("hello", ""), "from nats.js") << event.payload().dump();
  EXPECT_EQ(event.payload().value("n", -1), 42) << event.payload().dump();
  EXPECT_EQ(event.context(), json({{"request_id", "js-1"}}));
  EXPECT_EQ(event.tags(), json({{"from_js", true}}));

  const json health = bridge.health();
  EXPECT_EQ(health["counters"].value("malformed", 1), 0) << health.dump();
  EXPECT_EQ(health["counters"].value("received", 0), 1) << health.dump();
}

// nats.js reads, through its own JetStream consumer, the stream a Bridge wrote over jetstream://:
// the stored message is the envelope body with its Nats-Msg-Id and Content-Type headers.
TEST_F(NatsInterop, JsReadsTheStreamTheBusWroteWithJetStream) {
  n::Notifier notifier;
  n::Bridge bridge(notifier, jetstream_transport("interop-cpp-jetstream-sender"), config({"order.>"}, {}));
  bridge.start();
  {
    n::ContextScope request({{"request_id", "r-42"}});
    n::tagged("checkout", [&] { notifier.instrument("order.placed", json{{"order_id", 7}}); });
  }
  ASSERT_TRUE(bridge.flush(kDeliveryTimeout)) << "not acknowledged: " << bridge.health().dump() << server_log();
  auto peer = start_peer("js-read", "INTEROP");
  const auto line = peer->read_line(kPeerResultTimeout);
  ASSERT_TRUE(line.has_value()) << "no result line from the peer\n" << peer->diagnostics() << server_log();
  const json result = parse_result(*line);
  ASSERT_FALSE(result.is_discarded()) << "not JSON: " << *line << "\n" << peer->diagnostics();
  ASSERT_EQ(result.value("ok", false), true) << *line << "\n" << peer->diagnostics();
  EXPECT_EQ(result.value("subject", ""), "interop.order.placed") << *line;
  EXPECT_EQ(result.value("payload", json::object()).value("order_id", -1), 7) << *line;
  EXPECT_EQ(result.value("context", json()), json({{"request_id", "r-42"}})) << *line;
  EXPECT_EQ(result.value("tags", json()), json({{"checkout", true}})) << *line;
  ASSERT_TRUE(result["headers"].is_object()) << "JetStream messages carry their id as a header: " << *line;
  EXPECT_EQ(result["headers"].value("Nats-Msg-Id", ""), result.value("id", "-")) << *line;
  EXPECT_EQ(result["headers"].value("Content-Type", ""), n::Envelope::kContentType) << *line;
  EXPECT_EQ(peer->wait_exit(kPeerExitTimeout), std::optional<int>(0)) << peer->diagnostics();
  EXPECT_TRUE(bridge.shutdown(5s).clean);
}

// A Bridge over jetstream:// receives what nats.js published with JetStream (acknowledged by the
// server, its id as the message id).
TEST_F(NatsInterop, BusConsumesWhatJsPublishedWithJetStream) {
  n::Notifier notifier;
  std::mutex mutex;
  std::vector<n::Event> received;  // guarded by mutex
  n::Subscription listener = notifier.subscribe("interop.from_js", [&](const n::Event& event) {
    std::lock_guard lock(mutex);
    received.push_back(event);
  });
  // start() returns once the stream and the subscription's consumer exist.
  n::Bridge bridge(notifier, jetstream_transport("interop-cpp-jetstream-receiver"), config({}, {">"}));
  bridge.start();
  auto peer = start_peer("js-send");
  const auto line = peer->read_line(kPeerStartTimeout);
  ASSERT_TRUE(line.has_value()) << "no result line from the peer\n" << peer->diagnostics() << server_log();
  const json result = parse_result(*line);
  ASSERT_FALSE(result.is_discarded()) << "not JSON: " << *line << "\n" << peer->diagnostics();
  ASSERT_EQ(result.value("ok", false), true) << *line << "\n" << peer->diagnostics();
  EXPECT_EQ(peer->wait_exit(kPeerExitTimeout), std::optional<int>(0)) << peer->diagnostics();
  ASSERT_TRUE(test_support::wait_until(
      [&] {
        std::lock_guard lock(mutex);
        return !received.empty();
      },
      kDeliveryTimeout))
      << "no remote event interop.from_js; bridge health: " << bridge.health().dump() << server_log();
  std::this_thread::sleep_for(100ms);  // a duplicate would arrive about now
  EXPECT_TRUE(bridge.shutdown(5s).clean);
  std::lock_guard lock(mutex);
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received.front().id(), result.value("id", "")) << "the receiver keeps the sender's id";
  EXPECT_EQ(received.front().payload().value("n", -1), 42) << received.front().payload().dump();
  EXPECT_EQ(received.front().context(), json({{"request_id", "js-1"}}));
}

}  // namespace
