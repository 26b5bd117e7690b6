// Real nats-server processes for tests. Each NatsServer owns one server on 127.0.0.1 with a
// private temp dir (config, log, certificates, JetStream store) and can stop, crash and restart it
// on the same ports. Needs /usr/sbin/nats-server (v2.9) at run time, and /usr/bin/openssl for TLS.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace test_support {

// What the server demands of clients and how it joins other servers. Every listener (client,
// cluster, monitoring) binds 127.0.0.1 only.
struct NatsServerOptions {
  std::string user, password;       // user/password auth when user is non-empty
  std::string token;                // token auth when non-empty
  bool tls = false;                 // TLS required; the harness generates the certificates
  bool tls_verify_clients = false;  // require client certificates signed by the harness CA
  bool jetstream = false;           // JetStream with its store in the temp dir
  std::string cluster_name;         // non-empty: a cluster block with this name
  int cluster_port = 0;             // 0: pick a free one when cluster_name is set
  std::vector<int> cluster_routes;  // cluster ports of other nodes (nats-route://127.0.0.1:P)
};

// One nats-server child process.
// Thread-safety: not thread-safe; one test thread owns it. The child gets SIGKILL when the thread
// that last started it exits (PR_SET_PDEATHSIG), so a crashed test leaves no server behind: start
// servers from a thread that outlives them (the test body's thread).
class NatsServer {
 public:
  // Picks the ports, writes the config (and certificates) and starts at once. Throws
  // std::runtime_error naming what failed, with the tail of the server log; nothing is left behind.
  explicit NatsServer(NatsServerOptions options = {});
  ~NatsServer();  // stop(), then removes dir()
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;

  int port() const;          // client port on 127.0.0.1; chosen once, kept across restarts
  std::string url() const;   // "nats://127.0.0.1:<port>", "tls://..." when options.tls
  int cluster_port() const;  // 0 when not clustered
  int monitor_port() const;  // HTTP monitoring (/varz, /routez, ...) on 127.0.0.1
  pid_t pid() const;         // 0 after stop()/kill_hard(); a server that died alone keeps it until stop()
  bool running() const;      // the child exists and has not exited (does not reap it)
  const NatsServerOptions& options() const;

  // SIGTERM by PID, reaped within 5 s, else SIGKILL and reaped. Idempotent.
  void stop();
  // SIGKILL by PID (a crash: no graceful shutdown), then reaped. Idempotent.
  void kill_hard();
  // Starts on the same ports with the same config; returns once the client port answers with this
  // server's INFO and the monitor port accepts (bounded 10 s). Throws like the constructor, after
  // killing the child. No-op when running.
  void start();
  void restart();  // stop(); start();

  // Files in dir() when options.tls; empty otherwise.
  std::string ca_file() const;
  std::string client_cert_file() const;
  std::string client_key_file() const;

  // The last `bytes` of the server log (every run appends, after a "harness: start" marker line).
  std::string log_tail(std::size_t bytes = 4000) const;
  std::string dir() const;  // private temp dir, removed by the destructor

  // Body of GET <path> on the monitor port (e.g. "/routez"); empty when it did not answer in 5 s.
  std::string monitor_get(const std::string& path) const;
  // "num_routes" of /routez; -1 when the monitor did not answer.
  int num_routes() const;

 private:
  void write_certificates();
  void write_config() const;
  std::string config_file() const;
  std::string log_file() const;

  NatsServerOptions options_;
  std::string dir_;
  std::string server_name_;  // unique; the readiness probe checks it in INFO
  int port_ = 0;
  int monitor_port_ = 0;
  pid_t pid_ = 0;
};

// n nodes on loopback, each routed to all others, forming one cluster named "harness".
// Thread-safety: not thread-safe; one test thread owns it.
class NatsCluster {
 public:
  // `common` applies to every node; its cluster fields are replaced. Throws like NatsServer.
  explicit NatsCluster(int nodes = 3, NatsServerOptions common = {});
  NatsServer& node(int i);  // throws std::out_of_range
  int size() const;
  std::vector<std::string> urls() const;
  // True when every running node reports at least `expected_per_node` routes before `timeout`.
  bool wait_routes(int expected_per_node, std::chrono::milliseconds timeout);

 private:
  std::vector<std::unique_ptr<NatsServer>> nodes_;
};

// A port that was free on 127.0.0.1 a moment ago: binds 127.0.0.1:0, reads the port, closes.
int free_tcp_port();
// `n` distinct such ports (bound at the same time), none of them in `avoid`.
std::vector<int> free_tcp_ports(int n, const std::vector<int>& avoid = {});

}  // namespace test_support
