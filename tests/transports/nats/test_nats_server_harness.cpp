// The nats-server test harness itself: start, stop by PID, restart on the same port, crash, auth and
// TLS configs the server accepts, JetStream, a routed 3-node cluster, and start failures reported
// with the server log. Every wait is bounded. Needs /usr/sbin/nats-server and /usr/bin/openssl.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "nats_server.hpp"
#include "wait.hpp"

using namespace std::chrono_literals;
using test_support::NatsCluster;
using test_support::NatsServer;
using test_support::NatsServerOptions;

namespace {

// A TCP socket to 127.0.0.1:port (2 s send/receive timeouts); -1 when refused.
int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
  ::close(fd);
  return -1;
}

// What a raw NATS client saw: the server's INFO line, then the answer to `send` (until PONG or -ERR).
struct Exchange {
  bool connected = false;
  std::string info, answer;
};

Exchange talk(int port, const std::string& send = "") {
  Exchange ex;
  const int fd = connect_to(port);
  if (fd < 0) return ex;
  ex.connected = true;
  std::string got;
  char buf[4096];
  bool sent = false;
  for (int reads = 0; reads < 1000; ++reads) {  // each recv gives up after 2 s
    const auto line_end = got.find("\r\n");
    if (!sent && line_end != std::string::npos) {
      ex.info = got.substr(0, line_end);
      got.erase(0, line_end + 2);
      if (send.empty()) break;
      ::send(fd, send.data(), send.size(), MSG_NOSIGNAL);
      sent = true;
    }
    if (sent && (got.find("PONG") != std::string::npos || got.find("-ERR") != std::string::npos)) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ex.answer = got;
  ::close(fd);
  return ex;
}

std::string connect_line(const std::string& credentials) {
  return "CONNECT {\"verbose\":false,\"pedantic\":false" + credentials + "}\r\nPING\r\n";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(NatsServerHarness, StartsOnLoopbackAndAnswersWithInfo) {
  NatsServer server;
  EXPECT_TRUE(server.running());
  EXPECT_GT(server.pid(), 0);
  EXPECT_EQ(server.url(), "nats://127.0.0.1:" + std::to_string(server.port()));
  EXPECT_EQ(server.cluster_port(), 0);
  const Exchange ex = talk(server.port(), connect_line(""));
  ASSERT_TRUE(ex.connected);
  EXPECT_TRUE(contains(ex.info, "INFO {")) << ex.info;
  EXPECT_TRUE(contains(ex.answer, "PONG")) << ex.answer;
  const std::string varz = server.monitor_get("/varz");
  EXPECT_TRUE(contains(varz, "\"port\": " + std::to_string(server.port()))) << varz;
  EXPECT_TRUE(contains(varz, "\"host\": \"127.0.0.1\"")) << varz;
  EXPECT_TRUE(std::filesystem::is_directory(server.dir()));
}

TEST(NatsServerHarness, StopKillsByPidAndFreesThePort) {
  NatsServer server;
  const pid_t pid = server.pid();
  const int port = server.port();
  server.stop();
  EXPECT_EQ(server.pid(), 0);
  EXPECT_FALSE(server.running());
  errno = 0;
  EXPECT_EQ(::kill(pid, 0), -1);  // reaped: the PID no longer names our child
  EXPECT_EQ(errno, ESRCH);
  EXPECT_EQ(connect_to(port), -1);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as nats-server binds
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << "port " << port << " still taken";
  ::close(fd);
  server.stop();  // idempotent
  server.kill_hard();
  EXPECT_EQ(server.pid(), 0);
}

TEST(NatsServerHarness, RestartAndCrashKeepThePort) {
  NatsServer server;
  const int port = server.port();
  const pid_t first = server.pid();
  ASSERT_TRUE(talk(port).connected);
  server.restart();
  EXPECT_EQ(server.port(), port);
  EXPECT_NE(server.pid(), first);
  EXPECT_TRUE(contains(talk(port, connect_line("")).answer, "PONG"));

  const pid_t second = server.pid();
  server.kill_hard();
  EXPECT_EQ(server.pid(), 0);
  EXPECT_EQ(::kill(second, 0), -1);
  EXPECT_EQ(connect_to(port), -1);
  server.start();
  EXPECT_TRUE(server.running());
  EXPECT_TRUE(contains(talk(port, connect_line("")).answer, "PONG"));
  server.start();  // no-op while running
  EXPECT_TRUE(contains(server.log_tail(), "harness: start"));
}

TEST(NatsServerHarness, UserPasswordAuthIsEnforced) {
  NatsServerOptions o;
  o.user = "alice";
  o.password = "s3cr\"et\\pw";
  NatsServer server(o);
  const Exchange good = talk(server.port(), connect_line(R"(,"user":"alice","pass":"s3cr\"et\\pw")"));
  EXPECT_TRUE(contains(good.info, "\"auth_required\":true")) << good.info;
  EXPECT_TRUE(contains(good.answer, "PONG")) << good.answer;
  const Exchange bad = talk(server.port(), connect_line(R"(,"user":"alice","pass":"wrong")"));
  EXPECT_TRUE(contains(bad.answer, "-ERR")) << bad.answer;
  EXPECT_TRUE(contains(talk(server.port(), connect_line("")).answer, "-ERR"));
  EXPECT_FALSE(contains(server.log_tail(1 << 20), "s3cr")) << "the log must not show the password";
}

TEST(NatsServerHarness, TokenAuthIsEnforced) {
  NatsServerOptions o;
  o.token = "tok-123";
  NatsServer server(o);
  EXPECT_TRUE(contains(talk(server.port(), connect_line(R"(,"auth_token":"tok-123")")).answer, "PONG"));
  EXPECT_TRUE(contains(talk(server.port(), connect_line(R"(,"auth_token":"nope")")).answer, "-ERR"));
}

TEST(NatsServerHarness, TlsCertificatesAreGeneratedAndUsed) {
  NatsServerOptions o;
  o.tls = true;
  o.tls_verify_clients = true;
  NatsServer server(o);
  EXPECT_EQ(server.url(), "tls://127.0.0.1:" + std::to_string(server.port()));
  for (const auto& f : {server.ca_file(), server.client_cert_file(), server.client_key_file()}) {
    EXPECT_TRUE(std::filesystem::is_regular_file(f)) << f;
  }
  const std::string verify = "/usr/bin/openssl verify -CAfile " + server.ca_file() + " " +
                             server.client_cert_file() + " " + server.dir() + "/certs/server.pem > /dev/null";
  EXPECT_EQ(std::system(verify.c_str()), 0) << verify;
  const std::string san = "/usr/bin/openssl x509 -noout -ext subjectAltName -in " + server.dir() +
                          "/certs/server.pem | grep -q 'IP Address:127.0.0.1'";
  EXPECT_EQ(std::system(san.c_str()), 0) << san;
  const Exchange ex = talk(server.port());
  EXPECT_TRUE(contains(ex.info, "\"tls_required\":true")) << ex.info;
  EXPECT_TRUE(contains(ex.info, "\"tls_verify\":true")) << ex.info;
  server.restart();  // the same certificates serve again
  EXPECT_TRUE(contains(talk(server.port()).info, "\"tls_required\":true"));
}

TEST(NatsServerHarness, JetStreamStoresInTheTempDir) {
  NatsServerOptions o;
  o.jetstream = true;
  NatsServer server(o);
  EXPECT_TRUE(contains(talk(server.port()).info, "\"jetstream\":true"));
  EXPECT_TRUE(std::filesystem::is_directory(server.dir() + "/jetstream"));
}

TEST(NatsServerHarness, ThreeNodeClusterRoutesAndSurvivesANodeRestart) {
  NatsCluster cluster(3);
  ASSERT_EQ(cluster.urls().size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(talk(cluster.node(i).port()).connected) << cluster.urls()[static_cast<std::size_t>(i)];
    EXPECT_GT(cluster.node(i).cluster_port(), 0);
  }
  ASSERT_TRUE(cluster.wait_routes(2, 20s));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cluster.node(i).num_routes(), 2) << "node " << i;
  cluster.node(1).kill_hard();
  EXPECT_TRUE(test_support::wait_until(
      [&] { return cluster.node(0).num_routes() == 1 && cluster.node(2).num_routes() == 1; }, 20s));
  cluster.node(1).start();
  EXPECT_TRUE(cluster.wait_routes(2, 20s));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cluster.node(i).num_routes(), 2) << "node " << i << " after restart";
  EXPECT_THROW(cluster.node(3), std::out_of_range);
}

TEST(NatsServerHarness, FailedStartThrowsWithTheLogTail) {
  NatsServer server;
  server.stop();
  const int squatter = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(server.port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int one = 1;
  ::setsockopt(squatter, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ASSERT_EQ(::bind(squatter, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(squatter, 4), 0);
  try {
    server.start();
    ADD_FAILURE() << "start() succeeded with its port taken";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "exited")) << e.what();
    EXPECT_TRUE(contains(e.what(), "address already in use")) << e.what();
  }
  EXPECT_EQ(server.pid(), 0);
  ::close(squatter);
  server.start();
  EXPECT_TRUE(server.running());
}

TEST(NatsServerHarness, DestructorRemovesTheTempDir) {
  std::string dir;
  {
    NatsServer server;
    dir = server.dir();
    EXPECT_TRUE(std::filesystem::exists(dir + "/nats.conf"));
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
}
