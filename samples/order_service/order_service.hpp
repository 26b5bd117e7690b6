// The "existing" business code of the sample: an in-memory inventory and an order service.
//
// The service publishes events about its own work on the default notifier, from inside its
// function bodies. Its interface is what it would be without instrumentation, so callers neither
// change nor know; observers subscribe to the events separately (see observers.hpp).
//
// Events (payloads are JSON objects; a block that throws still publishes its event, with
// Event::exception() set, and the exception then reaches the caller unchanged):
//   order.placed          {order_id, customer, lines}, plus total_cents once known and
//                         tracking_number on success. Encloses the three events below.
//   order.stock.reserved  {order_id, items: [{sku, quantity}]}
//   inventory.stock_check {sku, quantity}, once per line item (hot path: a Handle, lazy payload)
//   order.payment.charged {order_id, amount_cents, card} (card masked; built only when listened to)
//   order.shipped         {order_id, carrier}
//   order.stock.released  {order_id}, an instant event when a declined order returns its stock
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <notifications/notifications.hpp>

namespace order_service {

struct LineItem {
  std::string sku;
  int quantity = 0;
};

struct Order {
  std::uint64_t id = 0;
  std::string customer;
  std::string card_number;  // digits only
  std::vector<LineItem> items;
};

struct Receipt {
  std::uint64_t order_id = 0;
  std::int64_t total_cents = 0;
  std::string tracking_number;
};

// The card issuer refused the charge. Nothing was charged.
class PaymentDeclined : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A line item cannot be served from stock. Nothing was reserved.
class OutOfStock : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Product {
  std::int64_t price_cents = 0;
  int stock = 0;
};

// Stock levels and prices by SKU.
// Thread-safety: every member function may be called concurrently from any number of threads.
class Inventory {
 public:
  explicit Inventory(std::map<std::string, Product, std::less<>> products);

  // Units of `sku` in stock now; 0 for an unknown SKU.
  int available(std::string_view sku) const;
  // Price of one unit. Throws std::out_of_range for an unknown SKU.
  std::int64_t price_cents(std::string_view sku) const;
  // Takes every item out of stock, atomically: either all of them or, when one is short or
  // unknown, none (and throws OutOfStock).
  void take(const std::vector<LineItem>& items);
  // Returns items taken by take(). Unknown SKUs are ignored.
  void put_back(const std::vector<LineItem>& items);

 private:
  mutable std::mutex mutex_;
  std::map<std::string, Product, std::less<>> products_;  // guarded by mutex_
};

// Places orders against a shared Inventory: reserves stock, charges the card, ships.
// Thread-safety: every member function may be called concurrently from any number of threads.
// The inventory must outlive the service.
class OrderService {
 public:
  explicit OrderService(Inventory& inventory);

  // Reserves, charges and ships `order`. Throws OutOfStock (nothing reserved) or PaymentDeclined
  // (the reserved stock has been returned).
  Receipt place_order(const Order& order);
  // Takes the order's items out of stock, or throws OutOfStock and takes nothing.
  void reserve_stock(const Order& order);
  // Charges `amount_cents` to the order's card. Throws PaymentDeclined; cards ending in 0002 are
  // always declined.
  void charge_payment(const Order& order, std::int64_t amount_cents);
  // Hands the order to the carrier and returns its tracking number ("TRK" and the order id).
  std::string ship(const Order& order);

 private:
  Inventory& inventory_;
  notifications::Handle stock_check_;  // "inventory.stock_check"
};

}  // namespace order_service
