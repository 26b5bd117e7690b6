#include "notifications/errors.hpp"

#include <string>

#include "process/describe.hpp"

namespace notifications {

namespace {
std::string describe_all(const std::string& event_name,
                         const std::vector<std::exception_ptr>& errors) {
  std::string text = "event \"" + event_name + "\": " + std::to_string(errors.size()) +
                     " subscribers failed:";
  for (const auto& error : errors) text += " [" + detail::describe_exception(error) + "]";
  return text;
}
}  // namespace

SubscriberErrors::SubscriberErrors(const std::string& event_name,
                                   std::vector<std::exception_ptr> errors)
    : Error("subscriber_errors", describe_all(event_name, errors)), errors_(std::move(errors)) {}

}  // namespace notifications
