// The thread that starts and restarts nats-server processes for tests whose transports are made
// from short-lived threads: the harness ties each server's life to the thread that started it
// (PR_SET_PDEATHSIG), so servers are started from this one, which lives as long as the program.
//
// Thread-safety: Keeper::call may be called from any thread; calls run one at a time, in order.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

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

}  // namespace test_support
