// The page MetricsServer serves at GET / when it serves an EventStream: one self-contained HTML
// document (no external resource, no build step) that reads GET /events in the browser and shows
// the latest events and a per-name rate table (docs/event_stream.md). The page parses the
// text/event-stream format itself (fetch and a stream reader, not EventSource: frames carry
// "event: <event name>", and EventSource delivers a named event only to a listener registered for
// that name, which the page cannot know in advance).
//
// Contract: event_page_html() returns the same bytes (UTF-8) on every call; they live as long as
// the program (a static). Thread-safety: safe to call from any thread, concurrently (it reads a
// constant).
#pragma once

#include <string_view>

namespace notifications::prometheus::detail {

std::string_view event_page_html() noexcept;

}  // namespace notifications::prometheus::detail
