# The nats-server harness library (tests/transports/nats/nats_server.hpp, with tests/wait.hpp beside it):
# used by the NATS tests and by bench/bench_nats. Included from both; defined once.
if(NOT TARGET nats_test_harness)
  find_package(Threads REQUIRED)
  add_library(nats_test_harness STATIC ${CMAKE_CURRENT_LIST_DIR}/nats_server.cpp)
  target_include_directories(nats_test_harness PUBLIC ${CMAKE_CURRENT_LIST_DIR} ${CMAKE_CURRENT_LIST_DIR}/../..)
  target_link_libraries(nats_test_harness PUBLIC Threads::Threads)
  target_compile_features(nats_test_harness PUBLIC cxx_std_20)
  target_compile_options(nats_test_harness PRIVATE -Wall -Wextra)
endif()
