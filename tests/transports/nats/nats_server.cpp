// NatsServer: the child process, its config and certificates, and the readiness probes.
#include "nats_server.hpp"

#include "child_process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

namespace test_support {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kServerBinary = "/usr/sbin/nats-server";
constexpr const char* kOpensslBinary = "/usr/bin/openssl";
constexpr auto kReadyTimeout = 10s;
constexpr auto kStopTimeout = 5s;
constexpr auto kToolTimeout = 30s;
constexpr auto kSocketTimeout = 2s;
constexpr auto kPoll = 10ms;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("nats test harness: " + what); }

std::string errno_text() { return std::error_code(errno, std::system_category()).message(); }

// Closes the descriptor it owns (-1: none).
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& other) noexcept : fd(std::exchange(other.fd, -1)) {}
  Fd& operator=(Fd&&) = delete;
  ~Fd() { if (fd >= 0) ::close(fd); }
};

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A socket connected to 127.0.0.1:port whose connect, send and recv each give up after
// kSocketTimeout; fd -1 when refused or timed out.
Fd connect_loopback(int port) {
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.fd < 0) return s;
  const timeval tv{std::chrono::seconds(kSocketTimeout).count(), 0};
  ::setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // on Linux this also bounds connect()
  const sockaddr_in a = loopback(port);
  if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) return Fd(-1);
  return s;
}

// What arrived until `stop` appeared (never, when empty), EOF, `max_bytes`, a recv timeout or `timeout`.
std::string read_until(int fd, const std::string& stop, std::size_t max_bytes,
                       std::chrono::milliseconds timeout) {
  std::string got;
  const auto deadline = Clock::now() + timeout;
  char buf[4096];
  for (int reads = 0; reads < 100000 && got.size() < max_bytes && Clock::now() < deadline; ++reads) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
    if (!stop.empty() && got.find(stop) != std::string::npos) break;
  }
  return got;
}

// Reaps `pid` if it exits within `timeout`; true when reaped (or not our child any more).
bool reap_within(pid_t pid, std::chrono::milliseconds timeout, int& status) {
  const auto deadline = Clock::now() + timeout;
  for (long i = 0; i < timeout / kPoll + 2; ++i) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(kPoll);
  }
  return false;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// args[0] in the background, output appended to `log_path` (tests/child_process.hpp).
pid_t spawn(const std::vector<std::string>& args, const std::string& log_path) {
  try {
    return test_support::spawn_child(args, log_path).pid;
  } catch (const std::runtime_error& e) {
    fail(e.what());
  }
}

// Runs a short tool to completion (bounded); throws naming `what`, with the tool's log, when it fails.
void run_tool(const std::vector<std::string>& args, const std::string& log_path, const std::string& what) {
  const pid_t pid = spawn(args, log_path);
  int status = 0;
  if (!reap_within(pid, kToolTimeout, status)) {
    ::kill(pid, SIGKILL);
    reap_within(pid, kStopTimeout, status);
    fail(what + ": timed out");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ostringstream log;
    log << std::ifstream(log_path).rdbuf();
    fail(what + " failed (" + describe_status(status) + "):\n" + log.str());
  }
}

// A double-quoted nats config string, with backslash and quote escaped.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::vector<int> free_tcp_ports(int n, const std::vector<int>& avoid) {
  std::vector<Fd> held;  // all bound until the end, so the kernel hands out distinct ports
  std::vector<int> ports;
  for (int attempt = 0; attempt < n + 50 && static_cast<int>(ports.size()) < n; ++attempt) {
    Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (s.fd < 0 || ::bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      fail("cannot bind 127.0.0.1:0: " + errno_text());
    }
    const int port = ntohs(a.sin_port);
    if (std::find(avoid.begin(), avoid.end(), port) == avoid.end()) ports.push_back(port);
    held.push_back(std::move(s));
  }
  if (static_cast<int>(ports.size()) < n) fail("no free TCP ports on 127.0.0.1");
  return ports;
}

int free_tcp_port() { return free_tcp_ports(1).front(); }

