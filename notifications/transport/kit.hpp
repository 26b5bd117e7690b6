// Private: the transport kit, everything a transport under transports/ may use from the core.
//
// A transport includes public headers (include/notifications/...) and this file, nothing else
// from notifications/: the core never names a transport, and a transport never reaches into the
// local bus or the Bridge. What is here, and why a transport needs it:
// - logging that is safe at exit and escapes wire text (process/log.hpp);
// - the process identity: fork generation, bus-thread marks (process/process.hpp);
// - thread names shown by top -H and gdb (process/thread_name.hpp);
// - the annotated mutex and lock classes that clang's -Wthread-safety checks
//   (process/thread_safety.hpp);
// - ASCII case folding for schemes and option values (local/ascii.hpp);
// - credential redaction: the one list of secret-looking words, URL, query and free-text
//   redaction, and a scrubber for a client library's texts that may echo a password
//   (transport/redaction.hpp);
// - the bounded handoff queue between a client library's callback thread and ours
//   (transport/bounded_queue.hpp);
// - the table of the schemes the project ships, so an unknown scheme's error can say which
//   component to link (below).
//
// Thread-safety: as documented in each included header; the table is constant.
#pragma once

#include <string_view>

#include "local/ascii.hpp"
#include "notifications/transport.hpp"
#include "process/log.hpp"
#include "process/process.hpp"
#include "process/thread_name.hpp"
#include "process/thread_safety.hpp"
#include "transport/bounded_queue.hpp"
#include "transport/redaction.hpp"

namespace notifications::kit {

// A URL scheme the project ships, and what provides it.
struct ShippedScheme {
  std::string_view scheme;
  std::string_view component;    // the CMake target that registers it
  std::string_view how_to_link;  // what to write in CMake to get it; empty when always linked
};

inline constexpr ShippedScheme kShippedSchemes[] = {
    {"memory", "notifications::core (its part notifications::memory)", ""},
    {"mock", "notifications::core (its part notifications::mock)", ""},
    {"nats", "notifications::nats",
     "find_package(notifications CONFIG REQUIRED COMPONENTS nats) and "
     "target_link_libraries(<your target> PRIVATE notifications::nats)"},
    {"tls", "notifications::nats",
     "find_package(notifications CONFIG REQUIRED COMPONENTS nats) and "
     "target_link_libraries(<your target> PRIVATE notifications::nats)"},
    {"jetstream", "notifications::jetstream",
     "find_package(notifications CONFIG REQUIRED COMPONENTS jetstream) and "
     "target_link_libraries(<your target> PRIVATE notifications::jetstream)"},
    {"sqlite", "notifications::sqlite",
     "find_package(notifications CONFIG REQUIRED COMPONENTS sqlite) and "
     "target_link_libraries(<your target> PRIVATE notifications::sqlite)"},
};

// The shipped scheme named `scheme` (lower case), or nullptr.
constexpr const ShippedScheme* shipped_scheme(std::string_view scheme) {
  for (const ShippedScheme& shipped : kShippedSchemes) {
    if (shipped.scheme == scheme) return &shipped;
  }
  return nullptr;
}

}  // namespace notifications::kit
