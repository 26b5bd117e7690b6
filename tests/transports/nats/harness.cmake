# The nats-server test harness (tests/transports/nats/nats_server.hpp) and the test of the harness itself.
# Included from tests/CMakeLists.txt. Run time only: /usr/sbin/nats-server and /usr/bin/openssl.
include(${CMAKE_CURRENT_LIST_DIR}/harness_library.cmake)

notifications_test(test_nats_server_harness transports/nats/test_nats_server_harness.cpp)
target_link_libraries(test_nats_server_harness PRIVATE nats_test_harness)
