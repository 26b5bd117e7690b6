// The fast envelope decoder (envelope_plain.hpp): one pass over the body with no JSON tree for
// the envelope itself. A payload is built straight into its JSON value, strings decoded here
// (escapes and UTF-8 checked as nlohmann's lexer checks them), as are the envelope's own strings;
// a payload with a surrogate escape or a number std::from_chars cannot read exactly goes through
// nlohmann's parser, and an envelope string with a surrogate escape to the general decoder.
#include "remote/envelope_plain.hpp"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>

#include "remote/envelope_rules.hpp"

namespace notifications::detail {

namespace {

using nlohmann::json;

class Scanner {
 public:
  explicit Scanner(std::string_view text) : text_(text) {}

  bool at_end() {
    skip_space();
    return pos_ == text_.size();
  }

  bool consume(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  // A string of printable ASCII without escapes: its characters, without the quotes.
  bool plain_string(std::string_view& out) {
    skip_space();
    if (pos_ >= text_.size() || text_[pos_] != '"') return false;
    const std::size_t start = ++pos_;
    while (pos_ < text_.size() && is_plain_string_byte(text_[pos_])) ++pos_;
    if (pos_ >= text_.size() || text_[pos_] != '"') return false;  // the end, an escape or another byte
    out = text_.substr(start, pos_ - start);
    ++pos_;
    return true;
  }

  // Any JSON string, decoded by scan_string(); one with a surrogate escape is declined.
  bool string(std::string& out) {
    skip_space();
    out.clear();
    return scan_string(&out);
  }

  // A non-negative integer of at most 16 digits, no leading zeros, no fraction or exponent.
  bool integer(std::uint64_t& out) {
    skip_space();
    const std::size_t start = pos_;
    std::uint64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      value = value * 10 + static_cast<std::uint64_t>(text_[pos_] - '0');
      ++pos_;
    }
    const std::size_t count = pos_ - start;
    if (count == 0 || count > 16 || (count > 1 && text_[start] == '0')) return false;
    if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) return false;
    out = value;
    return true;
  }

  // A JSON value built directly, as nlohmann's parser would build it, when it holds nothing but
  // objects, arrays, literals, strings (valid UTF-8, any escape but those of surrogates) and
  // numbers that std::from_chars reads exactly (both round correctly). Containers nest at most
  // `depth` deep.
  // False (`out` and the position unspecified) otherwise: the caller then uses value().
  bool simple_value(json& out, std::size_t depth) {
    skip_space();
    if (pos_ >= text_.size()) return false;
    switch (text_[pos_]) {
      case '{': {
        if (depth == 0) return false;
        ++pos_;
        out = json::object();
        if (consume('}')) return true;
        do {
          std::string key;
          skip_space();
          if (!scan_string(&key) || !consume(':')) return false;
          if (!simple_value(out[std::move(key)], depth - 1)) return false;  // a repeated key: the last wins
        } while (consume(','));
        return consume('}');
      }
      case '[': {
        if (depth == 0) return false;
        ++pos_;
        out = json::array();
        if (consume(']')) return true;
        do {
          if (!simple_value(out.emplace_back(), depth - 1)) return false;
        } while (consume(','));
        return consume(']');
      }
      case '"': {
        std::string text;
        if (!scan_string(&text)) return false;
        out = std::move(text);
        return true;
      }
      case 't':
        return literal("true", out, true);
      case 'f':
        return literal("false", out, false);
      case 'n':
        return literal("null", out, nullptr);
      default:
        return number(out);
    }
  }

  // The payload: built directly when simple_value() can, else parsed by nlohmann. The envelope
  // object is level 1 of the nesting limit.
  bool payload(json& out) {
    const std::size_t start = pos_;
    if (simple_value(out, kMaxDepth - 1)) return true;
    pos_ = start;
    return value(out, kMaxDepth - 1);
  }

  // The payload validated and not built: true, with `span` set to its bytes, when nlohmann's parser
  // accepts exactly those bytes, alone as in the body, and the value nests at most as deep as
  // payload() allows. Declines (false) what it does not check itself: \u escapes of surrogates
  // and numbers nlohmann might not hold (an exponent or fraction std::from_chars cannot read as a
  // finite double, integers of more than 300 digits).
  bool validated_payload(PayloadSpan& span) {
    skip_space();
    const std::size_t start = pos_;
    if (!valid_value(kMaxDepth - 1)) return false;
    span = PayloadSpan{start, pos_ - start};
    return true;
  }

