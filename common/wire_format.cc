#include "common/wire_format.h"

namespace weightd {
namespace {

WEIGHTD_VECTOR_CLONES
void DecodeBfloat16(const char* p, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    out[i] = Bfloat16ToFloat(h);
  }
}

WEIGHTD_VECTOR_CLONES
void DecodeFloat16(const char* p, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    out[i] = Float16ToFloat(h);
  }
}

WEIGHTD_VECTOR_CLONES
void EncodeBfloat16(const float* in, std::size_t n, char* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t h = FloatToBfloat16(in[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

WEIGHTD_VECTOR_CLONES
void EncodeFloat16(const float* in, std::size_t n, char* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t h = FloatToFloat16(in[i]);
    std::memcpy(out + 2 * i, &h, 2);
  }
}

}  // namespace

const char* WireFormatName(WireFormat f) {
  switch (f) {
    case WireFormat::kFloat32:
      return "float32";
    case WireFormat::kBfloat16:
      return "bfloat16";
    case WireFormat::kFloat16:
      return "float16";
  }
  return "?";
}

bool ParseWireFormat(absl::string_view text, WireFormat* f) {
  if (text == "float32" || text == "fp32") {
    *f = WireFormat::kFloat32;
  } else if (text == "bfloat16" || text == "bf16") {
    *f = WireFormat::kBfloat16;
  } else if (text == "float16" || text == "fp16") {
    *f = WireFormat::kFloat16;
  } else {
    return false;
  }
  return true;
}

void EncodeValues(const float* in, std::size_t count, WireFormat f, char* out) {
  switch (f) {
    case WireFormat::kFloat32:
      std::memcpy(out, in, count * 4);
      return;
    case WireFormat::kBfloat16:
      return EncodeBfloat16(in, count, out);
    case WireFormat::kFloat16:
      return EncodeFloat16(in, count, out);
  }
}

std::uint64_t PiecesSize(Pieces pieces) {
  std::uint64_t n = 0;
  for (absl::string_view p : pieces) n += p.size();
  return n;
}

void DecodePieces(Pieces pieces, WireFormat f, float* out) {
  switch (f) {
    case WireFormat::kFloat32: {
      char* o = reinterpret_cast<char*>(out);
      for (absl::string_view p : pieces) {
        std::memcpy(o, p.data(), p.size());
        o += p.size();
      }
      return;
    }
    case WireFormat::kBfloat16:
      return ForEachRun<2>(
          pieces, [out](const char* p, std::size_t n, std::size_t first) {
            DecodeBfloat16(p, n, out + first);
          });
    case WireFormat::kFloat16:
      return ForEachRun<2>(
          pieces, [out](const char* p, std::size_t n, std::size_t first) {
            DecodeFloat16(p, n, out + first);
          });
  }
}

}  // namespace weightd
