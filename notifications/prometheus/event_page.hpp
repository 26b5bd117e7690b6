// Private: the page MetricsServer serves at GET / when it serves an EventStream.
// Thread-safety: returns a constant; safe from any thread.
#pragma once

#include <string_view>

namespace notifications::prometheus::detail {

std::string_view event_page_html() noexcept;

}  // namespace notifications::prometheus::detail
