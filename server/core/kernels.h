// The arithmetic of averaging, on raw little-endian float32 payloads.
//
// A payload arrives as Pieces: the byte ranges of a received message, in
// order, whose concatenation is the float32 values. A value may straddle two
// pieces; the kernels handle that, so callers never copy a payload to make it
// contiguous.
#ifndef WEIGHTD_SERVER_CORE_KERNELS_H_
#define WEIGHTD_SERVER_CORE_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace weightd::core {

using Pieces = absl::Span<const absl::string_view>;

// Total bytes of `pieces`.
std::uint64_t PiecesSize(Pieces pieces);

// True if none of the `count` float32 values at `bytes` is NaN or Inf.
bool AllFinite(const char* bytes, std::size_t count);
// The same over the values of `pieces` (whose size is a multiple of 4).
bool AllFinite(Pieces pieces);

// acc[i] += weight * x[i] for the values x of `pieces`.
void AccumulateScaled(Pieces pieces, float weight, float* acc);
// acc[i] = weight * x[i]: the first contribution, so the accumulator needs no
// zeroing pass.
void StoreScaled(Pieces pieces, float weight, float* acc);
// Copies the bytes of `pieces` to `out`.
void CopyPieces(Pieces pieces, char* out);

// The close of a round over `count` values: out[i] = acc[i] / weight_sum
// (weights), or old[i] + lr * acc[i] / weight_sum (deltas), in place in
// `acc`. Returns whether every result is finite.
bool FinishMean(float* acc, const float* old, std::size_t count,
                double weight_sum, bool delta, float lr);

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_KERNELS_H_
