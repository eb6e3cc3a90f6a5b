// Chunk messages over grpc::ByteBuffer, without copying their payload.
//
// Every streamed message of the Weightd service has the shape
//   oneof kind { Header header = 1; TensorChunk chunk = 2; }
// (JoinRequest names its field 2 initial_value). Protobuf's generated code
// copies a chunk's bytes into a std::string on each side of the wire; this
// codec writes and reads field 2 directly:
//  - EncodeChunk() builds the message from a few header bytes and a slice
//    that points at the caller's payload (kept alive through `keep`);
//  - ChunkReader::Parse() finds the payload in the slices the message
//    arrived in and hands them out as views.
// Both speak exactly the proto wire format: a peer using generated code on
// the other side sees ordinary messages. Any message Parse() does not
// recognise (a header, or a chunk encoded unusually, e.g. with unknown
// fields) is left to protobuf by the caller.
#ifndef WEIGHTD_COMMON_CHUNK_CODEC_H_
#define WEIGHTD_COMMON_CHUNK_CODEC_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/strings/string_view.h"

namespace weightd {

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

// Parses chunk messages; holds the last message's slices so that the views
// it returned stay valid until the next Parse() or the reader's end.
class ChunkReader {
 public:
  // True, filling `view`, if `message` is field 2 alone holding a
  // TensorChunk whose fields each appear at most once. False for anything
  // else (parse it with protobuf then). Never reads past the message.
  bool Parse(const grpc::ByteBuffer& message, ChunkView* view);

 private:
  std::vector<grpc::Slice> slices_;
};

}  // namespace weightd

#endif  // WEIGHTD_COMMON_CHUNK_CODEC_H_
