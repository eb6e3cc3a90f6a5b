// The framing of a tensor stream: how the payload of a Join, Push, Pull or
// PushPull call is cut into chunks, which chunks share a message, and how
// the messages are read back. The one module both sides call: the client
// (client/stream_io.h) and the service (server/service/tensor_streamer.h,
// server/service/weightd_service.cc) hold no framing rule of their own.
//
// Where the wire encoding lives, from the bottom up:
//   common/wire_format.h    how values are encoded (float32, bfloat16,
//                           float16), element by element;
//   common/wire.h           the sizes both sides obey (chunk sizes, batch
//                           limits, ChunkLength);
//   common/chunk_codec.h    the bytes of one chunk or batch message (the
//                           proto wire format, without a payload copy);
//   common/tensor_stream.h  this file: the framing of a whole call.
//
// The rules, as docs/protocol.md states them: a tensor of n float32 bytes
// travels as chunks at offsets 0, chunk_bytes, 2 chunk_bytes, ... (offsets
// and lengths in float32 bytes whatever the format; a chunk's data holds
// the same values in the call's format). Chunks covering fewer than
// kBatchChunksBelow bytes are packed, in order, into ChunkBatch messages
// where the peer accepts batches: a batch carries at most chunk_bytes of
// payload and kMaxBatchChunks chunks. Every other chunk travels alone.
//
// Depends on gRPC (grpc::ByteBuffer) and the generated proto: the core
// never includes it.
#ifndef WEIGHTD_COMMON_TENSOR_STREAM_H_
#define WEIGHTD_COMMON_TENSOR_STREAM_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/chunk_codec.h"
#include "common/wire.h"
#include "common/wire_format.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd {

// The call's format as the proto names it, and back. FromProto:
// INVALID_ARGUMENT for a value this build does not know.
v1::WireFormat WireFormatToProto(WireFormat format);
absl::StatusOr<WireFormat> WireFormatFromProto(v1::WireFormat format);

// One chunk of a call: a range of one tensor.
struct PlannedChunk {
  std::uint32_t tensor_index = 0;
  std::uint64_t offset = 0;  // Float32 bytes into the tensor.
  std::uint64_t covers = 0;  // Float32 bytes of the tensor it carries.
  std::uint64_t size = 0;    // Its payload bytes, in the call's format.
};

// Cuts a call's tensors into chunks and groups them into messages, by the
// rules above. A value type; not thread-safe.
class ChunkPlan {
 public:
  // `tensor_bytes`: each tensor's size in float32 bytes (a multiple of 4);
  // `chunk_bytes`: the server's chunk size (a multiple of 4, at least
  // kMinChunkBytes: the peers check it before they plan); `batches`:
  // whether the receiver accepts ChunkBatch messages.
  ChunkPlan(std::vector<std::uint64_t> tensor_bytes, std::uint64_t chunk_bytes,
            WireFormat format, bool batches);

  // Fills `chunks` (cleared first) with the next message's chunks and
  // returns true; `*batch` says whether they travel as one ChunkBatch
  // (possibly of one chunk) or as a lone chunk. False once every chunk was
  // planned (tensors of no bytes have no chunk).
  bool Next(std::vector<PlannedChunk>* chunks, bool* batch);
  // True once Next() has nothing left to return.
  bool done();

 private:
  // The chunk at (tensor_, offset_), past tensors with nothing left.
  std::optional<PlannedChunk> Peek();

  std::vector<std::uint64_t> tensor_bytes_;
  std::uint64_t chunk_bytes_;
  WireFormat format_;
  bool batches_;
  std::size_t tensor_ = 0;
  std::uint64_t offset_ = 0;
};

// A tensor's values as a call sends them.
struct OutgoingTensor {
  // The caller's float32 values, encoded into each message (copied): the
  // buffer is the caller's again once the message is built.
  static OutgoingTensor Copied(absl::Span<const float> values);
  // Values already in the call's format (`elements` of them at `encoded`),
  // referenced without a copy by chunks that travel alone; `keep` owns them
  // and is held by those messages until gRPC has sent them. The bytes must
  // not change while anything holds `keep`.
  static OutgoingTensor Shared(const char* encoded, std::uint64_t elements,
                               std::shared_ptr<const void> keep);

