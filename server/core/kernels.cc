#include "server/core/kernels.h"

#include <algorithm>
#include <cstring>

namespace weightd::core {
namespace {

inline bool IsFiniteBits(std::uint32_t bits) {
  // NaN or Inf exactly when the exponent bits are all ones.
  return (bits & 0x7f800000u) != 0x7f800000u;
}

// Calls fn(bytes, count, first) for runs of whole float32 values of
// `pieces`, where `first` is the index of the run's first value. A value
// split between pieces is gathered into a 4-byte run of its own.
template <typename Fn>
void ForEachRun(Pieces pieces, Fn fn) {
  std::size_t index = 0;
  char split[4];
  std::size_t split_have = 0;
  for (absl::string_view piece : pieces) {
    const char* p = piece.data();
    std::size_t left = piece.size();
    if (split_have > 0) {
      const std::size_t take = std::min(left, 4 - split_have);
      std::memcpy(split + split_have, p, take);
      split_have += take;
      p += take;
      left -= take;
      if (split_have < 4) continue;
      fn(split, 1, index++);
      split_have = 0;
    }
    const std::size_t whole = left / 4;
    if (whole > 0) fn(p, whole, index);
    index += whole;
    split_have = left % 4;
    std::memcpy(split, p + whole * 4, split_have);
  }
}

}  // namespace

std::uint64_t PiecesSize(Pieces pieces) {
  std::uint64_t n = 0;
  for (absl::string_view p : pieces) n += p.size();
  return n;
}

bool AllFinite(const char* bytes, std::size_t count) {
  // OR-ing a flag keeps the loop branch-free so it vectorises.
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, bytes + i * 4, 4);
    bad |= static_cast<std::uint32_t>(!IsFiniteBits(bits));
  }
  return bad == 0;
}

bool AllFinite(Pieces pieces) {
  bool ok = true;
  ForEachRun(pieces, [&ok](const char* p, std::size_t n, std::size_t) {
    ok = ok && AllFinite(p, n);
  });
  return ok;
}

void AccumulateScaled(Pieces pieces, float weight, float* acc) {
  ForEachRun(pieces, [weight, acc](const char* p, std::size_t n,
                                   std::size_t first) {
    float* out = acc + first;
    for (std::size_t i = 0; i < n; ++i) {
      float x;
      std::memcpy(&x, p + i * 4, 4);
      out[i] += weight * x;
    }
  });
}

void StoreScaled(Pieces pieces, float weight, float* acc) {
  ForEachRun(pieces, [weight, acc](const char* p, std::size_t n,
                                   std::size_t first) {
    float* out = acc + first;
    for (std::size_t i = 0; i < n; ++i) {
      float x;
      std::memcpy(&x, p + i * 4, 4);
      out[i] = weight * x;
    }
  });
}

void CopyPieces(Pieces pieces, char* out) {
  for (absl::string_view p : pieces) {
    std::memcpy(out, p.data(), p.size());
    out += p.size();
  }
}

bool FinishMean(float* acc, const float* old, std::size_t count,
                double weight_sum, bool delta, float lr) {
  // One pass: the mean and its finiteness check together. Two loops so
  // neither tests `delta` per value.
  std::uint32_t bad = 0;
  auto finish = [&](auto value_of) {
    for (std::size_t i = 0; i < count; ++i) {
      const float v = value_of(i, static_cast<float>(acc[i] / weight_sum));
      acc[i] = v;
      std::uint32_t bits;
      std::memcpy(&bits, &v, 4);
      bad |= static_cast<std::uint32_t>(!IsFiniteBits(bits));
    }
  };
  if (delta) {
    finish([old, lr](std::size_t i, float mean) { return old[i] + lr * mean; });
  } else {
    finish([](std::size_t, float mean) { return mean; });
  }
  return bad == 0;
}

}  // namespace weightd::core
