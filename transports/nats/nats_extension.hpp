// Private to the transports built on the NATS transport's connection (transports/jetstream): the
// cnats connection of a NATS transport, so that such a transport reuses its connecting, reconnect
// handling, logging, draining and fork handling instead of repeating them.
//
// Thread-safety: connection_of may be called from any thread; the pointer it returns stays valid
// until that NATS transport's stop() or prepare_fork() begins, so the caller must own those calls
// (it owns the NATS transport and runs them itself, after it stopped using the connection).
#pragma once

#include <nats/nats.h>

#include "notifications/transport.hpp"

namespace notifications::nats_detail {

// The live connection of `transport` when it is a started NATS transport made by
// make_nats_transport (connected, or connecting in the background); nullptr otherwise.
natsConnection* connection_of(Transport& transport);

}  // namespace notifications::nats_detail