  // Any JSON value, parsed by nlohmann; nesting (within the value) at most `max_depth`.
  bool value(json& out, std::size_t max_depth) {
    skip_space();
    const std::size_t start = pos_;
    if (pos_ >= text_.size()) return false;
    const char c = text_[pos_];
    if (c == '"') {
      if (!skip_string()) return false;
    } else if (c == '{' || c == '[') {
      if (!skip_nested()) return false;
    } else {
      while (pos_ < text_.size() && !is_delimiter(text_[pos_])) ++pos_;
    }
    const std::string_view token = text_.substr(start, pos_ - start);
    if (!parses_alone_as_in_the_body(token) || too_deep_at(token, max_depth) != std::string_view::npos) return false;
    out = json::parse(token, nullptr, false);
    return !out.is_discarded();
  }

 private:
  // One JSON value checked as validated_payload() says; containers at most `depth` deep.
  bool valid_value(std::size_t depth) {
    skip_space();
    if (pos_ >= text_.size()) return false;
    switch (text_[pos_]) {
      case '{':
        if (depth == 0) return false;
        ++pos_;
        if (consume('}')) return true;
        do {
          skip_space();
          if (!valid_string() || !consume(':') || !valid_value(depth - 1)) return false;
        } while (consume(','));
        return consume('}');
      case '[':
        if (depth == 0) return false;
        ++pos_;
        if (consume(']')) return true;
        do {
          if (!valid_value(depth - 1)) return false;
        } while (consume(','));
        return consume(']');
      case '"':
        return valid_string();
      case 't':
        return word("true");
      case 'f':
        return word("false");
      case 'n':
        return word("null");
      default:
        return valid_number();
    }
  }

  bool word(std::string_view w) {
    if (text_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }

  // A string at pos_: escapes as JSON defines them (no surrogate escapes), no control bytes,
  // well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF), as nlohmann's
  // lexer requires. With `out`, its decoded text is appended there, as nlohmann decodes it.
  bool scan_string(std::string* out) {
    if (pos_ >= text_.size() || text_[pos_] != '"') return false;
    ++pos_;
    const auto byte = [&](std::size_t at) { return static_cast<unsigned char>(text_[at]); };
    // Bytes taken as they are, from `from` to pos_.
    const auto keep = [&](std::size_t from) {
      if (out != nullptr) out->append(text_.data() + from, pos_ - from);
    };
    while (pos_ < text_.size()) {
      const std::size_t run = pos_;
      while (pos_ < text_.size() && is_plain_string_byte(text_[pos_])) ++pos_;
      keep(run);
      if (pos_ >= text_.size()) return false;
      const unsigned char c = byte(pos_);
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c == '\\') {
        if (++pos_ >= text_.size()) return false;
        const char e = text_[pos_];
        if (e == 'u') {
          unsigned unit = 0;
          for (int i = 1; i <= 4; ++i) {
            if (pos_ + static_cast<std::size_t>(i) >= text_.size()) return false;
            const char h = text_[pos_ + static_cast<std::size_t>(i)];
            const int digit = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                                             : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
            if (digit < 0) return false;
            unit = unit * 16 + static_cast<unsigned>(digit);
          }
          if (unit >= 0xD800 && unit <= 0xDFFF) return false;  // pairs are left to nlohmann
          pos_ += 5;
          if (out != nullptr) append_utf8(*out, unit);
          continue;
        }
        char decoded = 0;
        switch (e) {
          case '"': decoded = '"'; break;
          case '\\': decoded = '\\'; break;
          case '/': decoded = '/'; break;
          case 'b': decoded = '\b'; break;
          case 'f': decoded = '\f'; break;
          case 'n': decoded = '\n'; break;
          case 'r': decoded = '\r'; break;
          case 't': decoded = '\t'; break;
          default: return false;
        }
        ++pos_;
        if (out != nullptr) out->push_back(decoded);
        continue;
      }
      const std::size_t start = pos_;
      if (c == 0x7F) {
        pos_ += 1;  // DEL: not in the plain table, but JSON and nlohmann take it as it is
      } else if (c < 0x80) {
        return false;  // a control byte
      } else if (const std::size_t length = utf8_sequence_length(text_, pos_); length > 1) {
        pos_ += length;
      } else {
        return false;
      }
      keep(start);
    }
    return false;
  }

