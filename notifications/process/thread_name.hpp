// Private: names the calling thread as the operating system shows it (top -H, ps -L, gdb, perf),
// so that the threads the bus starts are recognisable in a program's thread list. Linux keeps
// the first 15 characters.
//
// Thread-safety: affects the calling thread only; safe from any thread.
#pragma once

#if defined(__linux__)
#include <pthread.h>
#endif

namespace notifications::detail {

inline void name_this_thread(const char* name) noexcept {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), name);
#else
  (void)name;
#endif
}

}  // namespace notifications::detail
