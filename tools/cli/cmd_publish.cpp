// `notifications publish NAME [JSON]` (docs/cli.md): one event through a bridge of its own; the
// event's id is printed once the transport confirmed it.
#include <iostream>
#include <iterator>
#include <memory>

#include "commands.hpp"
#include "notifications/notifier.hpp"
#include "notifications/subject.hpp"
#include "notifications/transport.hpp"

namespace notifications::cli {

namespace {

struct PublishArgs {
  std::string name;
  std::string payload = "{}";
  double timeout_seconds = 5.0;
  std::string app;
};

nlohmann::json parse_payload(const std::string& argument) {
  std::string text = argument;
  if (argument == "-") text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  nlohmann::json payload;
  try {
    payload = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw UsageError("the JSON payload is not valid JSON: " + printable(e.what()) +
                     " (quote it for the shell: '{\"key\": 1}')");
  }
  if (!payload.is_object()) {
    throw UsageError(std::string("the JSON payload must be an object ({...}), not ") + payload.type_name());
  }
  return payload;
}

int publish(const GlobalOptions& options, const PublishArgs& args) {
  if (args.name.find("://") != std::string::npos) {  // the problem would quote its tokens, credentials and all
    throw UsageError("event name \"" + printable(args.name) +
                     "\" is a URL: give the transport's URL with --url, and the event's name such as 'order.placed' here");
  }
  if (const std::string problem = subject_problem(args.name); !problem.empty()) {
    throw UsageError("event name \"" + printable(args.name) + "\": " + problem);
  }
  const nlohmann::json payload = parse_payload(args.payload);
  BridgeConfig config = resolve_transport_config(options);
  if (!args.app.empty()) config.app = args.app;
  config = command_bridge_config(std::move(config), {args.name}, {});
  (void)subject_for(config.prefix, args.name);  // the whole subject must fit too (255 bytes)

  const auto timeout = std::chrono::milliseconds(static_cast<long long>(args.timeout_seconds * 1000));
  Notifier notifier;
  std::unique_ptr<Bridge> bridge = start_bridge(notifier, config);
  std::string id;
  {
    Subscription listener = notifier.subscribe(Pattern::exact(args.name), [&id](const Event& event) { id = event.id(); });
    notifier.instrument(args.name, payload);
  }
  const bool confirmed = bridge->flush(timeout);
  const nlohmann::json health = bridge->health();
  bridge->shutdown(std::chrono::milliseconds(500));
  // A flush also returns once an event was given up on for good (too large for the server, ...).
  std::string dropped;
  for (const auto& [reason, count] : health["counters"]["dropped"].items()) {
    if (count.is_number() && count.get<std::uint64_t>() > 0) dropped += (dropped.empty() ? "" : ", ") + reason;
  }
  if (!dropped.empty()) {
    std::cerr << "notifications publish: event " << id << " was not published: dropped (" << dropped
              << "; the warning above says why)" << std::endl;
    return kFailed;
  }
  if (confirmed) {
    if (options.json) {
      std::cout << nlohmann::json{{"id", id}, {"name", args.name}, {"confirmed", true}}.dump() << std::endl;
    } else {
      std::cout << id << std::endl;
    }
    return kOk;
  }
  const std::string last_error = health.value("last_error", nlohmann::json()).is_string()
                                     ? health["last_error"].get<std::string>()
                                     : std::string();
  const std::string why = last_error.empty() ? "" : " (last error: " + last_error + ")";
  if (!transport_connected(health)) {
    throw Unreachable("event " + id + " not confirmed: " + redact_url(config.url) + " could not be reached within " +
                      std::to_string(args.timeout_seconds) + " s" + why);
  }
  std::cerr << "notifications publish: event " << id << " was not confirmed by " << redact_url(config.url)
            << " within the timeout" << why << "; it may or may not have been delivered" << std::endl;
  return kFailed;
}

}  // namespace

void add_publish_command(CLI::App& app, const GlobalOptions& options, int& exit_code) {
  auto args = std::make_shared<PublishArgs>();
  CLI::App* command = app.add_subcommand(
      "publish", "publish one event NAME with a JSON object payload; prints the event's id once the transport confirmed it");
  command->add_option("NAME", args->name, "event name: dot-separated tokens of letters, digits, '_' and '-'")->required();
  command->add_option("JSON", args->payload, "payload, a JSON object (default {}); - reads it from standard input");
  command->add_option("--timeout", args->timeout_seconds, "seconds to wait for the transport's confirmation (default 5)")
      ->check(CLI::Range(0.001, 3600.0));
  command->add_option("--app", args->app, "producer name the event carries (default: the configuration's app)");
  command->callback([&options, &exit_code, args] {
    exit_code = run_command("publish", options, [&] { return publish(options, *args); });
  });
}

}  // namespace notifications::cli
