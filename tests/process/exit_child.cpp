// A program that configures the bus from the environment, instruments, and then ends in the way
// its first argument names. tests/process/test_process_exit.cpp runs it as a child process.
//
//   return       returns from main without shutdown()
//   exit_thread  std::exit(0) from another thread while main keeps instrumenting
//   throw        lets an exception escape main (std::terminate)
//   sigterm      shutdown_on_signals(), then SIGTERM to itself
//   sigterm_app  the application's own SIGTERM handler, then shutdown_on_signals(), then SIGTERM
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

#include "notifications/bridge.hpp"
#include "notifications/notifications.hpp"
#include "notifications/signals.hpp"

namespace {

constexpr int kEvents = 1000;
std::atomic<bool> app_handler_ran{false};

void app_handler(int) { app_handler_ran.store(true); }

void instrument_some(int count) {
  for (int i = 0; i < count; ++i) notifications::instrument("exit.test", {{"i", i}});
}

// Bounded: a child that is still here after this has failed its scenario.
void wait_a_while() {
  for (int i = 0; i < 1000; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string how = argv[1];
  if (how == "sigterm_app") ::signal(SIGTERM, app_handler);
  if (how == "sigterm" || how == "sigterm_app") notifications::shutdown_on_signals();
  auto bridge = notifications::configure();
  instrument_some(kEvents);
  if (how == "return") return 0;
  if (how == "throw") throw std::runtime_error("escaped main");
  if (how == "exit_thread") {
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      std::exit(0);
    }).detach();
    for (int i = 0; i < 2000; ++i) {  // until exit ends the process (bounded: about 10 s at worst)
      instrument_some(10);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return 4;
  }
  if (how == "sigterm" || how == "sigterm_app") {
    ::kill(::getpid(), SIGTERM);
    if (how == "sigterm") {
      wait_a_while();
      return 3;  // the signal should have ended the process after the shutdown
    }
    for (int i = 0; i < 1000 && bridge->health()["state"] != "stopped"; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::printf("app handler ran: %s; bridge state: %s\n", app_handler_ran.load() ? "yes" : "no",
                bridge->health()["state"].get<std::string>().c_str());
    return app_handler_ran.load() && bridge->health()["state"] == "stopped" ? 0 : 5;
  }
  return 2;
}
