#include "server/core/kernels.h"

#include <cstring>

namespace weightd::core {
namespace {

// 16-bit payloads are decoded in blocks of this many values (stay in L1).
constexpr std::size_t kBlock = 1024;

inline bool IsFiniteBits(std::uint32_t bits) {
  // NaN or Inf exactly when the exponent bits are all ones.
  return (bits & 0x7f800000u) != 0x7f800000u;
}

// Calls fn(out, x, n) with x the float32 values of each run of `pieces`
// (decoded into a small buffer for 16-bit formats), out = acc + first.
template <typename Fn>
void ForEachValueRun(Pieces pieces, WireFormat f, float* acc, Fn fn) {
  if (f == WireFormat::kFloat32) {
    ForEachRun<4>(pieces,
                  [acc, fn](const char* p, std::size_t n, std::size_t first) {
                    fn(acc + first, p, n);
                  });
    return;
  }
  ForEachRun<2>(
      pieces, [acc, fn, f](const char* p, std::size_t n, std::size_t first) {
        float block[kBlock];
        for (std::size_t done = 0; done < n; done += kBlock) {
          const std::size_t m = std::min(kBlock, n - done);
          const absl::string_view piece(p + 2 * done, 2 * m);
          DecodePieces(Pieces(&piece, 1), f, block);
          fn(acc + first + done, reinterpret_cast<const char*>(block), m);
        }
      });
}

WEIGHTD_VECTOR_CLONES
void AccumulateRun(float* out, const char* p, std::size_t n, float weight) {
  for (std::size_t i = 0; i < n; ++i) {
    float x;
    std::memcpy(&x, p + i * 4, 4);
    out[i] += weight * x;
  }
}

WEIGHTD_VECTOR_CLONES
void StoreRun(float* out, const char* p, std::size_t n, float weight) {
  for (std::size_t i = 0; i < n; ++i) {
    float x;
    std::memcpy(&x, p + i * 4, 4);
    out[i] = weight * x;
  }
}

WEIGHTD_VECTOR_CLONES
bool AllFinite16(const char* p, std::size_t n, std::uint16_t exp) {
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    bad |= static_cast<std::uint32_t>((h & exp) == exp);
  }
  return bad == 0;
}

}  // namespace

WEIGHTD_VECTOR_CLONES
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

bool AllFinite(Pieces pieces, WireFormat f) {
  bool ok = true;
  if (f == WireFormat::kFloat32) {
    ForEachRun<4>(pieces, [&ok](const char* p, std::size_t n, std::size_t) {
      ok = ok && AllFinite(p, n);
    });
    return ok;
  }
  const std::uint16_t exp = f == WireFormat::kBfloat16 ? 0x7f80 : 0x7c00;
  ForEachRun<2>(pieces, [&ok, exp](const char* p, std::size_t n, std::size_t) {
    ok = ok && AllFinite16(p, n, exp);
  });
  return ok;
}

void AccumulateScaled(Pieces pieces, WireFormat f, float weight, float* acc) {
  ForEachValueRun(pieces, f, acc,
                  [weight](float* out, const char* p, std::size_t n) {
                    AccumulateRun(out, p, n, weight);
                  });
}

void StoreScaled(Pieces pieces, WireFormat f, float weight, float* acc) {
  ForEachValueRun(pieces, f, acc,
                  [weight](float* out, const char* p, std::size_t n) {
                    StoreRun(out, p, n, weight);
                  });
}

WEIGHTD_VECTOR_CLONES
void MeanInPlace(float* acc, std::size_t count, double weight_sum) {
  for (std::size_t i = 0; i < count; ++i) {
    acc[i] = static_cast<float>(acc[i] / weight_sum);
  }
}

}  // namespace weightd::core
