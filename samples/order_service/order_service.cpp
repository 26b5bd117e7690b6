#include "order_service.hpp"

#include <chrono>
#include <cstdio>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

namespace order_service {

namespace {

using nlohmann::json;

json items_json(const std::vector<LineItem>& items) {
  json array = json::array();
  for (const LineItem& item : items) array.push_back({{"sku", item.sku}, {"quantity", item.quantity}});
  return array;
}

// "**** 4242": the only part of a card number that may appear in an event.
std::string masked(const std::string& card_number) {
  const std::size_t keep = card_number.size() < 4 ? card_number.size() : 4;
  return "**** " + card_number.substr(card_number.size() - keep);
}

// Stand-ins for remote calls: deterministic delays of a few hundred microseconds.
void call_payment_gateway(std::uint64_t order_id) {
  std::this_thread::sleep_for(std::chrono::microseconds(100 + order_id % 5 * 40));
}
void call_carrier() { std::this_thread::sleep_for(std::chrono::microseconds(50)); }

}  // namespace

// ---- Inventory ----------------------------------------------------------------------------------

Inventory::Inventory(std::map<std::string, Product, std::less<>> products)
    : products_(std::move(products)) {}

int Inventory::available(std::string_view sku) const {
  std::lock_guard lock(mutex_);
  const auto it = products_.find(sku);
  return it == products_.end() ? 0 : it->second.stock;
}

std::int64_t Inventory::price_cents(std::string_view sku) const {
  std::lock_guard lock(mutex_);
  const auto it = products_.find(sku);
  if (it == products_.end()) throw std::out_of_range("unknown sku " + std::string(sku));
  return it->second.price_cents;
}

void Inventory::take(const std::vector<LineItem>& items) {
  std::lock_guard lock(mutex_);
  for (const LineItem& item : items) {
    const auto it = products_.find(item.sku);
    const int stock = it == products_.end() ? 0 : it->second.stock;
    if (stock < item.quantity) {
      throw OutOfStock("sku " + item.sku + ": " + std::to_string(item.quantity) + " wanted, " +
                       std::to_string(stock) + " in stock");
    }
  }
  for (const LineItem& item : items) products_.find(item.sku)->second.stock -= item.quantity;
}

void Inventory::put_back(const std::vector<LineItem>& items) {
  std::lock_guard lock(mutex_);
  for (const LineItem& item : items) {
    const auto it = products_.find(item.sku);
    if (it != products_.end()) it->second.stock += item.quantity;
  }
}

// ---- OrderService -------------------------------------------------------------------------------

OrderService::OrderService(Inventory& inventory)
    : inventory_(inventory), stock_check_(notifications::handle("inventory.stock_check")) {}

Receipt OrderService::place_order(const Order& order) {
  // The block takes the payload and adds what it learns along the way.
  return notifications::instrument(
      "order.placed",
      json{{"order_id", order.id}, {"customer", order.customer}, {"lines", order.items.size()}},
      [&](json& payload) {
        std::int64_t total = 0;
        for (const LineItem& item : order.items) {
          total += inventory_.price_cents(item.sku) * item.quantity;
        }
        payload["total_cents"] = total;

        reserve_stock(order);
        try {
          charge_payment(order, total);
        } catch (const PaymentDeclined&) {
          inventory_.put_back(order.items);
          notifications::instrument("order.stock.released", {{"order_id", order.id}});
          throw;
        }
        Receipt receipt{order.id, total, ship(order)};
        payload["tracking_number"] = receipt.tracking_number;
        return receipt;
      });
}

void OrderService::reserve_stock(const Order& order) {
  json payload{{"order_id", order.id}, {"items", items_json(order.items)}};
  notifications::instrument("order.stock.reserved", payload, [&] {
    for (const LineItem& item : order.items) {
      // Hot path: with nobody listening, this costs two atomic loads on top of the check itself.
      const bool in_stock = stock_check_.instrument(
          notifications::lazy([&] { return json{{"sku", item.sku}, {"quantity", item.quantity}}; }),
          [&] { return inventory_.available(item.sku) >= item.quantity; });
      if (!in_stock) throw OutOfStock("sku " + item.sku + ": not enough in stock");
    }
    inventory_.take(order.items);  // rechecks under the inventory's lock
  });
}

void OrderService::charge_payment(const Order& order, std::int64_t amount_cents) {
  // Masking the card is work that only a listener needs: the payload is built lazily.
  notifications::instrument("order.payment.charged", notifications::lazy([&] {
                              return json{{"order_id", order.id},
                                          {"amount_cents", amount_cents},
                                          {"card", masked(order.card_number)}};
                            }),
                            [&] {
                              call_payment_gateway(order.id);
                              if (order.card_number.ends_with("0002")) {
                                throw PaymentDeclined("card " + masked(order.card_number) +
                                                      " declined");
                              }
                            });
}

std::string OrderService::ship(const Order& order) {
  return notifications::instrument(
      "order.shipped", {{"order_id", order.id}, {"carrier", "parcelco"}}, [&] {
        call_carrier();
        char tracking[32];
        std::snprintf(tracking, sizeof tracking, "TRK%08llu",
                      static_cast<unsigned long long>(order.id));
        return std::string(tracking);
      });
}

}  // namespace order_service
