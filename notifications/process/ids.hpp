// Private: event ids and per-thread transaction ids.
// Thread-safety: all functions are safe from any thread; sequences are drawn in per-thread blocks
// so that concurrent instrumenting threads never contend on a shared counter.
#pragma once

#include <cstdint>
#include <string>

namespace notifications::detail {

// A process-unique, never-zero sequence number for one event.
std::uint64_t next_event_sequence() noexcept;
// next_event_sequence() and thread_transaction() in one call (what every event draws), written
// straight to their destinations (returned as one 16-byte value, GCC reloads them in one load
// from two stores: a store-forwarding stall on every event).
void draw_event_ids(std::uint64_t& sequence, std::uint64_t& transaction) noexcept;
// The calling thread's transaction number (stable for the thread's lifetime).
std::uint64_t thread_transaction() noexcept;
// A UUID (version 8, RFC 9562) made of a per-process random salt and the sequence.
std::string format_event_id(std::uint64_t sequence);
// The same id written into `out`, reusing its buffer.
void assign_event_id(std::string& out, std::uint64_t sequence, std::uint64_t id_salt = 0);
// The salt this process formats event ids with (never 0).
std::uint64_t event_id_salt() noexcept;
// 20 lowercase hex digits, as Rails' SecureRandom.hex(10).
std::string format_transaction_id(std::uint64_t transaction);
// A random version 4 UUID.
std::string random_uuid();

}  // namespace notifications::detail
