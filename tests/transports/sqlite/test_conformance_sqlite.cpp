// The conformance suite over the sqlite:// transport: one database file per case (the case's
// scope), in a temporary folder of this test run. Nothing to interrupt (no connection, no server):
// the outage cases are skipped; a process crash is tested in test_transport_sqlite_processes.
#include "conformance/conformance.hpp"
#include "sqlite_test_support.hpp"

#include "notifications/transports/sqlite.hpp"

namespace {

using conformance::TransportUnderTest;
namespace n = notifications;

const test_support::TempDir& folder() {
  static const test_support::TempDir dir("sqlite-conformance");
  return dir;
}

TransportUnderTest sqlite() {
  return {"Sqlite",
          [](const std::string& scope) -> std::shared_ptr<n::Transport> {
            n::SqliteTransportOptions options;
            options.path = folder().file(scope + ".db");
            return n::make_sqlite_transport(options);
          },
          n::kSqliteCapabilities,
          {}};
}

}  // namespace

namespace conformance {
INSTANTIATE_TEST_SUITE_P(Sqlite, Conformance, ::testing::Values(sqlite()), name_of);
}  // namespace conformance
