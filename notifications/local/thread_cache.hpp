// Private: the per-thread cache that makes "is anyone listening to this name" cost a hash and a
// comparison, with no lock and no shared write.
//
// Thread-safety: each thread has its own ThreadCache; nothing in it is shared. Entries are valid
// while their notifier's generation is unchanged. A ListenerSet displaced from an entry is never
// released inline (its release could run user destructors that re-enter the cache): it is parked
// in `retired` and released at the start of the thread's next top-level lookup.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace notifications::detail {

struct ListenerSet;
struct EventContext;

namespace name_words {
inline std::uint64_t load8(const char* p) noexcept {
  std::uint64_t value;
  std::memcpy(&value, p, sizeof value);
  return value;
}
inline std::uint64_t load4(const char* p) noexcept {
  std::uint32_t value;
  std::memcpy(&value, p, sizeof value);
  return value;
}
// a * b with its high half folded into the low bits (the cache index uses the low bits).
inline std::uint64_t mix(std::uint64_t a, std::uint64_t b) noexcept {
  const std::uint64_t product = a * b;
  return product ^ (product >> 32);
}
}  // namespace name_words

// The hash that picks a name's cache entry. Reads the name a word at a time and never past its
// end; equal names hash equally within the process (the value is not stable across versions).
inline std::size_t name_hash(std::string_view name) noexcept {
  using namespace name_words;
  const char* p = name.data();
  const std::size_t n = name.size();
  constexpr std::uint64_t k0 = 0xA0761D6478BD642Full;
  constexpr std::uint64_t k1 = 0xE7037ED1A0B428DBull;
  std::uint64_t h = (n + 1) * 0x9E3779B97F4A7C15ull;
  if (n >= 8) {
    std::size_t i = 0;
    for (; i + 8 < n; i += 8) h = mix(h ^ load8(p + i), k0);
    return mix(h ^ load8(p + n - 8), k1);
  }
  std::uint64_t word = 0;
  if (n >= 4) {
    word = (load4(p) << 32) | load4(p + n - 4);
  } else if (n > 0) {
    word = (std::uint64_t{static_cast<unsigned char>(p[0])} << 16) |
           (std::uint64_t{static_cast<unsigned char>(p[n / 2])} << 8) |
           static_cast<unsigned char>(p[n - 1]);
  }
  return mix(h ^ word, k1);
}

// cached == name, compared a word at a time (no call for names of 4 bytes or more).
inline bool same_name(const std::string& cached, std::string_view name) noexcept {
  using namespace name_words;
  const std::size_t n = name.size();
  if (cached.size() != n) return false;
  const char* a = cached.data();
  const char* b = name.data();
  if (n >= 8) {
    for (std::size_t i = 0; i + 8 < n; i += 8) {
      if (load8(a + i) != load8(b + i)) return false;
    }
    return load8(a + n - 8) == load8(b + n - 8);
  }
  if (n >= 4) return load4(a) == load4(b) && load4(a + n - 4) == load4(b + n - 4);
  return std::memcmp(a, b, n) == 0;
}

struct ThreadCache {
  struct Entry {
    std::uint64_t notifier = 0;  // NotifierCore::uid; 0 = empty
    std::uint64_t generation = 0;
    std::size_t hash = 0;
    std::string name;
    std::shared_ptr<const ListenerSet> set;  // nullptr: nobody listens
  };
  static constexpr std::size_t kEntries = 128;  // direct-mapped; bounded by construction

  ThreadCache() = default;
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;
  // At thread exit: releases the cached sets while the cache is still whole, so listener
  // destructors that run now find a consistent (empty) cache.
  ~ThreadCache() {
    std::vector<std::shared_ptr<const ListenerSet>> sets = std::move(retired);
    for (Entry& entry : entries) {
      entry.notifier = 0;
      if (entry.set) sets.push_back(std::move(entry.set));
    }
    sets.clear();
  }

  std::array<Entry, kEntries> entries;
  int dispatch_depth = 0;  // ActiveEvents alive on this thread
  std::vector<std::shared_ptr<const ListenerSet>> retired;

  // The thread's context and tags (notifications/context.hpp; local/context.cpp keeps them), and
  // what an event started now captures: null when the thread has neither, which is what an
  // ActiveEvent checks (one load, no call).
  std::shared_ptr<const nlohmann::json> context;
  std::shared_ptr<const nlohmann::json> tags;
  std::shared_ptr<const EventContext> captured;
};

ThreadCache& thread_cache();

}  // namespace notifications::detail
