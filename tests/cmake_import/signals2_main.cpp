// Exits 0 when the installed signals2 component (header-only, with Boost's headers through its
// target) connects a boost::signals2 signal to a notifier and ends a tracked slot's subscription.
#include <notifications/notifier.hpp>
#include <notifications/signals2.hpp>

#include <boost/signals2/signal.hpp>

#include <cstdio>
#include <memory>

int main() {
  notifications::Notifier notifier;
  boost::signals2::signal<void(int)> changed;
  const boost::signals2::scoped_connection connection = notifications::signals2::connect(
      changed, notifier, "value.changed", [](int value) { return nlohmann::json{{"value", value}}; });
  auto owner = std::make_shared<int>(0);
  int* const seen = owner.get();
  const notifications::Subscription subscription = notifications::signals2::subscribe(
      notifier, "value.changed",
      notifications::signals2::EventSlot([seen](const notifications::Event& event) {
        *seen = event.payload()["value"].get<int>();
      }).track_foreign(owner));
  changed(7);
  if (*owner != 7) {
    std::fprintf(stderr, "the slot did not receive the emission's payload\n");
    return 1;
  }
  owner.reset();
  changed(8);
  if (subscription.active()) {
    std::fprintf(stderr, "the subscription outlived its tracked object\n");
    return 2;
  }
  return 0;
}
