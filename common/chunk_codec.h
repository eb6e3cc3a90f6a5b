// Chunk messages over grpc::ByteBuffer, without copying their payload.
//
// Where the wire encoding lives, from the bottom up:
//   common/wire_format.h    how values are encoded (float32, bfloat16,
//                           float16), element by element;
//   common/wire.h           the sizes both sides obey (chunk sizes, batch
//                           limits, ChunkLength);
//   common/chunk_codec.h    this file: the bytes of one chunk or batch
//                           message (the proto wire format, written and
//                           read without a payload copy);
//   common/tensor_stream.h  the framing of a whole call: which chunks, in
//                           which messages, and reading them back. Client
//                           and service call that, not this file.
//
// Every streamed message of the Weightd service has the shape
//   oneof kind { Header header = 1; TensorChunk chunk = 2; }
// (JoinRequest names its field 2 initial_value). Protobuf's generated code
// copies a chunk's bytes into a std::string on each side of the wire; this
// codec writes and reads fields 2 (a chunk) and 3 (a ChunkBatch) directly:
//  - EncodeChunk() builds the message from a few header bytes and a slice
//    that points at the caller's payload (kept alive through `keep`);
//  - BatchWriter packs small chunks into one buffer;
//  - ChunkReader::Parse() finds the payloads in the slices the message
//    arrived in and hands them out as views.
// Both speak exactly the proto wire format: a peer using generated code on
// the other side sees ordinary messages. Any message Parse() does not
// recognise (a header, or a chunk encoded unusually, e.g. with unknown
// fields) is left to protobuf by the caller.
#ifndef WEIGHTD_COMMON_CHUNK_CODEC_H_
#define WEIGHTD_COMMON_CHUNK_CODEC_H_

#include <google/protobuf/message_lite.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace weightd {

// A whole protobuf message as bytes, and back (headers and the other
// messages the codec leaves to protobuf). FromBytes consumes `bytes` and is
// false if they are not a valid `message`.
grpc::ByteBuffer ToBytes(const google::protobuf::MessageLite& message);
bool FromBytes(grpc::ByteBuffer* bytes, google::protobuf::MessageLite* message);

// A chunk message whose payload refers to `data` (not copied). gRPC holds a
// copy of `keep` until it has sent the bytes; `data` must stay unchanged
// until then.
grpc::ByteBuffer EncodeChunk(std::uint32_t tensor_index, std::uint64_t offset,
                             const char* data, std::size_t size,
                             std::shared_ptr<const void> keep);

struct ChunkView {
  std::uint32_t tensor_index = 0;
  std::uint64_t offset = 0;
  // The payload, in order, as views into the parsed message's slices.
  std::vector<absl::string_view> pieces;
  std::uint64_t size = 0;  // Sum of the pieces' sizes.
};

// Builds a ChunkBatch message (field 3) in one buffer: each chunk's payload
// is written once, straight into it, with no allocation per chunk.
class BatchWriter {
 public:
  // Appends a chunk of `size` payload bytes; returns where to write them
  // (valid until the next call).
  char* Add(std::uint32_t tensor_index, std::uint64_t offset, std::size_t size);
  std::size_t chunks() const { return chunks_; }
  std::uint64_t payload() const { return payload_; }
  // The message; the writer is empty again.
  grpc::ByteBuffer Finish();

 private:
  std::string body_;  // The repeated field's entries.
  std::size_t chunks_ = 0;
  std::uint64_t payload_ = 0;
};

// Parses chunk messages; holds the last message's slices so that the views
// it returned stay valid until the next Parse() or the reader's end.
class ChunkReader {
 public:
  // True if `message` is field 2 alone holding a TensorChunk (one view), or
  // field 3 alone holding a ChunkBatch (a view per chunk), whose
  // TensorChunks each have every field at most once; chunks() then holds
  // the views. False for anything else (parse it with protobuf then).
  // Never reads past the message.
  bool Parse(const grpc::ByteBuffer& message);

  // The chunks of the last successful Parse(), valid until the next one.
  absl::Span<const ChunkView> chunks() const {
    return absl::MakeConstSpan(views_.data(), count_);
  }
  // Whether the last successful Parse() read a ChunkBatch (field 3) rather
  // than a lone chunk (field 2).
  bool batched() const { return batched_; }

 private:
  ChunkView* NextView();

  std::vector<grpc::Slice> slices_;
  std::vector<ChunkView> views_;  // Reused: no allocation per chunk.
  std::size_t count_ = 0;
  bool batched_ = false;
};

}  // namespace weightd

#endif  // WEIGHTD_COMMON_CHUNK_CODEC_H_
