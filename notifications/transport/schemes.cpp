// The scheme registry: register_transport() and make_transport() (notifications/transport.hpp).
//
// Contracts:
//   1. Schemes are case-insensitive; a later registration of a scheme replaces the earlier one.
//   2. A factory runs without the registry's lock, so it may register or make transports itself.
//   3. Every error names the URL redacted (redact_url) and never a credential (a factory's own
//      text passes through redaction::redact_text, as it may quote the URL); an unknown scheme's
//      error lists the registered schemes and, for a scheme the project ships in a component this
//      program does not link, what to link (kit::kShippedSchemes).
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "local/ascii.hpp"
#include "process/fork_held_lock.hpp"
#include "process/thread_safety.hpp"
#include "notifications/transport.hpp"
#include "transport/kit.hpp"
#include "transport/redaction.hpp"
#include "transport/url.hpp"

namespace notifications {

namespace {

// The text after the bracketed id of one of our errors ("[notifications.transport] x" -> "x").
std::string without_id(const std::string& what) {
  if (what.rfind("[notifications.", 0) == 0) {
    const auto end = what.find("] ");
    if (end != std::string::npos) return what.substr(end + 2);
  }
  return what;
}

// Factories are held by shared_ptr, so that no user code (a factory's copy or destructor) runs
// under the lock, which is held across fork() (process/fork_held_lock.hpp): a child forked
// without prepare_fork() can still make transports.
struct Registry {
  detail::Mutex mutex;
  detail::ForkHeldLock fork_held{mutex};
  std::map<std::string, std::shared_ptr<const TransportFactory>> factories
      NOTIFICATIONS_GUARDED_BY(mutex);  // by lower-case scheme
};

// Created on first use, never destroyed (factories may be looked up from static destructors).
// Every transport, the built-in memory:// and mock:// too, registers itself from its own folder.
Registry& registry() {
  static Registry* const instance = new Registry;
  return *instance;
}

std::string shipped_scheme_hint(std::string_view scheme) {
  const kit::ShippedScheme* shipped = kit::shipped_scheme(scheme);
  if (shipped == nullptr) return {};
  std::string hint = ": this program does not link its transport, provided by ";
  hint += shipped->component;
  if (!shipped->how_to_link.empty()) {
    hint += ": ";
    hint += shipped->how_to_link;
  }
  return hint;
}

// Its callers hold r.mutex.
std::string known_schemes(const Registry& r) NOTIFICATIONS_REQUIRES(r.mutex) {
  std::string out;
  for (const auto& [scheme, factory] : r.factories) {
    if (!out.empty()) out += ", ";
    out += scheme;
  }
  return out;
}

}  // namespace

void register_transport(const std::string& scheme, TransportFactory factory) {
  if (!url::valid_scheme(scheme)) {
    throw TransportError("register_transport: scheme \"" + scheme +
                         "\" is not a URL scheme (a letter, then letters, digits, '+', '-', '.')");
  }
  if (!factory) throw TransportError("register_transport: scheme \"" + scheme + "\": empty factory");
  auto shared = std::make_shared<const TransportFactory>(std::move(factory));
  Registry& r = registry();
  detail::MutexLock lock(r.mutex);
  r.factories[detail::ascii_lower(scheme)].swap(shared);  // a replaced factory is released unlocked
}

std::unique_ptr<Transport> make_transport(const TransportConfig& config) {
  const std::string shown = redact_url(config.url);
  const std::size_t sep = config.url.find("://");
  Registry& r = registry();
  std::shared_ptr<const TransportFactory> factory;
  {
    detail::MutexLock lock(r.mutex);
    if (sep == std::string::npos || sep == 0) {
      throw TransportError("url \"" + shown + "\": no scheme (expected <scheme>://...; known schemes: " +
                           known_schemes(r) + ")");
    }
    const std::string scheme = detail::ascii_lower(std::string_view(config.url).substr(0, sep));
    const auto it = r.factories.find(scheme);
    if (it == r.factories.end()) {
      throw TransportError("url \"" + shown + "\": unknown scheme \"" + scheme + "\"" + shipped_scheme_hint(scheme) +
                           " (known schemes: " + known_schemes(r) + ")");
    }
    factory = it->second;  // called without the registry lock: it may use the registry itself
  }
  std::unique_ptr<Transport> transport;
  try {
    transport = (*factory)(config);
  } catch (const TransportError& e) {
    // A factory's text may quote the URL as it was given: it passes through redaction too.
    const std::string what = redaction::redact_text(e.what());
    if (what == e.what() && what.find(shown) != std::string::npos) throw;
    throw TransportError("url \"" + shown + "\": " + without_id(what));
  } catch (const std::exception& e) {
    throw TransportError("url \"" + shown + "\": " + without_id(redaction::redact_text(e.what())));
  }
  if (!transport) throw TransportError("url \"" + shown + "\": the factory returned no transport");
  return transport;
}

}  // namespace notifications
