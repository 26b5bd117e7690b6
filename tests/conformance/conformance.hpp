// The transport conformance suite (../shared/context/conformance-suite.md, adapted): every
// transport runs the same cases through real Bridges, switched on and off by its capability flags.
//
// A transport joins by adding a TransportUnderTest to the list in its own test file and calling
// INSTANTIATE_TEST_SUITE_P(Name, Conformance, ::testing::Values(...), name_of) — see
// test_conformance_memory.cpp.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "notifications/transport.hpp"
#include "scale.hpp"

namespace conformance {

struct TransportUnderTest {
  std::string name;
  // A transport for one node of a case. Nodes created with the same `scope` must reach each
  // other; different scopes must not (a fresh broker, stream or database per case).
  std::function<std::shared_ptr<notifications::Transport>(const std::string& scope)> make;
  notifications::TransportCapabilities capabilities;
  // Interrupts the connection of `transport` for a moment and restores it (a server restart, a
  // network outage); empty when the transport has nothing to interrupt.
  std::function<void(notifications::Transport& transport)> outage;
  // Message::id and Message::headers reach a subscriber (false: bodies only, as NATS sends by
  // default).
  bool carries_headers = true;
  // A message acknowledged just before its subscriber closed may be delivered again, as a first
  // delivery, to the next subscriber of the same consumer (seen with nats-server 2.9.10 under
  // TSan, not explained yet: docs/jetstream.md). ContinueAfterSubscriberClose then checks that
  // every message was consumed, allowing such repeats, instead of "each once".
  bool acked_may_repeat_after_close = false;
};

std::string name_of(const ::testing::TestParamInfo<TransportUnderTest>& info);
// Failure messages name the transport instead of dumping its bytes.
void PrintTo(const TransportUnderTest& transport, std::ostream* out);

class Conformance : public ::testing::TestWithParam<TransportUnderTest> {};

using test_support::kScale;  // a tenth of the counts in the sanitizer builds

}  // namespace conformance
