// The source of notifications_test_pch (tests/CMakeLists.txt): the target exists to build the
// precompiled header the tests share, and this file holds no code.
