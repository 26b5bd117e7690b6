#include "event_page.hpp"

namespace notifications::prometheus::detail {

std::string_view event_page_html() noexcept {
  return "<!doctype html><title>notifications</title><p>events at /events</p>\n";
}

}  // namespace notifications::prometheus::detail
