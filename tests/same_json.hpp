// Test helper: strict JSON equality, shared by test_envelope and the envelope fuzz target.
// Thread-safety: a pure function.
#pragma once

#include <cstddef>

#include <nlohmann/json.hpp>

namespace test_support {

// Equal values of the same types throughout (json's == holds 1 == 1.0 and 1u == 1).
inline bool same_json(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.type() != b.type()) return false;
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
      if (ia.key() != ib.key() || !same_json(*ia, *ib)) return false;
    }
    return true;
  }
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!same_json(a[i], b[i])) return false;
    }
    return true;
  }
  return a == b;
}

}  // namespace test_support
