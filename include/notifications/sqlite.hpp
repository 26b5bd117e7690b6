// The SQLite outbox (component notifications::sqlite): where a Bridge keeps the events it accepted
// in a file until the transport confirmed them, so that a broker outage, a crash or a deploy does
// not lose them. Linking notifications::sqlite is enough: a BridgeConfig with durability async or
// sync, or overflow spill, then uses it (register_durable_outbox). docs/outbox.md says what each
// mode keeps, and what it cannot.
//
// Thread-safety: make_sqlite_outbox() may be called from any thread; the outbox it returns is
// thread-safe as every Outbox (notifications/outbox.hpp).
#pragma once

#include <memory>

#include "notifications/config.hpp"
#include "notifications/outbox.hpp"

namespace notifications {

// An outbox in the file config.outbox.path (created when missing, WAL mode), under
// config.durability and config.outbox.synchronous, holding at most config.queue_capacity events
// (and config.queue_max_bytes) in memory besides what is committed. Events an earlier run left in
// the file are handed out first, in their order. One outbox per file: a second one, in this
// process or another, is refused. Throws OutboxError naming the file when it cannot be opened,
// is not a database, or is locked by another outbox.
std::shared_ptr<Outbox> make_sqlite_outbox(const BridgeConfig& config);

}  // namespace notifications
