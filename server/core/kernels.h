// The arithmetic of averaging, on raw little-endian float32 payloads.
#ifndef WEIGHTD_SERVER_CORE_KERNELS_H_
#define WEIGHTD_SERVER_CORE_KERNELS_H_

#include <cstddef>

namespace weightd::core {

// True if none of the `count` float32 values at `bytes` is NaN or Inf.
bool AllFinite(const char* bytes, std::size_t count);

// acc[i] += weight * x[i] for the `count` float32 values x at `bytes`.
void AccumulateScaled(const char* bytes, std::size_t count, float weight,
                      float* acc);

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_KERNELS_H_
