// How much of the full counts a stress test runs: a tenth in the sanitizer builds
// (NOTIFICATIONS_TESTS_SHORT), all of it otherwise.
#pragma once

namespace test_support {
#ifdef NOTIFICATIONS_TESTS_SHORT
inline constexpr int kScale = 10;
#else
inline constexpr int kScale = 1;
#endif
}  // namespace test_support
