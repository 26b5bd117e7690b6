// How much of the full counts a stress test runs: a tenth in the sanitizer builds
// (NOTIFICATIONS_TESTS_SHORT), all of it otherwise. And which sanitizer a test runs under, the
// same with GCC and clang (clang 14 defines no __SANITIZE_ADDRESS__).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define NOTIFICATIONS_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NOTIFICATIONS_TEST_ASAN 1
#endif
#endif

namespace test_support {
#ifdef NOTIFICATIONS_TESTS_SHORT
inline constexpr int kScale = 10;
#else
inline constexpr int kScale = 1;
#endif
}  // namespace test_support
