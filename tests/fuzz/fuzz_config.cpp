// libFuzzer target for config_from_text. ConfigError is the only acceptable failure: any other
// exception, a crash, a sanitizer report or a leak is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "notifications/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const notifications::BridgeConfig config = notifications::config_from_text(text, "fuzz");
    // What config_from_text returns must pass validate() on its own.
    config.validate();
  } catch (const notifications::ConfigError&) {
  }
  return 0;
}
