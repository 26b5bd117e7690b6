// signals2_interop: existing Boost.Signals2 code and the notifications bus, in both directions.
//
// Thermostat is code as it was before anyone used the bus: it emits a boost::signals2 signal and
// is not changed. main() connects that signal to the bus, so every reading becomes an instant
// event "thermostat.reading" with the payload {"celsius": ...}; a bus subscriber (any listener,
// or a transport behind a Bridge) sees them. In the other direction, Display is an object that
// already has a Signals2-style handler; it is subscribed to "thermostat.*" as a slot that tracks
// it (track_foreign), so when the last shared_ptr to it goes away its subscription ends by itself.
//
// Usage: signals2_interop (no arguments). Prints what happens; exits 0 when every event arrived
// where expected, 1 otherwise (so the sample is also a smoke check).
#include <cstdio>
#include <memory>
#include <string>

#include <boost/signals2/signal.hpp>
#include <nlohmann/json.hpp>

#include "notifications/notifier.hpp"
#include "notifications/signals2.hpp"

namespace {

// Existing code: knows nothing of notifications.
class Thermostat {
 public:
  boost::signals2::signal<void(double)> reading;
  void measure(double celsius) { reading(celsius); }
};

// Existing code: a handler written for Signals2, owned through a shared_ptr.
class Display {
 public:
  void show(const notifications::Event& event) {
    ++shown_;
    std::printf("display: %s %s\n", std::string(event.name()).c_str(), event.payload().dump().c_str());
  }
  int shown() const { return shown_; }

 private:
  int shown_ = 0;
};

}  // namespace

int main() {
  notifications::Notifier notifier;  // or notifications::default_notifier(), the overloads' default
  Thermostat thermostat;

  // Signal -> bus: the payload is built only when someone listens to "thermostat.reading".
  const boost::signals2::scoped_connection to_bus = notifications::signals2::connect(
      thermostat.reading, notifier, "thermostat.reading",
      [](double celsius) { return nlohmann::json{{"celsius", celsius}}; });

  thermostat.measure(19.5);  // nobody listens yet: no payload built, no event

  int logged = 0;
  const notifications::Subscription log = notifier.subscribe("thermostat.*", [&](const notifications::Event& event) {
    ++logged;
    std::printf("bus listener: %s %s\n", std::string(event.name()).c_str(), event.payload().dump().c_str());
  });

  // Bus -> slot: the display's subscription lives as long as the display.
  auto display = std::make_shared<Display>();
  Display* const raw = display.get();
  const notifications::Subscription shown = notifications::signals2::subscribe(
      notifier, "thermostat.*",
      notifications::signals2::EventSlot([raw](const notifications::Event& event) { raw->show(event); })
          .track_foreign(display));

  thermostat.measure(20.0);
  thermostat.measure(21.5);
  const int shown_before_reset = display->shown();

  display.reset();  // the display goes away; nobody unsubscribes it explicitly
  thermostat.measure(22.0);  // reaches the log; the display's subscription is removed by this event
  std::printf("display subscription active after the display went away: %s\n", shown.active() ? "yes" : "no");

  const bool ok = logged == 3 && shown_before_reset == 2 && !shown.active() &&
                  notifier.stats().subscriptions == 1;
  std::printf("%s: bus listener saw %d readings (expected 3), display showed %d (expected 2)\n",
              ok ? "ok" : "MISMATCH", logged, shown_before_reset);
  return ok ? 0 : 1;
}
