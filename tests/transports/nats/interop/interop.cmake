# Interop with nats.js: test_nats_interop runs tests/transports/nats/interop/peer.mjs under node against a
# real nats-server (with JetStream, for the jetstream:// cases). Included from tests/CMakeLists.txt inside if(NOTIFICATIONS_WITH_NATS), after
# transports/nats/harness.cmake (nats_test_harness). Run time only: node (18 or later) and the packages that
# tests/transports/nats/interop/install.sh puts in node_modules; without them the tests skip.
notifications_test(test_nats_interop transports/nats/interop/test_nats_interop.cpp)
target_link_libraries(test_nats_interop PRIVATE notifications::nats notifications::jetstream nats_test_harness)
target_compile_definitions(test_nats_interop PRIVATE INTEROP_DIR="${CMAKE_CURRENT_LIST_DIR}")
set_tests_properties(test_nats_interop PROPERTIES RESOURCE_LOCK nats_server)
