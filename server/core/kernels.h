// The arithmetic of averaging, on payloads as they arrived from the wire.
//
// A payload is Pieces (common/wire_format.h): the byte ranges of a received
// message, in order, whose concatenation is the values in a WireFormat. A
// value may straddle two pieces; the kernels handle that, so callers never
// copy a payload to make it contiguous. Sums are float32 whatever the
// format.
#ifndef WEIGHTD_SERVER_CORE_KERNELS_H_
#define WEIGHTD_SERVER_CORE_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "common/wire_format.h"

namespace weightd::core {

using ::weightd::Pieces;
using ::weightd::PiecesSize;

// True if none of the `count` float32 values at `bytes` is NaN or Inf.
bool AllFinite(const char* bytes, std::size_t count);
// The same over the values of `pieces`, in format `f`.
bool AllFinite(Pieces pieces, WireFormat f);

// acc[i] += weight * x[i] for the values x of `pieces`, in format `f`.
void AccumulateScaled(Pieces pieces, WireFormat f, float weight, float* acc);
// acc[i] = weight * x[i]: the first contribution, so the accumulator needs no
// zeroing pass.
void StoreScaled(Pieces pieces, WireFormat f, float weight, float* acc);

// The mean of a chunk of a round: acc[i] /= weight_sum.
void MeanInPlace(float* acc, std::size_t count, double weight_sum);

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_KERNELS_H_
