// Exits 0 when the installed core library delivers an event to a subscriber.
#include <notifications/notifications.hpp>

int main() {
  int seen = 0;
  auto subscription = notifications::subscribe("core_only.check", [&](const notifications::Event& e) {
    if (e.payload().value("ok", false)) ++seen;
  });
  notifications::instrument("core_only.check", {{"ok", true}}, [] {});
  return seen == 1 ? 0 : 1;
}
