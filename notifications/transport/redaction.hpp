// Private: credential redaction, the one place that decides what looks secret.
//
// Everything the library shows (errors, logs, health) passes what may hold credentials through
// these functions: the Bridge's configuration errors (remote/config.cpp), the factory's errors and
// redact_url (transport/schemes.cpp, declared in notifications/transport.hpp), and the transports
// through the kit (transport/kit.hpp).
//
// Contracts:
//   1. One list of secret-looking words (kSecretWords). A key (query parameter, JSON option key)
//      is secret-looking when its ASCII-lower-cased form contains one of them; its value is then
//      shown as "***". No other list exists in the library.
//   2. User-info ("scheme://user:password@host", "scheme://token@host") is replaced by "***"
//      up to the LAST '@' of the URL's authority, so an unencoded '@', '/', ',' or ':' in a
//      password cannot leak part of it.
//   3. The functions err towards hiding: a text that only resembles a credential may be hidden
//      too; a credential is never shown.
//   4. All functions are pure (no state, no locks) and safe to call from any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace notifications::redaction {

// The words that make a key secret-looking (contract 1). The union of what the configuration and
// the URL redaction used to know separately.
inline constexpr std::string_view kSecretWords[] = {"pass", "pwd",  "token", "secret", "key",
                                                    "jwt",  "seed", "cred",  "auth"};

// True when `key` contains one of kSecretWords, ignoring ASCII case ("NKEY_Seed", "api_token").
bool secret_looking(std::string_view key);

// A URL query (from its '?', with or without an '#fragment'): values of secret-looking keys
// become "***" ("?a=1&token=x#f" -> "?a=1&token=***#f"); a value that holds credentials itself
// keeps only what follows them ("servers=nats://u:pw@h" -> "servers=nats://***@h").
std::string redact_query(std::string_view query);

// Free text that may hold URLs anywhere (an error message, a value quoted in one): for every
// "://", what follows up to the next whitespace or '"' counts as that URL; its user-info up to
// its last '@' becomes "***" and its query is redacted as by redact_query. Text without "://" is
// returned unchanged.
std::string redact_text(std::string_view text);

// Appends `text` as a JSON string holding at most about `budget` bytes of it (cut, not marked;
// invalid UTF-8 replaced). Does not redact.
void append_json_string(std::string& out, std::string_view text, std::size_t budget);

// Appends `value` as compact JSON for a message: strings pass through redact_text, and the value
// under every secret-looking object key is shown as "***" whatever its type. It stops descending
// once `out` is longer than `limit`, which also bounds the recursion depth; the brackets it closes
// on the way out may make `out` up to about twice `limit`, so callers cut the result.
void append_redacted_json(const nlohmann::json& value, std::string& out, std::size_t limit);

// Replaces known secret values (a password, a token) wherever they occur in a text produced by
// code that may echo them (a client library's error), then redacts the text as redact_text does.
// Empty secrets are ignored.
class Scrubber {
 public:
  Scrubber() = default;
  explicit Scrubber(std::vector<std::string> secrets);
  std::string operator()(std::string text) const;

 private:
  std::vector<std::string> secrets_;  // non-empty strings
};

}  // namespace notifications::redaction
