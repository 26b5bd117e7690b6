# The nats-server test harness (tests/nats/nats_server.hpp) and the test of the harness itself.
# Included from tests/CMakeLists.txt. Run time only: /usr/sbin/nats-server and /usr/bin/openssl.
find_package(Threads REQUIRED)

add_library(nats_test_harness STATIC ${CMAKE_CURRENT_LIST_DIR}/nats_server.cpp)
target_include_directories(nats_test_harness PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(nats_test_harness PUBLIC Threads::Threads)
target_compile_features(nats_test_harness PUBLIC cxx_std_20)
target_compile_options(nats_test_harness PRIVATE -Wall -Wextra)

notifications_test(test_nats_server_harness nats/test_nats_server_harness.cpp)
target_link_libraries(test_nats_server_harness PRIVATE nats_test_harness)
