// The thread that starts and restarts nats-server processes for tests whose transports are made
// from short-lived threads: the harness ties each server's life to the thread that started it
// (PR_SET_PDEATHSIG), so servers are started from this one, which lives as long as the program.
//
// ServersByScope: one server per conformance case (its scope), started and restarted through the
// keeper.
//
// Thread-safety: Keeper::call and every ServersByScope member may be called from any thread;
// calls run one at a time, in order.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "nats_server.hpp"

namespace test_support {

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

inline Keeper& keeper() {
  static Keeper instance;
  return instance;
}

// One nats-server per scope: a transport made for a new scope stops the server of the previous
// one and starts its own (cases run one at a time); restart() restarts the server a transport was
// made for, on the same port and with the same store (an outage).
class ServersByScope {
 public:
  explicit ServersByScope(NatsServerOptions options = {}) : options_(std::move(options)) {}

  // `make(url)` for the server of `scope`, remembered as that transport's.
  template <class Transport>
  std::shared_ptr<Transport> make(const std::string& scope,
                                  const std::function<std::shared_ptr<Transport>(const std::string& url)>& make_transport) {
    std::lock_guard lock(mutex_);
    if (scope != scope_ || !server_) {
      by_transport_.clear();
      keeper().call([this] {
        server_.reset();
        server_ = std::make_unique<NatsServer>(options_);
      });
      scope_ = scope;
    }
    std::shared_ptr<Transport> transport = make_transport(server_->url());
    by_transport_[transport.get()] = server_.get();
    return transport;
  }

  // Restarts the server `transport` was made for; throws for a transport of an earlier case.
  void restart(const void* transport) {
    std::lock_guard lock(mutex_);
    const auto it = by_transport_.find(transport);
    if (it == by_transport_.end()) throw std::logic_error("outage for a transport of an earlier case");
    NatsServer* server = it->second;
    keeper().call([server] { server->restart(); });
  }

 private:
  const NatsServerOptions options_;
  std::mutex mutex_;
  std::string scope_;
  std::unique_ptr<NatsServer> server_;
  std::map<const void*, NatsServer*> by_transport_;
};

}  // namespace test_support
