// `notifications tail [PATTERN]` (docs/cli.md): prints the events other programs publish, as
// lines (or JSON lines), or as a per-name rate table refreshed every second.
//
// Threads: the bridge's dispatcher thread runs the listener, which prints a line (or counts);
// the main thread waits for the end (--count, --for, SIGINT/SIGTERM) and prints the rate table.
// Both write standard output under TailState::mutex.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <signal.h>
#include <time.h>
#include <cstdio>
#include <iomanip>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "notifications/envelope.hpp"
#include "notifications/notifier.hpp"
#include "notifications/transport.hpp"

namespace notifications::cli {

namespace {

struct TailArgs {
  std::string pattern = ">";
  std::uint64_t count = 0;
  double for_seconds = 0;
  bool rate = false;
  std::size_t width = 120;
};

struct NameCount {
  std::uint64_t total = 0;
  std::uint64_t at_last_table = 0;
};

// Shared by the listener (dispatcher thread) and the main thread.
struct TailState {
  TailState(TailArgs tail_args, bool json_output) : args(std::move(tail_args)), json(json_output) {}
  const TailArgs args;
  const bool json;
  std::atomic<std::uint64_t> seen{0};
  std::mutex mutex;
  std::map<std::string, NameCount> names;  // guarded by mutex (rate mode)

  void on_event(const Event& event) {
    const std::uint64_t n = seen.fetch_add(1) + 1;
    if (args.count != 0 && n > args.count) return;  // past --count: the main thread is ending
    std::lock_guard<std::mutex> lock(mutex);
    if (args.rate) {
      ++names[std::string(event.name())].total;
      return;
    }
    const std::string line = json ? event_to_json(event).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                                  : human_line(event);
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }

  std::string human_line(const Event& event) const {
    std::ostringstream out;
    std::string producer = "?";
    if (event.origin()) {
      producer = printable(event.origin()->producer) + "/" + printable(event.origin()->producer_instance.substr(0, 8));
    }
    out << local_time_ms(event.time()) << "  " << std::left << std::setw(24) << std::string(event.name()) << "  "
        << std::setw(20) << producer << "  " << compact_json(event.payload(), args.width);
    if (event.duration().count() > 0) out << "  (" << std::fixed << std::setprecision(1) << event.duration_ms() << " ms)";
    if (event.exception()) {
      out << "  raised " << printable(event.exception()->type) << ": " << printable(event.exception()->message);
    }
    return out.str();
  }

  // Prints the table of rates since the last one (`elapsed` ago), sorted by rate, then name.
  void print_table(std::chrono::duration<double> elapsed, bool clear_screen) {
    struct Row {
      std::string name;
      double per_second;
      std::uint64_t total;
    };
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<Row> rows;
    const double seconds = std::max(elapsed.count(), 0.001);
    for (auto& [name, count] : names) {
      rows.push_back(Row{name, static_cast<double>(count.total - count.at_last_table) / seconds, count.total});
      count.at_last_table = count.total;
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      return a.per_second != b.per_second ? a.per_second > b.per_second : a.name < b.name;
    });
    std::ostringstream out;
    if (json) {
      nlohmann::json table{{"time", format_rfc3339(std::chrono::system_clock::now())}, {"rates", nlohmann::json::array()}};
      for (const Row& row : rows) {
        table["rates"].push_back({{"name", row.name}, {"per_second", row.per_second}, {"total", row.total}});
      }
      out << table.dump() << "\n";
    } else {
      if (clear_screen) out << "\033[H\033[2J";
      out << local_time_ms(std::chrono::system_clock::now()) << "  " << rows.size() << " names\n";
      out << std::left << std::setw(40) << "NAME" << std::right << std::setw(12) << "EVENTS/S" << std::setw(12)
          << "TOTAL" << "\n";
      for (const Row& row : rows) {
        out << std::left << std::setw(40) << row.name << std::right << std::setw(12) << std::fixed
            << std::setprecision(1) << row.per_second << std::setw(12) << row.total << "\n";
      }
      out << "\n";
    }
    const std::string text = out.str();
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
};

int tail(const GlobalOptions& options, const TailArgs& args) {
  check_pattern_argument("pattern", args.pattern);
  const BridgeConfig config = command_bridge_config(resolve_transport_config(options), {}, {args.pattern});
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  const bool bounded = args.for_seconds > 0;
  const auto end = started + std::chrono::milliseconds(static_cast<long long>(args.for_seconds * 1000));
  bool stopped = false;  // by a signal
  const auto over = [&] { return stopped || (bounded && Clock::now() >= end); };

  const sigset_t blocked = stop_signals();
  ::pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
  auto state = std::make_shared<TailState>(args, options.json);
  Notifier notifier;
  Subscription listener = notifier.subscribe(Pattern::all(), [state](const Event& event) {
    if (!event.remote()) return;
    try {
      state->on_event(event);
    } catch (...) {
      // A line that could not be written is lost; the tail goes on.
    }
  });
  std::unique_ptr<Bridge> bridge = start_bridge(notifier, config);
  // Subscribed once a flush returned: on NATS the server answered a PING sent after the
  // subscription, so it has the subscription. Retried while a transport that connects in the
  // background (retry_on_failed_connect) has not connected yet.
  bool subscribed = false;
  while (!subscribed && !over()) {
    subscribed = bridge->flush(std::chrono::milliseconds(250));
    stopped = stopped || stop_signal_within(std::chrono::milliseconds(0));
  }
  if (!subscribed) {
    bridge->shutdown(std::chrono::milliseconds(1000));
    if (stopped) return kOk;
    throw Unreachable("no connection to " + redact_url(config.url) + " within " + std::to_string(args.for_seconds) + " s");
  }
  std::fprintf(stderr, "tailing %s on %s\n", args.pattern.c_str(), redact_url(config.url).c_str());
  std::fflush(stderr);

  const bool clear_screen = !options.json && ::isatty(STDOUT_FILENO) == 1;
  auto last_table = Clock::now();
  while (!over() && (args.count == 0 || state->seen.load() < args.count)) {
    stopped = stop_signal_within(std::chrono::milliseconds(20));
    if (args.rate && Clock::now() - last_table >= std::chrono::seconds(1)) {
      const auto now = Clock::now();
      state->print_table(now - last_table, clear_screen);
      last_table = now;
    }
  }
  listener.unsubscribe();
  bridge->shutdown(std::chrono::milliseconds(2000));
  if (args.rate) state->print_table(Clock::now() - last_table, false);  // the totals at the end
  return kOk;
}

}  // namespace

void add_tail_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  auto args = std::make_shared<TailArgs>();
  CLI::App* command = app.add_subcommand(
      "tail", "print the events other programs publish, as they arrive (Ctrl-C ends); PATTERN as a subscription");
  command->add_option("PATTERN", args->pattern,
                      "event names to show: a name, or wildcards ('*' one token, '>' the rest; default '>': every event)");
  command->add_option("--count", args->count, "exit after this many events")->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1000000000000}));
  command->add_option("--for", args->for_seconds, "exit after this many seconds")->check(CLI::Range(0.001, 31536000.0));
  command->add_flag("--rate", args->rate, "instead of events, a table of events per second by name, every second");
  command->add_option("--width", args->width, "cut payloads to this many bytes in lines (default 120; 0: whole)");
  command->callback([&options, &exit_code, args] {
    exit_code = run_command("tail", options, [&] { return tail(options, *args); });
  });
}

}  // namespace notifications::cli
