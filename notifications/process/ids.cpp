#include "process/ids.hpp"
#include "process/process.hpp"

#include <array>
#include <atomic>
#include <cstdio>
#include <random>

namespace notifications::detail {

namespace {

constexpr std::uint64_t kBlock = 1u << 16;

// Random per process: a forked child draws its own (reseed_ids_after_fork), so ids made in the
// parent and in each child never collide although their sequence counters continue alike.
struct ProcessSalt {
  std::uint64_t event = 0;
  std::uint64_t transaction = 0;
  ProcessSalt() {
    draw();
    install_fork_hook();
  }
  void draw() {
    std::random_device device;
    event = (static_cast<std::uint64_t>(device()) << 32) ^ device();
    transaction = (static_cast<std::uint64_t>(device()) << 32) ^ device();
  }
};

ProcessSalt& mutable_salt() {
  static ProcessSalt value;
  return value;
}

const ProcessSalt& salt() { return mutable_salt(); }

std::atomic<std::uint64_t> next_block{1};
std::atomic<std::uint64_t> next_thread{1};

// Writes `digits` lowercase hex digits of `value` (the low ones) at `out`.
void put_hex(char* out, std::uint64_t value, int digits) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) {
    out[i] = kDigits[value & 0xF];
    value >>= 4;
  }
}

std::string hex(std::uint64_t value, int digits) {
  std::string out(static_cast<std::size_t>(digits), '0');
  put_hex(out.data(), value, digits);
  return out;
}

// Writes 36 characters, 8-4-4-4-12, at `out`.
void put_uuid(char* out, std::uint64_t high, std::uint64_t low, std::uint64_t version) {
  high = (high & ~0xF000ull) | (version << 12);
  low = (low & ~(3ull << 62)) | (2ull << 62);  // RFC 9562 variant
  put_hex(&out[0], high >> 32, 8);
  put_hex(&out[9], high >> 16, 4);
  put_hex(&out[14], high, 4);
  put_hex(&out[19], low >> 48, 4);
  put_hex(&out[24], low, 12);
  out[8] = out[13] = out[18] = out[23] = '-';
}

std::string format_uuid(std::uint64_t high, std::uint64_t low, std::uint64_t version) {
  std::string out(36, '-');
  put_uuid(out.data(), high, low, version);
  return out;
}

}  // namespace

namespace {
// This thread's block of sequence numbers and its transaction number (0 until first drawn).
// Constant-initialised: reading them needs no guard.
struct ThreadIds {
  std::uint64_t next = 0;
  std::uint64_t end = 0;
  std::uint64_t transaction = 0;
};
constinit thread_local ThreadIds thread_ids;

[[gnu::noinline]] void draw_block(ThreadIds& ids) noexcept {
  ids.next = next_block.fetch_add(kBlock, std::memory_order_relaxed);
  ids.end = ids.next + kBlock;
}

[[gnu::noinline]] void draw_transaction(ThreadIds& ids) noexcept {
  ids.transaction = next_thread.fetch_add(1, std::memory_order_relaxed);  // never 0
}
}  // namespace

std::uint64_t next_event_sequence() noexcept {
  ThreadIds& ids = thread_ids;
  if (ids.next == ids.end) [[unlikely]] draw_block(ids);
  return ids.next++;
}

std::uint64_t thread_transaction() noexcept {
  ThreadIds& ids = thread_ids;
  if (ids.transaction == 0) [[unlikely]] draw_transaction(ids);
  return ids.transaction;
}

void draw_event_ids(std::uint64_t& sequence, std::uint64_t& transaction) noexcept {
  ThreadIds& ids = thread_ids;
  if (ids.next == ids.end) [[unlikely]] draw_block(ids);
  if (ids.transaction == 0) [[unlikely]] draw_transaction(ids);
  sequence = ids.next++;
  transaction = ids.transaction;
}

std::string format_event_id(std::uint64_t sequence) {
  return format_uuid(salt().event, sequence, 8);
}

void assign_event_id(std::string& out, std::uint64_t sequence, std::uint64_t id_salt) {
  out.resize(36);
  put_uuid(out.data(), id_salt != 0 ? id_salt : salt().event, sequence, 8);
}

std::uint64_t event_id_salt() noexcept { return salt().event; }

std::string format_transaction_id(std::uint64_t transaction) {
  // Mix so consecutive threads do not get near-identical ids; the mix is a bijection.
  std::uint64_t x = transaction ^ salt().transaction;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return hex(salt().transaction >> 48, 4) + hex(x, 16);
}

std::string random_uuid() {
  // Seeded again when this thread finds itself in a forked child: fork() copies the generator's
  // state, and parent and child would draw the same "random" ids.
  struct Generator {
    std::uint64_t generation = fork_generation();
    std::mt19937_64 engine{std::random_device{}()};
  };
  thread_local Generator generator;
  if (generator.generation != fork_generation()) {
    generator.generation = fork_generation();
    generator.engine.seed(std::random_device{}());
  }
  install_fork_hook();
  const std::uint64_t high = generator.engine();
  return format_uuid(high, generator.engine(), 4);
}

void reseed_ids_after_fork() noexcept {
  try {
    mutable_salt().draw();
  } catch (...) {
    // No random device in the child: its ids keep the parent's salt (unique within each process).
  }
}

}  // namespace notifications::detail
