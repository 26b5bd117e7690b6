// Private to the JetStream transport: error texts from cnats statuses and JetStream error codes.
//
// Thread-safety: pure functions, except that describe_js() reads cnats' per-thread last error,
// so call it on the thread that got the status.
#pragma once

#include <nats/nats.h>

#include <string>

#include "notifications/transports/jetstream.hpp"
#include "transport/kit.hpp"
#include "transport/redaction.hpp"

namespace notifications::jetstream_detail {

// "<what>: <status> (JetStream error <code>): <cnats' last error on this thread>", the server's
// text escaped; the code and the last error only when there are any. The connection's password
// and token never appear in it (cnats' text may echo a URL or a credential), nor any URL's
// user-info.
inline std::string describe_js(const JetStreamOptions& options, const std::string& what, natsStatus status,
                               jsErrCode code) {
  std::string text = what + ": " + natsStatus_GetText(status);
  if (static_cast<int>(code) != 0) text += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
  natsStatus last = NATS_OK;
  const char* detail_text = nats_GetLastError(&last);
  if (detail_text != nullptr && *detail_text != '\0' && last == status) text += ": " + detail::wire_text(detail_text);
  return redaction::Scrubber({options.connection.password, options.connection.token})(std::move(text));
}

// A refusal that retrying cannot mend: the request itself is wrong (consumer configuration, a
// pattern outside the stream's subjects, a name in use in another way).
inline bool is_configuration_error(jsErrCode code) {
  const int c = static_cast<int>(code);
  return c == JSConsumerNameExistErr || (c >= JSConsumerDurableNameNotInSubjectErr && c <= JSConsumerEphemeralWithDurableNameErr) ||
         c == JSStreamInvalidConfig || c == JSStreamSubjectOverlapErr ||
         (c >= JSConsumerConfigRequiredErr && c <= JSConsumerInvalidSamplingErr);
}

}  // namespace notifications::jetstream_detail