  bool valid_string() { return scan_string(nullptr); }

  // A code point below U+10000 that is not a surrogate, as UTF-8.
  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out.push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (code >> 6)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xE0 | (code >> 12)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }

  // Past one number of JSON's grammar from pos_; false when there is none. `integral`: it has no
  // fraction and no exponent.
  bool number_token(bool& integral) {
    const auto digit = [&] { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; };
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    if (!digit()) return false;
    if (text_[pos_] == '0') {
      ++pos_;
    } else {
      while (digit()) ++pos_;
    }
    integral = true;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (!digit()) return false;
      while (digit()) ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (!digit()) return false;
      while (digit()) ++pos_;
    }
    return true;
  }

  // JSON's number grammar, declining what nlohmann might turn into a value it cannot hold.
  bool valid_number() {
    const std::size_t start = pos_;
    bool integral = true;
    if (!number_token(integral)) return false;
    if (integral) return pos_ - start <= 301;  // a sign and 300 digits: past 64 bits nlohmann reads a finite double
    double value = 0;
    const char* last = text_.data() + pos_;
    const auto [end, error] = std::from_chars(text_.data() + start, last, value);
    return error == std::errc() && end == last && std::isfinite(value);
  }

  template <class T>
  bool literal(std::string_view word, json& out, T value) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    out = value;
    return true;
  }

  // JSON's number grammar; integers become number_unsigned (>= 0) or number_integer (< 0), others
  // number_float, as in nlohmann. Out of range: false.
  bool number(json& out) {
    const std::size_t start = pos_;
    const bool negative = pos_ < text_.size() && text_[pos_] == '-';
    bool integral = true;
    if (!number_token(integral)) return false;
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integral && negative) {
      std::int64_t value = 0;
      const auto [end, error] = std::from_chars(first, last, value);
      if (error != std::errc() || end != last) return false;
      out = value;
    } else if (integral) {
      std::uint64_t value = 0;
      const auto [end, error] = std::from_chars(first, last, value);
      if (error != std::errc() || end != last) return false;
      out = value;
    } else {
      double value = 0;
      const auto [end, error] = std::from_chars(first, last, value);
      if (error != std::errc() || end != last || !std::isfinite(value)) return false;
      out = value;
    }
    return true;
  }

  // nlohmann, given a token alone, skips a UTF-8 byte order mark before it and stops at a NUL
  // byte, where the same token inside the body is an error: such tokens are left to the general
  // decoder.
  static bool parses_alone_as_in_the_body(std::string_view token) {
    if (token.empty() || token.find('\0') != std::string_view::npos) return false;
    const char c = token.front();
    return c == '{' || c == '[' || c == '"' || c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' ||
           c == 'n';
  }

  static bool is_delimiter(char c) {
    return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
  }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  // From an opening quote to just past its closing one.
  bool skip_string() {
    for (++pos_; pos_ < text_.size(); ++pos_) {
      if (text_[pos_] == '\\') {
        ++pos_;
      } else if (text_[pos_] == '"') {
        ++pos_;
        return true;
      }
    }
    return false;
  }

  // From an opening bracket to just past the bracket that closes it (kinds are left to the parser).
  bool skip_nested() {
    std::size_t depth = 0;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '"') {
        if (!skip_string()) return false;
        continue;
      }
      ++pos_;
      if (c == '{' || c == '[') {
        ++depth;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        return true;
      }
    }
    return false;
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

enum Field : unsigned {
  kSchemaVersion = 1u << 0,
  kId = 1u << 1,
  kName = 1u << 2,
  kTime = 1u << 3,
  kDuration = 1u << 4,
  kProducer = 1u << 5,
  kProducerInstance = 1u << 6,
  kTraceparent = 1u << 7,
  kSequence = 1u << 8,
  kException = 1u << 9,
  kPayload = 1u << 10,
  kContext = 1u << 11,
  kTags = 1u << 12,
};
constexpr unsigned kRequired =
    kSchemaVersion | kId | kName | kTime | kDuration | kProducer | kProducerInstance | kPayload;

