// Private: a payload kept as the JSON text it arrived in, built into its value on the first read.
//
// The text was validated before (the remote envelope decoder does that), so building cannot fail
// but for memory. The builder is the decoder's own, so the value is exactly the one the decoder
// would have built at once.
//
// Thread-safety: immutable but for the value, which value() builds once; any number of threads
// may call value() and text() at once (the first builds, the others wait for it).
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace notifications::detail {

class DeferredPayload {
 public:
  using Builder = nlohmann::json (*)(std::string_view text);

  // The payload is `size` bytes of `storage` from `offset` (checked: std::out_of_range).
  DeferredPayload(std::string storage, std::size_t offset, std::size_t size, Builder build)
      : storage_(std::move(storage)), offset_(offset), size_(size), build_(build) {
    if (offset_ > storage_.size() || size_ > storage_.size() - offset_) {
      throw std::out_of_range("deferred payload: the range is outside its text");
    }
  }
  DeferredPayload(const DeferredPayload&) = delete;
  DeferredPayload& operator=(const DeferredPayload&) = delete;

  std::string_view text() const noexcept { return std::string_view(storage_).substr(offset_, size_); }
  // Whether a read built the value.
  bool built() const noexcept { return built_.load(std::memory_order_acquire); }

  // Built on the first call; a failed build (std::bad_alloc) is tried again by the next call.
  // Not std::call_once: libstdc++ 12 builds it on pthread_once, which it documents as not
  // resetting the flag when the callable throws (<mutex>, GCC PR 66146); here a failed build must
  // leave the next read free to try again, on every platform.
  const nlohmann::json& value() const {
    if (!built_.load(std::memory_order_acquire)) build();
    return value_;
  }

 private:
  std::string storage_;
  std::size_t offset_;
  std::size_t size_;
  Builder build_;
  mutable std::mutex building_;
  mutable std::atomic<bool> built_{false};
  mutable nlohmann::json value_;  // written once, under building_, before built_ is set

  void build() const {
    std::lock_guard<std::mutex> lock(building_);
    if (built_.load(std::memory_order_relaxed)) return;
    value_ = build_(text());
    built_.store(true, std::memory_order_release);
  }
};

}  // namespace notifications::detail
