#include "server/core/kernels.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace weightd::core {

bool AllFinite(const char* bytes, std::size_t count) {
  // A float is NaN or Inf exactly when its exponent bits are all ones; OR-ing
  // a flag keeps the loop branch-free so it vectorises.
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, bytes + i * 4, 4);
    bad |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

void AccumulateScaled(const char* bytes, std::size_t count, float weight,
                      float* acc) {
  for (std::size_t i = 0; i < count; ++i) {
    float x;
    std::memcpy(&x, bytes + i * 4, 4);
    acc[i] += weight * x;
  }
}

}  // namespace weightd::core
