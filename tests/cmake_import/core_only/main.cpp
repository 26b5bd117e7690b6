// Exits 0 when the installed core library delivers an event to a subscriber, and knows the
// memory:// and mock:// schemes without any other component linked (notifications::core holds
// notifications::memory and notifications::mock, which register themselves).
#include <notifications/notifications.hpp>
#include <notifications/transport.hpp>

#include <cstdio>

int main() {
  int seen = 0;
  auto subscription = notifications::subscribe("core_only.check", [&](const notifications::Event& e) {
    if (e.payload().value("ok", false)) ++seen;
  });
  notifications::instrument("core_only.check", {{"ok", true}}, [] {});
  if (seen != 1) return 1;
  for (const char* url : {"memory://", "mock://"}) {
    try {
      auto transport = notifications::make_transport({url, {}});
      if (!transport) return 2;
    } catch (const notifications::TransportError& e) {
      std::fprintf(stderr, "core_only: %s: %s\n", url, e.what());
      return 3;
    }
  }
  return 0;
}
