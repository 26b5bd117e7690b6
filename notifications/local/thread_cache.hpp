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
#include <memory>
#include <string>
#include <vector>

namespace notifications::detail {

struct ListenerSet;

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
};

ThreadCache& thread_cache();

}  // namespace notifications::detail
