// Exits 0 when the installed library delivers an event to a subscriber and, with
// notifications::nats linked, make_transport() knows the "nats" scheme.
#include <notifications/notifications.hpp>
#include <notifications/transport.hpp>

#include <cstdio>

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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
  return 0;
}
