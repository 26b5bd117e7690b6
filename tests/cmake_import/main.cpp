// Exits 0 when the installed library delivers an event to a subscriber.
#include <notifications/notifications.hpp>

int main() {
  int seen = 0;
  auto subscription = notifications::subscribe("consumer.check", [&](const notifications::Event& e) {
    if (e.payload().value("ok", false)) ++seen;
  });
  notifications::instrument("consumer.check", {{"ok", true}}, [] {});
  return seen == 1 ? 0 : 1;
}
