// Payload formats on the wire: float32 (exact), or bfloat16 / float16 (half
// the bytes). The server averages in float32 whatever the wire carries.
// (The layers above: common/wire.h for sizes, common/chunk_codec.h for
// message bytes, common/tensor_stream.h for a call's framing.)
//
// Chunking is that of the float32 tensor whatever the format: a chunk's
// offset and its place in the tensor are in float32 bytes, its data holds
// the same values in the call's format (half as many bytes for 16-bit
// formats). Conversions to 16 bits round to nearest even; values beyond a
// format's range become Inf (and are then refused as non-finite), NaN stays
// NaN.
#ifndef WEIGHTD_COMMON_WIRE_FORMAT_H_
#define WEIGHTD_COMMON_WIRE_FORMAT_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

// Marks a loop kernel to be compiled twice, for AVX2 and for the baseline
// ISA, the right one picked at load time: the baseline x86-64 build only
// vectorises with SSE2. Results are bit-identical (no FMA, no reordering).
// Not under ThreadSanitizer: the clones' ifunc resolvers run before its
// runtime is up, and every binary crashed at start.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define WEIGHTD_THREAD_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define WEIGHTD_THREAD_SANITIZER 1
#endif
#if defined(__x86_64__) && !defined(WEIGHTD_THREAD_SANITIZER) && \
    (defined(__clang__) ? __clang_major__ >= 14 : 1)
#define WEIGHTD_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WEIGHTD_VECTOR_CLONES
#endif

namespace weightd {

enum class WireFormat { kFloat32, kBfloat16, kFloat16 };

inline std::size_t ElementBytes(WireFormat f) {
  return f == WireFormat::kFloat32 ? 4 : 2;
}

const char* WireFormatName(WireFormat f);
// "float32" (or "fp32"), "bfloat16" ("bf16"), "float16" ("fp16"); false
// for anything else.
bool ParseWireFormat(absl::string_view text, WireFormat* f);

// float32 <-> 16-bit conversions of single values (inline: the kernels
// call them per value).
inline std::uint32_t FloatBits(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

inline float FloatFromBits(std::uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// Written branch-free (every case computed, then selected) so that loops
// over them vectorise.
inline std::uint16_t FloatToBfloat16(float v) {
  const std::uint32_t u = FloatBits(v);
  // Round to nearest even on the 16 bits dropped; NaN stays (quiet) NaN.
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t nan = (u >> 16) | 0x40u;
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return static_cast<std::uint16_t>(is_nan ? nan : rounded);
}

inline float Bfloat16ToFloat(std::uint16_t h) {
  return FloatFromBits(static_cast<std::uint32_t>(h) << 16);
}

inline std::uint16_t FloatToFloat16(float v) {
  // After F. Giesen's float_to_half_fast3_rtne (public domain).
  const std::uint32_t u = FloatBits(v);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  // Overflow to Inf (0x7c00), or NaN (0x7e00).
  const std::uint32_t inf_nan =
      0x7c00u | static_cast<std::uint32_t>(a > 0x7f800000u) << 9;
  // Subnormal or zero: the FPU rounds.
  const std::uint32_t denorm_magic = ((127 - 15) + (23 - 10) + 1) << 23;
  const std::uint32_t subnormal =
      FloatBits(FloatFromBits(a) + FloatFromBits(denorm_magic)) - denorm_magic;
  // Normal: rebias the exponent and round the mantissa to nearest even.
  const std::uint32_t normal =
      (a + (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffu +
       ((a >> 13) & 1u)) >>
      13;
  // Selected with masks, not branches: with -ftrapping-math the compiler
  // would not compute the float add speculatively, and the loop would not
  // vectorise.
  const std::uint32_t big = 0u - static_cast<std::uint32_t>(a >= 0x47800000u);
  const std::uint32_t small =
      (0u - static_cast<std::uint32_t>(a < 0x38800000u)) & ~big;
  const std::uint32_t h =
      (inf_nan & big) | (subnormal & small) | (normal & ~(big | small));
  return static_cast<std::uint16_t>(h | sign);
}

inline float Float16ToFloat(std::uint16_t h) {
  // After F. Giesen's half_to_float (public domain).
  const std::uint32_t shifted_exp = 0x7c00u << 13;
  const std::uint32_t bits = (static_cast<std::uint32_t>(h) & 0x7fffu) << 13;
  const std::uint32_t exp = shifted_exp & bits;
  const std::uint32_t o = bits + (static_cast<std::uint32_t>(127 - 15) << 23);
  const std::uint32_t inf_nan =
      o + (static_cast<std::uint32_t>(128 - 16) << 23);
  // Zero or subnormal: renormalise.
  const std::uint32_t subnormal =
      FloatBits(FloatFromBits(o + (1u << 23)) - FloatFromBits(113u << 23));
  // Masks, not branches, as in FloatToFloat16.
  const std::uint32_t special =
      0u - static_cast<std::uint32_t>(exp == shifted_exp);
  const std::uint32_t tiny = 0u - static_cast<std::uint32_t>(exp == 0);
  const std::uint32_t magnitude =
      (inf_nan & special) | (subnormal & tiny) | (o & ~(special | tiny));
  return FloatFromBits(magnitude | (static_cast<std::uint32_t>(h) & 0x8000u)
                                       << 16);
}

// Writes the `count` values of `in` to `out` in format `f`
// (count * ElementBytes(f) bytes).
void EncodeValues(const float* in, std::size_t count, WireFormat f, char* out);

// A payload as it arrived: byte ranges, in order, whose concatenation is the
// values (the slices of a received message; a value may straddle two).
using Pieces = absl::Span<const absl::string_view>;

// Total bytes of `pieces`.
std::uint64_t PiecesSize(Pieces pieces);

// Calls fn(bytes, count, first) for runs of whole `element_bytes`-sized
// values of `pieces`, where `first` is the index of the run's first value.
// A value split between pieces is gathered into a run of its own.
template <std::size_t kElementBytes, typename Fn>
void ForEachRun(Pieces pieces, Fn fn) {
  std::size_t index = 0;
  char split[kElementBytes];
  std::size_t split_have = 0;
  for (absl::string_view piece : pieces) {
    const char* p = piece.data();
    std::size_t left = piece.size();
    if (split_have > 0) {
      const std::size_t take = std::min(left, kElementBytes - split_have);
      std::memcpy(split + split_have, p, take);
      split_have += take;
      p += take;
      left -= take;
      if (split_have < kElementBytes) continue;
      fn(static_cast<const char*>(split), std::size_t{1}, index++);
      split_have = 0;
    }
    const std::size_t whole = left / kElementBytes;
    if (whole > 0) fn(p, whole, index);
    index += whole;
    split_have = left % kElementBytes;
    std::memcpy(split, p + whole * kElementBytes, split_have);
  }
}

// Writes the values of `pieces` (in format `f`) to `out` as float32.
void DecodePieces(Pieces pieces, WireFormat f, float* out);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_WIRE_FORMAT_H_
