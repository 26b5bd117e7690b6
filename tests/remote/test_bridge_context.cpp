// Context and tags across processes (notifications/context.hpp): a Bridge sends them with every
// event, the receiving side's events carry them, and events its listeners instrument carry them
// on. Over the memory transport; every wait is bounded.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include "notifications/bridge.hpp"
#include "notifications/context.hpp"
#include "notifications/notifications.hpp"
#include "notifications/transports/memory.hpp"
#include "bridge_test_support.hpp"
#include "wait.hpp"

namespace n = notifications;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

using test_support::config_for;
using test_support::unique_broker;
using test_support::wait_until;
using Seen = test_support::Inbox;

TEST(BridgeContext, ContextAndTagsTravelAndListenersOfTheRemoteEventInstrumentWithThem) {
  for (const bool inline_delivery : {true, false}) {
    const std::string broker = unique_broker("context");
    // Before the bridges: an early return of a failed ASSERT shuts the bridges down first.
    Seen orders;
    Seen payments;
    n::Notifier shop;
    n::Notifier billing;
    n::BridgeConfig shop_config = config_for("shop");
    shop_config.subscribe = {"payment.>"};
    n::BridgeConfig billing_config = config_for("billing");
    billing_config.forward = {"payment.>"};
    billing_config.subscribe = {"order.>"};
    n::Bridge shop_bridge(shop, n::make_memory_transport({.broker = broker, .inline_delivery = inline_delivery}),
                          shop_config);
    n::Bridge billing_bridge(billing, n::make_memory_transport({.broker = broker, .inline_delivery = inline_delivery}),
                             billing_config);
    // Billing charges for every order it hears of; the charge goes back to the shop.
    auto charge = billing.subscribe(n::Pattern("order.placed"), [&](const n::Event& order) {
      billing.instrument("payment.charged", json{{"order", order.payload()["id"]}});
    });
    auto on_order = billing.subscribe(n::Pattern("order.>"), orders.listener());
    auto on_payment = shop.subscribe(n::Pattern("payment.>"), payments.listener());
    shop_bridge.start();
    billing_bridge.start();

    {
      n::ContextScope request({{"request_id", "r-42"}, {"tenant", "acme"}});
      n::tagged("checkout", [&] { shop.instrument("order.placed", json{{"id", 7}}); });
    }
    shop.instrument("order.placed", json{{"id", 8}});  // outside the request: neither

    ASSERT_TRUE(wait_until([&] { return orders.size() == 2 && payments.size() == 2; }))
        << "inline=" << inline_delivery << " orders " << orders.size() << " payments " << payments.size();
    const n::Event order = orders.at(0);
    EXPECT_TRUE(order.remote());
    EXPECT_EQ(order.payload(), json({{"id", 7}})) << "the payload must not carry the context";
    EXPECT_EQ(order.context(), json({{"request_id", "r-42"}, {"tenant", "acme"}}));
    EXPECT_EQ(order.tags(), json({{"checkout", true}}));
    EXPECT_EQ(orders.at(1).context(), json::object());
    EXPECT_EQ(orders.at(1).tags(), json::object());

    // The charge was instrumented by billing's listener of the remote order: it carries the
    // order's request id back to the shop, without billing's code knowing about it.
    const n::Event payment = payments.at(0);
    EXPECT_EQ(payment.payload(), json({{"order", 7}}));
    EXPECT_EQ(payment.context(), json({{"request_id", "r-42"}, {"tenant", "acme"}}));
    EXPECT_EQ(payment.tags(), json({{"checkout", true}}));
    EXPECT_EQ(payments.at(1).context(), json::object());

    shop_bridge.shutdown(5s);
    billing_bridge.shutdown(5s);
  }
}

}  // namespace