NatsServer::NatsServer(NatsServerOptions options) : options_(std::move(options)) {
  std::string pattern = (fs::temp_directory_path() / "nats-harness-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) fail("mkdtemp failed: " + errno_text());
  dir_ = pattern;
  try {
    const bool clustered = !options_.cluster_name.empty();
    std::vector<int> taken = options_.cluster_routes;  // other nodes' ports may not be bound yet
    taken.push_back(options_.cluster_port);
    const auto ports = free_tcp_ports(clustered && options_.cluster_port == 0 ? 3 : 2, taken);
    port_ = ports[0];
    monitor_port_ = ports[1];
    if (!clustered) options_.cluster_port = 0;
    if (ports.size() > 2) options_.cluster_port = ports[2];
    server_name_ = "harness-" + std::to_string(::getpid()) + "-" + std::to_string(port_);
    if (options_.tls) write_certificates();
    write_config();
    start();
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
    throw;
  }
}

NatsServer::~NatsServer() {
  stop();
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
}

int NatsServer::port() const { return port_; }
std::string NatsServer::url() const {
  return std::string(options_.tls ? "tls" : "nats") + "://127.0.0.1:" + std::to_string(port_);
}
int NatsServer::cluster_port() const { return options_.cluster_port; }
int NatsServer::monitor_port() const { return monitor_port_; }
pid_t NatsServer::pid() const { return pid_; }
const NatsServerOptions& NatsServer::options() const { return options_; }
std::string NatsServer::dir() const { return dir_; }
std::string NatsServer::config_file() const { return dir_ + "/nats.conf"; }
std::string NatsServer::log_file() const { return dir_ + "/server.log"; }
std::string NatsServer::ca_file() const { return options_.tls ? dir_ + "/certs/ca.pem" : ""; }
std::string NatsServer::client_cert_file() const { return options_.tls ? dir_ + "/certs/client.pem" : ""; }
std::string NatsServer::client_key_file() const { return options_.tls ? dir_ + "/certs/client.key" : ""; }

bool NatsServer::running() const {
  if (pid_ == 0) return false;
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
  return info.si_pid == 0;  // nothing to report: still running
}

void NatsServer::stop() {
  if (pid_ == 0) return;
  int status = 0;
  ::kill(pid_, SIGTERM);
  if (!reap_within(pid_, kStopTimeout, status)) kill_hard();
  pid_ = 0;
}

void NatsServer::kill_hard() {
  if (pid_ == 0) return;
  int status = 0;
  ::kill(pid_, SIGKILL);
  reap_within(pid_, kStopTimeout, status);
  pid_ = 0;
}

void NatsServer::restart() {
  stop();
  start();
}

void NatsServer::start() {
  if (running()) return;
  stop();  // reaps a server that died on its own
  std::ofstream(log_file(), std::ios::app) << "harness: start " << server_name_ << " on " << url() << "\n";
  pid_ = spawn({kServerBinary, "-c", config_file()}, log_file());
  // Ready when the client port greets with INFO naming this server (not some other process that
  // took the port) and the monitor port accepts.
  const std::string own_name = "\"server_name\":\"" + server_name_ + "\"";
  const auto deadline = Clock::now() + kReadyTimeout;
  for (long i = 0; i < kReadyTimeout / kPoll + 2 && Clock::now() < deadline; ++i) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = 0;
      fail("nats-server exited (" + describe_status(status) + ") before accepting connections on " + url() +
           "; log tail:\n" + log_tail());
    }
    const Fd client = connect_loopback(port_);
    const bool greeted = client.fd >= 0 && read_until(client.fd, "\r\n", 65536, kSocketTimeout)
                                                   .find(own_name) != std::string::npos;
    if (greeted && connect_loopback(monitor_port_).fd >= 0) return;
    std::this_thread::sleep_for(kPoll);
  }
  kill_hard();
  fail("nats-server did not accept connections on " + url() + " within 10 s; log tail:\n" + log_tail());
}

