// Exits 0 when the installed library delivers an event to a subscriber, with
// notifications::nats linked make_transport() knows the "nats" scheme (and "jetstream" with
// notifications::jetstream), and with
// notifications::sqlite linked a bridge with durability async keeps its events in a SQLite file
// and make_transport() knows the "sqlite" scheme (two bridges exchange an event through a file,
// and a durable handler with the SQLite inbox runs for it once, its SQL in the inbox's transaction).
#include <notifications/bridge.hpp>
#include <notifications/durable.hpp>
#include <notifications/notifications.hpp>
#include <notifications/sqlite.hpp>
#include <notifications/transport.hpp>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>

int main() {
  int seen = 0;
  auto subscription = notifications::subscribe("consumer.check", [&](const notifications::Event& e) {
    if (e.payload().value("ok", false)) ++seen;
  });
  notifications::instrument("consumer.check", {{"ok", true}}, [] {});
  if (seen != 1) return 1;
  try {
    auto transport = notifications::make_transport({"nats://127.0.0.1:4222", {}});
    if (transport->kind() != "nats") return 1;
    if (notifications::make_transport({"jetstream://127.0.0.1:4222", {}})->kind() != "jetstream") return 1;
    notifications::BridgeConfig config;
    config.durability = notifications::Durability::async;
    config.outbox.path = "/tmp/notifications-consumer-" + std::to_string(::getpid()) + ".db";
    notifications::Notifier bus;
    auto bridge = notifications::make_bridge(bus, config);
    bridge->start();
    bus.instrument("consumer.durable", {{"ok", true}});
    const bool flushed = bridge->flush(std::chrono::seconds(5));
    const bool in_file = bridge->health()["queue"]["outbox"].get<std::string>().rfind("sqlite", 0) == 0;
    bridge->shutdown();
    bridge.reset();
    for (const char* suffix : {"", "-wal", "-shm", ".lock"}) std::remove((config.outbox.path + suffix).c_str());
    if (!flushed || !in_file) {
      std::fprintf(stderr, "consumer: the sqlite outbox did not take the event (flushed %d, in file %d)\n", flushed,
                   in_file);
      return 1;
    }
    // sqlite://: one bridge sends, another (its own notifier) receives through the file.
    const std::string events = "/tmp/notifications-consumer-events-" + std::to_string(::getpid()) + ".db";
    notifications::Notifier sending_bus, receiving_bus;
    std::atomic<int> received{0};
    auto remote = receiving_bus.subscribe("consumer.file", [&](const notifications::Event& e) {
      if (e.remote()) ++received;
    });
    notifications::BridgeConfig sqlite_config;
    sqlite_config.url = "sqlite://" + events;
    auto receiver = notifications::make_bridge(receiving_bus, sqlite_config);
    auto sender = notifications::make_bridge(sending_bus, sqlite_config);
    const std::string inbox = "/tmp/notifications-consumer-inbox-" + std::to_string(::getpid()) + ".db";
    notifications::DurableOptions durable;
    durable.store = notifications::make_sqlite_durable_store(inbox);
    std::atomic<int> handled{0};
    receiver->subscribe_durable("consumer", "consumer.file",
                                [&](const notifications::Event& e, notifications::DurableContext& context) {
                                  context.execute("CREATE TABLE IF NOT EXISTS seen(id TEXT)");
                                  context.execute("INSERT INTO seen VALUES (?1)", nlohmann::json::array({e.id()}));
                                  ++handled;
                                }, durable);
    receiver->start();
    sender->start();
    sending_bus.instrument("consumer.file", {{"ok", true}});
    for (int i = 0; i < 500 && (received == 0 || handled == 0); ++i) ::usleep(10'000);  // at most 5 s
    sender->shutdown();
    receiver->shutdown();
    for (const char* suffix : {"", "-wal", "-shm"}) {
      std::remove((events + suffix).c_str());
      std::remove((inbox + suffix).c_str());
    }
    if (handled.load() != 1) {
      std::fprintf(stderr, "consumer: the durable handler ran %d time(s), not 1\n", handled.load());
      return 1;
    }
    if (received.load() != 1) {
      std::fprintf(stderr, "consumer: the sqlite:// transport delivered %d event(s), not 1\n", received.load());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