Field field_of(std::string_view key) {
  static constexpr std::pair<std::string_view, Field> kFields[] = {
      {"id", kId},
      {"name", kName},
      {"time", kTime},
      {"duration_us", kDuration},
      {"producer", kProducer},
      {"producer_instance", kProducerInstance},
      {"schema_version", kSchemaVersion},
      {"traceparent", kTraceparent},
      {"sequence", kSequence},
      {"exception", kException},
      {"payload", kPayload},
      {"context", kContext},
      {"tags", kTags},
  };
  for (const auto& [name, field] : kFields) {
    if (name == key) return field;
  }
  return Field{};
}

// {"type": non-empty string, "message": string}, each once, nothing else.
bool exception(Scanner& in, Envelope& out) {
  std::string type;
  std::string message;
  bool have_type = false;
  bool have_message = false;
  if (!in.consume('{')) return false;
  do {
    std::string_view key;
    if (!in.plain_string(key) || !in.consume(':')) return false;
    if (key == "type" && !have_type) {
      if (!in.string(type) || type.empty()) return false;
      have_type = true;
    } else if (key == "message" && !have_message) {
      if (!in.string(message)) return false;
      have_message = true;
    } else {
      return false;
    }
  } while (in.consume(','));
  if (!in.consume('}') || !have_type || !have_message) return false;
  out.exception_type = std::move(type);
  out.exception_message = std::move(message);
  return true;
}

// `deferred`: the payload is validated and its span set, not built.
bool member(Scanner& in, Field field, Envelope& out, PayloadSpan* deferred) {
  std::string_view text;
  std::uint64_t number = 0;
  switch (field) {
    case kSchemaVersion:
      if (!in.integer(number) || number != static_cast<std::uint64_t>(Envelope::kSchemaVersion)) return false;
      out.schema_version = Envelope::kSchemaVersion;
      return true;
    case kId:
      if (!in.plain_string(text) || !is_uuid(text)) return false;
      out.id.assign(text);
      return true;
    case kName:
      return in.string(out.name) && !out.name.empty();
    case kTime: {
      if (!in.plain_string(text)) return false;
      const auto time = envelope_time(text);
      if (!time) return false;
      out.time = *time;
      return true;
    }
    case kDuration:
      if (!in.integer(number) || number > static_cast<std::uint64_t>(kMaxExactInteger)) return false;
      out.duration = std::chrono::microseconds(static_cast<std::int64_t>(number));
      return true;
    case kProducer:
      return in.string(out.producer) && !out.producer.empty();
    case kProducerInstance:
      return in.string(out.producer_instance) && !out.producer_instance.empty();
    case kTraceparent:
      if (!in.plain_string(text) || !is_traceparent(text)) return false;
      out.traceparent.assign(text);
      return true;
    case kSequence:
      if (!in.integer(number) || number < 1 || number > static_cast<std::uint64_t>(kMaxExactInteger)) return false;
      out.sequence = number;
      return true;
    case kException:
      return exception(in, out);
    case kPayload:
      return deferred != nullptr ? in.validated_payload(*deferred) : in.payload(out.payload);
    case kContext:
      return in.payload(out.context) && out.context.is_object();
    case kTags:
      return in.payload(out.tags) && out.tags.is_object();
  }
  return false;
}

bool decode(std::string_view body, Envelope& out, PayloadSpan* deferred) {
  Scanner in(body);
  unsigned seen = 0;
  if (!in.consume('{')) return false;
  do {
    std::string_view key;
    if (!in.plain_string(key) || !in.consume(':')) return false;
    const Field field = field_of(key);
    if (field == Field{} || (seen & field) != 0) return false;  // unknown or repeated
    seen |= field;
    if (!member(in, field, out, deferred)) return false;
  } while (in.consume(','));
  return in.consume('}') && in.at_end() && (seen & kRequired) == kRequired;
}

}  // namespace

bool decode_plain_envelope(std::string_view body, Envelope& out) { return decode(body, out, nullptr); }

bool decode_plain_envelope_deferring_payload(std::string_view body, Envelope& out, PayloadSpan& payload) {
  return decode(body, out, &payload);
}

nlohmann::json build_validated_payload(std::string_view text) {
  Scanner in(text);
  nlohmann::json value;
  if (in.payload(value)) return value;
  // Unreachable for a span the decoder validated: nlohmann's error says what it found.
  return nlohmann::json::parse(text);
}

}  // namespace notifications::detail
