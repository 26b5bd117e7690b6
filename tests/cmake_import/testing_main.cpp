// Passes when the installed testing component's helpers see events of the default notifier.
#include <notifications/testing.hpp>

TEST(InstalledTesting, NotifiedSeesTheEvent) {
  EXPECT_TRUE(notifications::testing::notified("consumer.testing", {{"ok", true}}, [] {
    notifications::instrument("consumer.testing", {{"ok", true}});
  }));
}