std::string NatsServer::log_tail(std::size_t bytes) const {
  std::ifstream in(log_file(), std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  const std::streamoff from = std::max<std::streamoff>(0, size - static_cast<std::streamoff>(bytes));
  in.seekg(from);
  std::string out(static_cast<std::size_t>(size - from), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  out.resize(static_cast<std::size_t>(in.gcount()));
  return out;
}

std::string NatsServer::monitor_get(const std::string& path) const {
  const Fd s = connect_loopback(monitor_port_);
  if (s.fd < 0) return "";
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  const ssize_t sent = ::send(s.fd, request.data(), request.size(), MSG_NOSIGNAL);
  if (sent != static_cast<ssize_t>(request.size())) return "";
  const std::string response = read_until(s.fd, "", 16 << 20, 5s);
  const auto body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || body == std::string::npos) return "";
  return response.substr(body + 4);
}

int NatsServer::num_routes() const {
  const std::string key = "\"num_routes\":";
  const std::string body = monitor_get("/routez");
  const auto at = body.find(key);
  return at == std::string::npos ? -1 : std::atoi(body.c_str() + at + key.size());  // atoi skips spaces
}

void NatsServer::write_certificates() {
  const std::string certs = dir_ + "/certs/";
  fs::create_directories(certs);
  const std::string log = certs + "openssl.log";
  const std::vector<std::string> ec_key = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                           "-nodes"};
  // openssl req with an EC key, then `extra` arguments.
  auto req = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {kOpensslBinary, "req"};
    args.insert(args.end(), ec_key.begin(), ec_key.end());
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  run_tool(req({"-x509", "-days", "30", "-keyout", certs + "ca.key", "-out", certs + "ca.pem", "-subj",
                "/CN=notifications test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                "keyUsage=critical,keyCertSign,cRLSign"}),
           log, "openssl req for the CA");
  // A key and a certificate signed by the CA, with `extensions` (an openssl extfile).
  auto signed_by_ca = [&](const std::string& name, const std::string& subject, const std::string& extensions) {
    const std::string base = certs + name;
    std::ofstream(base + ".ext") << extensions;
    run_tool(req({"-new", "-keyout", base + ".key", "-out", base + ".csr", "-subj", subject}), log,
             "openssl req for the " + name + " key");
    run_tool({kOpensslBinary, "x509", "-req", "-in", base + ".csr", "-CA", certs + "ca.pem", "-CAkey",
              certs + "ca.key", "-CAcreateserial", "-days", "30", "-out", base + ".pem", "-extfile",
              base + ".ext"},
             log, "openssl x509 signing the " + name + " certificate");
  };
  signed_by_ca("server", "/CN=localhost",
               "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  signed_by_ca("client", "/CN=notifications test client", "extendedKeyUsage=clientAuth\n");
}

// Mode 0600, never echoed: the config may hold credentials.
void NatsServer::write_config() const {
  const auto& o = options_;
  std::ostringstream c;
  c << "server_name: " << quoted(server_name_) << "\nhost: 127.0.0.1\nport: " << port_ << "\n"
    << "http: \"127.0.0.1:" << monitor_port_ << "\"\n";
  if (!o.user.empty() || !o.token.empty()) {
    c << "authorization {\n";
    if (!o.user.empty()) c << "  user: " << quoted(o.user) << "\n  password: " << quoted(o.password) << "\n";
    if (!o.token.empty()) c << "  token: " << quoted(o.token) << "\n";
    c << "}\n";
  }
  if (o.tls) {
    c << "tls {\n  cert_file: " << quoted(dir_ + "/certs/server.pem") << "\n  key_file: "
      << quoted(dir_ + "/certs/server.key") << "\n  ca_file: " << quoted(ca_file())
      << "\n  verify: " << (o.tls_verify_clients ? "true" : "false") << "\n  timeout: 5\n}\n";
  }
  if (o.jetstream) {
    c << "jetstream {\n  store_dir: " << quoted(dir_ + "/jetstream")
      << "\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}\n";
  }
  if (!o.cluster_name.empty()) {
    c << "cluster {\n  name: " << quoted(o.cluster_name) << "\n  host: 127.0.0.1\n  port: " << o.cluster_port
      << "\n  routes: [\n";
    for (int route : o.cluster_routes) c << "    \"nats-route://127.0.0.1:" << route << "\"\n";
    c << "  ]\n}\n";
  }
  const std::string text = c.str();
  const Fd f(::open(config_file().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (f.fd < 0 || ::write(f.fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    fail("cannot write " + config_file() + ": " + errno_text());
  }
}

NatsCluster::NatsCluster(int nodes, NatsServerOptions common) {
  if (nodes < 1) throw std::invalid_argument("NatsCluster: nodes must be at least 1");
  const std::vector<int> cluster_ports = free_tcp_ports(nodes);
  for (std::size_t i = 0; i < cluster_ports.size(); ++i) {
    NatsServerOptions o = common;
    o.cluster_name = "harness";
    o.cluster_port = cluster_ports[i];
    o.cluster_routes.clear();
    for (std::size_t j = 0; j < cluster_ports.size(); ++j) {
      if (j != i) o.cluster_routes.push_back(cluster_ports[j]);
    }
    nodes_.push_back(std::make_unique<NatsServer>(std::move(o)));
  }
}

NatsServer& NatsCluster::node(int i) { return *nodes_.at(static_cast<std::size_t>(i)); }
int NatsCluster::size() const { return static_cast<int>(nodes_.size()); }

std::vector<std::string> NatsCluster::urls() const {
  std::vector<std::string> out;
  for (const auto& n : nodes_) out.push_back(n->url());
  return out;
}

bool NatsCluster::wait_routes(int expected_per_node, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (long i = 0; i < timeout / 50ms + 2; ++i) {
    if (std::all_of(nodes_.begin(), nodes_.end(),
                    [&](const auto& n) { return !n->running() || n->num_routes() >= expected_per_node; })) {
      return true;
    }
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

}  // namespace test_support