  std::uint64_t elements = 0;
  const float* values = nullptr;  // Copied().
  const char* encoded = nullptr;  // Shared().
  std::shared_ptr<const void> keep;
};

// Builds the chunk messages of a call (after its header, which the caller
// writes) by ChunkPlan's rules, ready to write as grpc::ByteBuffers: lone
// chunks through EncodeChunk(), batches through BatchWriter. The messages
// are wire-identical to the generated TensorChunk / ChunkBatch fields 2 and
// 3 of PushRequest, PullResponse and their PushPull twins. Not thread-safe;
// the tensors' storage must outlive the writer.
class TensorStreamWriter {
 public:
  TensorStreamWriter(std::vector<OutgoingTensor> tensors,
                     std::uint64_t chunk_bytes, WireFormat format,
                     bool batches);

  // Sets `*message` to the next message and returns its payload bytes, or
  // returns nullopt (leaving `*message` alone) once every chunk was built.
  std::optional<std::uint64_t> Next(grpc::ByteBuffer* message);
  // The chunks the next message will carry (empty once every chunk was
  // built), for a caller that sends each message only once its values are
  // final (a round's result streamed while the round is open).
  const std::vector<PlannedChunk>& Peek();
  // True once Next() has nothing left to return.
  bool finished() { return !peeked_ && plan_.done(); }

 private:
  const std::vector<OutgoingTensor> tensors_;
  const WireFormat format_;
  ChunkPlan plan_;
  std::vector<PlannedChunk> chunks_;  // Reused between messages.
  bool batch_ = false;                // Whether chunks_ travel as a batch.
  bool peeked_ = false;               // chunks_ is planned, not built.
};

// INVALID_ARGUMENT unless a batch of `chunks` chunks carrying `payload`
// bytes is within the limits of common/wire.h for a server of
// `chunk_bytes`. (A lone chunk, chunks == 1, always is: its own length
// check says more.) ChunkPlan never makes a batch this refuses.
absl::Status CheckBatch(std::size_t chunks, std::uint64_t payload,
                        std::uint64_t chunk_bytes);

// Reads the messages of a tensor stream: those holding chunks through the
// codec (ChunkReader, no payload copy) where they are in its form, the rest
// through protobuf, so that a peer encoding them otherwise is read alike.
// Not thread-safe; reuse one per call (its buffers are recycled).
class TensorStreamReader {
 public:
  enum class Kind {
    kChunks,   // chunks() holds the message's chunks (a lone one: one).
    kMessage,  // `message` holds it; it carries no chunk (a header, or
               // nothing at all: the caller says which is wrong).
    kInvalid,  // The bytes are not a valid `Message`.
  };

  // Reads one message of a stream of `Message`s: v1::PushRequest,
  // v1::PullResponse (which PushPullRequest / PushPullResponse equal on the
  // wire) or v1::JoinRequest (whose field 2 is a chunk; it has no batch, so
  // a field 3 there is an unknown field, as protobuf reads it). Consumes
  // `bytes`. After kChunks, chunks() views `bytes`' slices or `message`:
  // valid until the next Read() or until `message` changes.
  template <typename Message>
  Kind Read(grpc::ByteBuffer* bytes, Message* message);

  // The chunks of the last Read() that returned kChunks.
  absl::Span<const ChunkView> chunks() const { return chunks_; }

 private:
  // Appends a view of `chunk`, which protobuf parsed, to fallback_.
  void ViewChunk(const v1::TensorChunk& chunk);

  ChunkReader codec_;
  std::vector<ChunkView> fallback_;  // Reused: no allocation per chunk.
  std::size_t fallback_count_ = 0;
  absl::Span<const ChunkView> chunks_;  // Into codec_ or fallback_.
};

// Appends the bytes of `pieces` to `out` (as received, no conversion).
void CopyPieces(Pieces pieces, char* out);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_TENSOR_STREAM_H_
