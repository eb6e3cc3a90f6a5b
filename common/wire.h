// The sizes of the wire both sides obey: chunk sizes a server may choose,
// the batching thresholds, the length of each chunk. No gRPC: the core
// checks chunks against these too.
//
// Where the wire encoding lives: common/wire_format.h (values, element by
// element), this file (sizes), common/chunk_codec.h (the bytes of one
// chunk or batch message), common/tensor_stream.h (the framing of a whole
// call; the module the client and the service call).
#ifndef WEIGHTD_COMMON_WIRE_H_
#define WEIGHTD_COMMON_WIRE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/base/config.h"

namespace weightd {

#ifndef ABSL_IS_LITTLE_ENDIAN
#error "weightd's wire format is little-endian float32; port the codec first"
#endif

inline constexpr std::size_t kFloatBytes = sizeof(float);
static_assert(kFloatBytes == 4, "float must be IEEE-754 binary32");

inline constexpr std::uint64_t kDefaultChunkBytes = 1 << 20;
// Chunk sizes a server accepts: multiples of 4 in [kMinChunkBytes,
// kMaxChunkBytes].
inline constexpr std::uint64_t kMinChunkBytes = 4 << 10;
inline constexpr std::uint64_t kMaxChunkBytes = 16 << 20;

// Chunks covering fewer float32 bytes than this travel packed into
// ChunkBatch messages, where the peer accepts them; a batch carries at most
// chunk_bytes of payload and kMaxBatchChunks chunks.
inline constexpr std::uint64_t kBatchChunksBelow = 64 << 10;
inline constexpr std::size_t kMaxBatchChunks = 4096;

// How often weightd's clients ping a connection during a long wait
// (keepalive), in milliseconds: the server must accept pings this close
// together (its --min_client_ping_interval is at most this).
inline constexpr int kClientPingIntervalMs = 20000;

// Number of bytes chunk `offset` of a tensor of `tensor_bytes` must carry.
inline std::uint64_t ChunkLength(std::uint64_t tensor_bytes,
                                 std::uint64_t chunk_bytes,
                                 std::uint64_t offset) {
  return offset >= tensor_bytes ? 0
                                : std::min(chunk_bytes, tensor_bytes - offset);
}

}  // namespace weightd

#endif  // WEIGHTD_COMMON_WIRE_H_
