// Private: compact JSON written byte for byte as nlohmann's dump() writes it (no indent,
// ensure_ascii off, malformed UTF-8 replaced by U+FFFD), faster than dump() for what events
// carry: containers, integers, booleans, null and well-formed UTF-8 strings are written here;
// floats (nlohmann's shortest round-trip form) and strings that are not well-formed UTF-8 go
// through nlohmann's serializer.
//
// Every writer appends to an `Out`: std::string, or ByteBuffer, whose one-byte appends are
// inlined (std::string's push_back is an out-of-line call in libstdc++), for the payload that
// an instrumenting thread serialises per event.
//
// Thread-safety: stateless functions; a ByteBuffer is a value, used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "remote/envelope_rules.hpp"

namespace notifications::detail {

// A growable byte string: size, capacity and data only.
class ByteBuffer {
 public:
  void clear() noexcept { size_ = 0; }
  [[gnu::always_inline]] void push_back(char c) {
    if (size_ == capacity_) grow(1);
    data_[size_++] = c;
  }
  [[gnu::always_inline]] void append(const char* bytes, std::size_t count) {
    if (capacity_ - size_ < count) grow(count);
    if (count != 0) std::memcpy(data_.get() + size_, bytes, count);
    size_ += count;
  }
  ByteBuffer& operator+=(char c) {
    push_back(c);
    return *this;
  }
  ByteBuffer& operator+=(std::string_view text) {
    append(text.data(), text.size());
    return *this;
  }
  // Shortens to `size` (at most size()).
  void resize(std::size_t size) noexcept { size_ = size < size_ ? size : size_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return capacity_; }
  std::string_view view() const noexcept { return {data_.get(), size_}; }
  // Frees the storage when it grew past `keep` bytes (after a rare large payload).
  void shrink_if_above(std::size_t keep) {
    if (capacity_ > keep) *this = ByteBuffer();
  }

 private:
  [[gnu::noinline]] void grow(std::size_t more) {
    std::size_t capacity = capacity_ < 256 ? 256 : capacity_ * 2;
    while (capacity - size_ < more) capacity *= 2;
    auto data = std::make_unique<char[]>(capacity);
    if (size_ != 0) std::memcpy(data.get(), data_.get(), size_);
    data_ = std::move(data);
    capacity_ = capacity;
  }

  std::unique_ptr<char[]> data_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

// Through nlohmann's serializer: compact, malformed UTF-8 replaced by U+FFFD.
inline void append_json_general(std::string& out, const nlohmann::json& value) {
  nlohmann::detail::serializer<nlohmann::json> writer(
      nlohmann::detail::output_adapter<char, std::string>(out), ' ', nlohmann::json::error_handler_t::replace);
  writer.dump(value, false, false, 0);
}
inline void append_json_general(ByteBuffer& out, const nlohmann::json& value) {
  std::string text;
  append_json_general(text, value);
  out += text;
}

template <class Out>
void append_decimal(Out& out, std::uint64_t value) {
  char digits[20];
  char* first = digits + sizeof digits;
  do {
    *--first = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  out.append(first, static_cast<std::size_t>(digits + sizeof digits - first));
}

template <class Out>
void append_integer(Out& out, std::int64_t value) {
  if (value < 0) {
    out += '-';
    append_decimal(out, 0 - static_cast<std::uint64_t>(value));
  } else {
    append_decimal(out, static_cast<std::uint64_t>(value));
  }
}

// `text` is written between quotes as it is (envelope_rules.hpp).
inline bool needs_no_escapes(std::string_view text) {
  for (const char c : text) {
    if (!is_plain_string_byte(c)) return false;
  }
  return true;
}

// Appends `text` quoted and escaped as nlohmann's serializer does with ensure_ascii off: '"' and
// '\\' escaped, \b \f \n \r \t, other bytes below 0x20 as \u00xx (lowercase hex), every other
// byte as it is. False, with `out` as it was, when `text` is not well-formed UTF-8 (nlohmann
// replaces what is malformed; the caller lets it).
template <class Out>
bool append_escaped_utf8(Out& out, std::string_view text) {
  const std::size_t restore = out.size();
  out += '"';
  std::size_t plain_from = 0;
  for (std::size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (is_plain_string_byte(c)) {
      ++i;
      continue;
    }
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80) {
      const std::size_t length = utf8_sequence_length(text, i);
      if (length == 0) {
        out.resize(restore);
        return false;
      }
      i += length;
      continue;
    }
    out.append(text.data() + plain_from, i - plain_from);
    switch (c) {
      case '"': out.append("\\\"", 2); break;
      case '\\': out.append("\\\\", 2); break;
      case '\b': out.append("\\b", 2); break;
      case '\f': out.append("\\f", 2); break;
      case '\n': out.append("\\n", 2); break;
      case '\r': out.append("\\r", 2); break;
      case '\t': out.append("\\t", 2); break;
      default: {
        if (u >= 0x20) {  // DEL (0x7F): as it is
          out += c;
          break;
        }
        constexpr char kHex[] = "0123456789abcdef";
        const char escaped[6] = {'\\', 'u', '0', '0', kHex[u >> 4], kHex[u & 0xF]};
        out.append(escaped, sizeof escaped);
        break;
      }
    }
    plain_from = ++i;
  }
  out.append(text.data() + plain_from, text.size() - plain_from);
  out += '"';
  return true;
}

// Appends `text` as a JSON string, byte for byte as append_json_general(out, json(text)).
template <class Out>
void append_json_string(Out& out, std::string_view text) {
  if (needs_no_escapes(text)) {
    out += '"';
    out += text;
    out += '"';
  } else if (!append_escaped_utf8(out, text)) {
    append_json_general(out, nlohmann::json(text));
  }
}

// Appends `value` as compact JSON, byte for byte as value.dump(-1, ' ', false, replace).
template <class Out>
void append_json(Out& out, const nlohmann::json& value) {
  using value_t = nlohmann::json::value_t;
  switch (value.type()) {
    case value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = value.begin(); it != value.end(); ++it) {
        if (!first) out += ',';
        first = false;
        append_json_string(out, it.key());
        out += ':';
        append_json(out, it.value());
      }
      out += '}';
      return;
    }
    case value_t::array: {
      out += '[';
      bool first = true;
      for (const nlohmann::json& element : value) {
        if (!first) out += ',';
        first = false;
        append_json(out, element);
      }
      out += ']';
      return;
    }
    case value_t::string: {
      const auto& text = value.get_ref<const std::string&>();
      if (needs_no_escapes(text)) {
        out += '"';
        out += text;
        out += '"';
      } else if (!append_escaped_utf8(out, text)) {
        append_json_general(out, value);
      }
      return;
    }
    case value_t::boolean:
      out += value.get<bool>() ? std::string_view("true") : std::string_view("false");
      return;
    case value_t::null:
      out += std::string_view("null");
      return;
    case value_t::number_integer:
      append_integer(out, value.get<std::int64_t>());
      return;
    case value_t::number_unsigned:
      append_decimal(out, value.get<std::uint64_t>());
      return;
    default:
      append_json_general(out, value);
      return;
  }
}

}  // namespace notifications::detail
