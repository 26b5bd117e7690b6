// The conformance suite over the NATS transport and a real nats-server: one server per case
// (the case's scope), restarted on the same port for the outage cases.
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "conformance/conformance.hpp"
#include "nats_server.hpp"
#include "notifications/transports/nats.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

// Runs closures on one thread that lives as long as the test program: the harness ties each
// server's life to the thread that started it, and cases create transports from short-lived
// threads too.
class Keeper {
 public:
  Keeper() : thread_([this] { run(); }) {}
  ~Keeper() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  void call(std::function<void()> task) {
    std::packaged_task<void()> packaged(std::move(task));
    auto result = packaged.get_future();
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(packaged));
    }
    changed_.notify_all();
    result.get();  // rethrows what the task threw
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    while (true) {
      changed_.wait(lock, [&] { return done_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      auto task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::packaged_task<void()>> tasks_;
  bool done_ = false;
  std::thread thread_;
};

Keeper& keeper() {
  static Keeper instance;
  return instance;
}

// Servers by scope. A new scope stops the servers of earlier ones: cases run one at a time.
struct Servers {
  std::mutex mutex;
  std::string scope;
  std::unique_ptr<test_support::NatsServer> server;
  std::map<const n::Transport*, test_support::NatsServer*> by_transport;
} servers;

std::shared_ptr<n::Transport> make(const std::string& scope) {
  std::lock_guard lock(servers.mutex);
  if (scope != servers.scope || !servers.server) {
    servers.by_transport.clear();
    keeper().call([] {
      servers.server.reset();
      servers.server = std::make_unique<test_support::NatsServer>();
    });
    servers.scope = scope;
  }
  n::NatsOptions options;
  options.servers = {servers.server->url()};
  options.name = "conformance-" + scope;
  options.reconnect_wait = std::chrono::milliseconds(50);
  options.reconnect_jitter = std::chrono::milliseconds(10);
  std::shared_ptr<n::Transport> transport = n::make_nats_transport(options);
  servers.by_transport[transport.get()] = servers.server.get();
  return transport;
}

void outage(n::Transport& transport) {
  std::lock_guard lock(servers.mutex);
  const auto it = servers.by_transport.find(&transport);
  ASSERT_NE(it, servers.by_transport.end()) << "outage for a transport of an earlier case";
  test_support::NatsServer* server = it->second;
  keeper().call([server] { server->restart(); });
}

// With the default options: bodies only, no headers.
TransportUnderTest nats() { return {"Nats", make, n::kNatsCapabilities, outage, /*carries_headers=*/false}; }

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(Nats, Conformance, ::testing::Values(nats()), name_of);
}  // namespace conformance
