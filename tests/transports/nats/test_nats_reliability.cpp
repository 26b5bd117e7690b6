// The NATS transport when the server is absent, gone, or strict: starting before any server
// exists, headers decided per connection, the server's max_payload, an honest flush, stop()
// bounded by its deadline while reconnecting, and log lines that stay few under a flood of
// per-message errors. Real nats-server processes on 127.0.0.1.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "nats_server.hpp"
#include "notifications/bridge.hpp"
#include "notifications/logging.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/nats.hpp"
#include "scale.hpp"
#include "transport_test_support.hpp"
#include "nats_test_options.hpp"
#include "wait.hpp"

namespace {

namespace n = notifications;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test_support::error_of;
using test_support::in;
using test_support::NatsServer;
using test_support::publish1;
using test_support::wait_until;

using test_support::options_for;
using test_support::options_with_headers;

std::string connection_of(const n::Transport& t) { return t.health()["connection"].get<std::string>(); }

// Collects what a transport receives.
struct Inbox {
  std::mutex mutex;
  std::vector<n::Message> messages;
  n::DeliveryHandler handler() {
    return [this](n::Delivery&& d) {
      std::lock_guard lock(mutex);
      messages.push_back(std::move(d.message));
    };
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return messages.size();
  }
  std::vector<n::Message> copy() {
    std::lock_guard lock(mutex);
    return messages;
  }
};

// ---- B: headers are decided per connection ------------------------------------------------------

// A publish before the first connection (cnats has no server INFO yet, so it refuses headers)
// goes out without them, and must not switch headers off for the connection that follows.
TEST(NatsReliability, HeadersAfterPublishingBeforeTheFirstConnect) {
  NatsServer server;
  server.stop();  // the port is kept: the transport starts before any server answers there
  auto options = options_with_headers(server.url());
  options.retry_on_failed_connect = true;
  auto sending = n::make_nats_transport(options);
  sending->start();
  ASSERT_NE(connection_of(*sending), "connected");
  const n::Message early{"hb.early", "{}", {{"Nats-Msg-Id", "early"}}};
  EXPECT_EQ(publish1(*sending, early).published, 1u);  // buffered until connected

  server.start();
  ASSERT_TRUE(wait_until([&] { return connection_of(*sending) == "connected"; }, 20s)) << sending->health().dump();
  auto receiving = n::make_nats_transport(options_for(server.url()));
  receiving->start();
  Inbox inbox;
  receiving->subscribe("hb.late", "", inbox.handler());
  const n::Message late{"hb.late", "{}", {{"Nats-Msg-Id", "late"}, {"traceparent", "tp-1"}}};
  ASSERT_EQ(publish1(*sending, late).published, 1u);
  ASSERT_TRUE(sending->flush(in(10s)));
  ASSERT_TRUE(wait_until([&] { return inbox.size() == 1; }, 10s));
  const auto got = inbox.copy();
  EXPECT_EQ(got[0].id, "late");
  EXPECT_EQ(got[0].header("traceparent"), "tp-1");
  sending->stop(in(10s));
  receiving->stop(in(10s));
}

// A server without headers (no_header_support) turns them off for its connection only: after a
// reconnect to a server with headers, messages carry them again.
TEST(NatsReliability, HeadersAreAskedAgainAfterEveryReconnect) {
  NatsServer server;
  const std::string config_file = server.dir() + "/nats.conf";
  std::string config;
  {
    std::ifstream in(config_file);
    std::stringstream text;
    text << in.rdbuf();
    config = text.str();
  }
  const auto write_config = [&](const std::string& text) {
    std::ofstream out(config_file, std::ios::trunc);
    out << text;
  };
  server.stop();
  write_config(config + "\nno_header_support: true\n");
  server.start();
  auto sending = n::make_nats_transport(options_with_headers(server.url()));
  sending->start();
  auto receiving = n::make_nats_transport(options_for(server.url()));
  receiving->start();
  Inbox inbox;
  receiving->subscribe("hr.>", "", inbox.handler());
  const n::Message m{"hr.x", "{}", {{"Nats-Msg-Id", "m"}}};
  ASSERT_EQ(publish1(*sending, m).published, 1u);  // the body alone
  ASSERT_TRUE(sending->flush(in(10s)));
  ASSERT_TRUE(wait_until([&] { return inbox.size() == 1; }, 10s));
  EXPECT_TRUE(inbox.copy()[0].headers.empty());

  server.stop();
  write_config(config);
  server.start();
  ASSERT_TRUE(wait_until([&] { return connection_of(*sending) == "connected" && connection_of(*receiving) == "connected"; },
                         20s));
  // Until the receiver's subscription is back, messages may be lost (core NATS), and a message
  // published while the sender's connection was still settling may go without headers: send
  // until one with headers arrives (bounded). Before the fix none ever did.
  const auto with_headers = [&] {
    for (const auto& received : inbox.copy()) {
      if (received.id == "m") return true;
    }
    return false;
  };
  bool arrived = false;
  for (int i = 0; i < 200 && !arrived; ++i) {
    ASSERT_EQ(publish1(*sending, m).published, 1u);
    sending->flush(in(1s));
    arrived = wait_until(with_headers, 50ms);
  }
  EXPECT_TRUE(arrived) << inbox.size() << " message(s) arrived, none with headers";
  sending->stop(in(10s));
  receiving->stop(in(10s));
}

// ---- C: start() with retry_on_failed_connect does not wait for a server --------------------------

// The bound only detects blocking, not speed: connect_timeout is 3 s, so a start() that waits
// one connect timeout (or a subscribe flush bounded by it) takes >= 3 s, while one that does
// not wait returns in milliseconds; 1.5 s lies far from both, even on a loaded 2-core machine.
TEST(NatsReliability, StartWithRetryReturnsWithoutWaitingAndSubscribesOnConnect) {
  NatsServer server;
  server.stop();
  auto options = options_for(server.url());
  options.retry_on_failed_connect = true;
  options.connect_timeout = 3000ms;
  options.no_echo = false;

  n::Notifier notifier;
  std::atomic<int> remote{0};
  auto listener = notifier.subscribe("early.>", [&](const n::Event& e) {
    if (e.remote()) remote.fetch_add(1);
  });
  n::BridgeConfig config;
  config.app = "early";
  config.prefix = "t";
  config.subscribe = {"early.>"};
  n::Bridge bridge(notifier, n::make_nats_transport(options), config);
  const auto started = Clock::now();
  bridge.start();  // transport start + subscribe while nothing listens
  const auto took = Clock::now() - started;
  EXPECT_LT(took, 1500ms) << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";

  // The subscription made before the connection reaches the server once it is up.
  server.start();
  ASSERT_TRUE(wait_until([&] { return bridge.health()["transport"]["connection"] == "connected"; }, 20s))
      << bridge.health().dump();
  n::Notifier sender_notifier;
  n::BridgeConfig sender_config;
  sender_config.app = "sender";
  sender_config.prefix = "t";
  sender_config.forward = {"early.>"};
  n::Bridge sender(sender_notifier, n::make_nats_transport(options_for(server.url())), sender_config);
  sender.start();
  bool arrived = false;
  for (int i = 0; i < 200 && !arrived; ++i) {
    sender_notifier.instrument("early.ping", {{"i", i}});
    arrived = wait_until([&] { return remote.load() > 0; }, 50ms);
  }
  EXPECT_TRUE(arrived) << bridge.health().dump();
  sender.shutdown(10s);
  bridge.shutdown(10s);
}

// ---- D: the server's max_payload -----------------------------------------------------------------

// A message larger than the server's max_payload fails for good (never retried): published is its
// index, transient is false, the error names the size and the limit.
TEST(NatsReliability, MessageOverMaxPayloadIsAPermanentFailure) {
  NatsServer server;
  server.stop();
  {
    std::ofstream config(server.dir() + "/nats.conf", std::ios::app);
    config << "\nmax_payload: 1024\n";
  }
  server.start();
  auto transport = n::make_nats_transport(options_with_headers(server.url()));
  EXPECT_EQ(transport->max_message_bytes(), 0u);  // not connected: unknown
  transport->start();
  EXPECT_EQ(transport->max_message_bytes(), 1024u);

  const n::Message small{"mp.x", std::string(100, 'a'), {{"Nats-Msg-Id", "1"}}};
  const n::Message big_body{"mp.x", std::string(2000, 'b'), {{"Nats-Msg-Id", "2"}}};
  std::vector<n::Message> batch{small, small, big_body, small};
  n::PublishResult r = transport->publish(batch);
  EXPECT_EQ(r.published, 2u);
  EXPECT_FALSE(r.transient);
  EXPECT_NE(r.error.find("2000"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("1024"), std::string::npos) << r.error;

  // The body fits, body and headers do not: still permanent.
  const n::Message big_headers{"mp.x", std::string(1000, 'c'), {{"Nats-Msg-Id", std::string(100, 'h')}}};
  r = publish1(*transport, big_headers);
  EXPECT_EQ(r.published, 0u);
  EXPECT_FALSE(r.transient) << r.error;
  EXPECT_NE(r.error.find("1024"), std::string::npos) << r.error;
  // The same without headers (the default).
  auto bodies = n::make_nats_transport(options_for(server.url()));
  bodies->start();
  r = publish1(*bodies, big_body);
  EXPECT_EQ(r.published, 0u);
  EXPECT_FALSE(r.transient) << r.error;
  EXPECT_NE(r.error.find("1024"), std::string::npos) << r.error;

  // The connection survives: a small message still goes through.
  EXPECT_EQ(publish1(*transport, small).published, 1u);
  EXPECT_TRUE(transport->flush(in(10s)));
  EXPECT_EQ(connection_of(*transport), "connected");
  transport->stop(in(10s));
  bodies->stop(in(10s));
  EXPECT_EQ(transport->max_message_bytes(), 0u);
}

// ---- E: flush is true only after a round trip ---------------------------------------------------

TEST(NatsReliability, FlushIsFalseWhileDisconnectedAndTrueOnceDelivered) {
  NatsServer server;
  auto options = options_for(server.url());
  options.no_echo = false;  // its own subscription: re-sent on reconnect before the buffered messages
  auto transport = n::make_nats_transport(options);
  transport->start();
  Inbox inbox;
  transport->subscribe("fl.>", "", inbox.handler());
  server.stop();
  // cnats reports "reconnecting" before its disconnected callback ran; the transport counts what
  // it buffers from that callback on (health's "disconnects").
  ASSERT_TRUE(wait_until([&] { return connection_of(*transport) == "reconnecting" && transport->health()["disconnects"] >= 1; },
                         20s))
      << transport->health().dump();
  std::vector<n::Message> batch(5, n::Message{"fl.x", std::string(64, 'x'), {{"Nats-Msg-Id", "f"}}});
  ASSERT_EQ(transport->publish(batch).published, batch.size());
  EXPECT_GT(transport->health()["reconnect_buffered_bytes"].get<std::int64_t>(), 0) << transport->health().dump();
  const auto started = Clock::now();
  EXPECT_FALSE(transport->flush(in(300ms)));
  EXPECT_LT(Clock::now() - started, 300ms + 1s);

  server.start();
  ASSERT_TRUE(wait_until([&] { return connection_of(*transport) == "connected"; }, 20s)) << transport->health().dump();
  EXPECT_TRUE(transport->flush(in(10s)));
  EXPECT_TRUE(wait_until([&] { return inbox.size() == batch.size(); }, 10s)) << inbox.size();
  transport->stop(in(10s));
}

// A flush that starts while the server is still up and ends after it went away is no success.
TEST(NatsReliability, FlushIsFalseWhenTheServerIsGoneBeforeItsDeadline) {
  NatsServer server;
  auto transport = n::make_nats_transport(options_for(server.url()));
  transport->start();
  server.stop();
  ASSERT_TRUE(wait_until([&] { return connection_of(*transport) != "connected"; }, 20s));
  ASSERT_EQ(publish1(*transport, n::Message{"fl.y", "{}", {}}).published, 1u);
  EXPECT_FALSE(transport->flush(in(200ms)));
  transport->stop(in(1s));
}

// ---- G: stop() keeps its deadline ---------------------------------------------------------------

// stop() with a 300 ms deadline while the server is unreachable returns within the deadline plus
// a small constant; 1 s more is a generous bound that still catches a fixed multi-second wait.
TEST(NatsReliability, StopKeepsItsDeadlineWhileReconnecting) {
  for (const bool ever_connected : {true, false}) {
    NatsServer server;
    auto options = options_for(server.url());
    options.retry_on_failed_connect = true;
    if (!ever_connected) server.stop();
    auto transport = n::make_nats_transport(options);
    transport->start();
    Inbox inbox;
    transport->subscribe("st.>", "", inbox.handler());
    if (ever_connected) {
      server.stop();
      ASSERT_TRUE(wait_until([&] { return connection_of(*transport) == "reconnecting"; }, 20s));
    }
    std::vector<n::Message> batch(10, n::Message{"st.x", "{}", {}});
    transport->publish(batch);
    const auto started = Clock::now();
    transport->stop(in(300ms));
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    std::printf("stop(300 ms) while %s took %lld ms\n", ever_connected ? "reconnecting" : "never connected",
                static_cast<long long>(took.count()));
    EXPECT_LT(took, 1300ms) << (ever_connected ? "reconnecting" : "never connected");
  }
}

// A subscription handler blocked for seconds: stop() does not wait for it past the deadline.
TEST(NatsReliability, StopKeepsItsDeadlineWithAHandlerBlockedForSeconds) {
  NatsServer server;
  auto receiving = n::make_nats_transport(options_for(server.url()));
  receiving->start();
  std::atomic<int> entered{0};
  receiving->subscribe("blk.>", "", [&](n::Delivery&&) {
    entered.fetch_add(1);
    std::this_thread::sleep_for(2s);
  });
  auto sending = n::make_nats_transport(options_for(server.url()));
  sending->start();
  std::vector<n::Message> batch(3, n::Message{"blk.x", "{}", {}});
  ASSERT_EQ(sending->publish(batch).published, batch.size());
  ASSERT_TRUE(sending->flush(in(10s)));
  ASSERT_TRUE(wait_until([&] { return entered.load() >= 1; }, 10s));
  const auto started = Clock::now();
  receiving->stop(in(300ms));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
  std::printf("stop(300 ms) with a handler blocked for 2 s took %lld ms\n", static_cast<long long>(took.count()));
  EXPECT_LT(took, 1300ms);
  sending->stop(in(10s));
}

// ---- A: per-event log lines are rate-limited ----------------------------------------------------

// Captures the library's log lines (notifications/logging.hpp) while alive; the lines come from
// the transport's threads, so they are kept behind a mutex the handler shares.
class LogCapture {
 public:
  LogCapture() {
    n::set_log_handler([lines = lines_](n::LogLevel level, std::string_view line) {
      const std::lock_guard<std::mutex> lock(lines->mutex);
      lines->text.append("[").append(n::to_string(level)).append("] ").append(line).append("\n");
    });
  }
  ~LogCapture() { n::set_log_handler({}); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // What was logged so far; stops capturing.
  std::string finish() {
    n::set_log_handler({});
    const std::lock_guard<std::mutex> lock(lines_->mutex);
    return lines_->text;
  }

 private:
  struct Lines {
    std::mutex mutex;
    std::string text;
  };
  const std::shared_ptr<Lines> lines_ = std::make_shared<Lines>();
};

int count_lines_with(const std::string& text, const std::string& needle) {
  int count = 0;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) count += line.find(needle) != std::string::npos ? 1 : 0;
  return count;
}

TEST(NatsReliability, SlowConsumerLogLinesAreRateLimited) {
  NatsServer server;
  auto options = options_for(server.url());
  options.pending_messages_limit = 1;
  std::uint64_t events = 0;
  std::string log;
  Clock::duration took{};
  {
    LogCapture capture;
    const auto started = Clock::now();
    auto receiving = n::make_nats_transport(options);
    receiving->start();
    receiving->subscribe("sc.>", "", [](n::Delivery&&) { std::this_thread::sleep_for(200us); });
    auto sending = n::make_nats_transport(options_for(server.url()));
    sending->start();
    std::vector<n::Message> batch(50, n::Message{"sc.x", "{}", {}});
    for (int i = 0; i < 400 / test_support::kScale && receiving->health()["slow_consumer_events"].get<std::uint64_t>() < 200;
         ++i) {
      sending->publish(batch);
      sending->flush(in(5s));
    }
    sending->stop(in(10s));
    receiving->stop(in(10s));
    events = receiving->health()["slow_consumer_events"].get<std::uint64_t>();
    took = Clock::now() - started;
    log = capture.finish();
  }
  const int lines = count_lines_with(log, "Slow Consumer");
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(took).count();
  ASSERT_GT(events, 10u) << "too few slow-consumer events to tell";
  // At most about one line a second per reason (+2: the first line, and one at stop).
  EXPECT_LE(lines, seconds + 2) << events << " events, " << lines << " lines in " << seconds << " s\n" << log;
  EXPECT_NE(log.find("suppressed"), std::string::npos) << log;
}

// ---- connect failures say what happened, what was offered and what to check -----------------

// No "function:123" (cnats' C source locations); URLs are 127.0.0.1:<port>, which do not match.
bool has_source_location(const std::string& text) {
  return std::regex_search(text, std::regex("[a-zA-Z_]+:[0-9]+"));
}

TEST(NatsReliability, ConnectErrorsNameTheCredentialsOfferedAndWhatToCheck) {
  test_support::NatsServerOptions server_options;
  server_options.user = "alice";
  server_options.password = "s3cret-pw";
  NatsServer server(server_options);

  auto wrong_password = options_for(server.url());
  wrong_password.user = "alice";
  wrong_password.password = "wrong-pw-123";
  auto token = options_for(server.url());
  token.token = "t0ken-xyz";
  const auto none = options_for(server.url());

  const std::string user_error = error_of([&] { n::make_nats_transport(wrong_password)->start(); });
  const std::string token_error = error_of([&] { n::make_nats_transport(token)->start(); });
  const std::string none_error = error_of([&] { n::make_nats_transport(none)->start(); });

  EXPECT_NE(user_error, token_error);
  EXPECT_NE(user_error, none_error);
  EXPECT_NE(token_error, none_error);
  EXPECT_NE(user_error.find("user \"alice\""), std::string::npos) << user_error;
  EXPECT_NE(token_error.find("a token"), std::string::npos) << token_error;
  EXPECT_NE(none_error.find("no credentials"), std::string::npos) << none_error;
  for (const std::string& error : {user_error, token_error, none_error}) {
    EXPECT_NE(error.find("cannot connect to " + server.url()), std::string::npos) << error;
    EXPECT_NE(error.find("refused"), std::string::npos) << error;
    EXPECT_NE(error.find("check "), std::string::npos) << error;
    EXPECT_EQ(error.find("wrong-pw-123"), std::string::npos) << error;
    EXPECT_EQ(error.find("s3cret-pw"), std::string::npos) << error;
    EXPECT_EQ(error.find("t0ken-xyz"), std::string::npos) << error;
    EXPECT_FALSE(has_source_location(error)) << error;
  }
}

TEST(NatsReliability, ConnectErrorWithNothingListeningSaysNoServerAnswered) {
  const int port = test_support::free_tcp_port();
  const std::string url = "nats://127.0.0.1:" + std::to_string(port);
  auto options = options_for(url);  // retry_on_failed_connect is off
  options.user = "alice";
  options.password = "hunter2";
  const std::string error = error_of([&] { n::make_nats_transport(options)->start(); });
  EXPECT_NE(error.find("cannot connect to " + url), std::string::npos) << error;
  EXPECT_NE(error.find("no server answered"), std::string::npos) << error;
  EXPECT_NE(error.find("check that nats-server runs"), std::string::npos) << error;
  EXPECT_NE(error.find("user \"alice\" with a password"), std::string::npos) << error;
  EXPECT_EQ(error.find("hunter2"), std::string::npos) << error;
  EXPECT_FALSE(has_source_location(error)) << error;
}

}  // namespace
