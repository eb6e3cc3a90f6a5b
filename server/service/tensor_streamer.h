// TensorStreamer: the messages of a Pull or PushPull response (the same on
// the wire): one header listing the tensors, then their chunks, framed by
// common/tensor_stream.h.
#ifndef WEIGHTD_SERVER_SERVICE_TENSOR_STREAMER_H_
#define WEIGHTD_SERVER_SERVICE_TENSOR_STREAMER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/tensor_stream.h"
#include "common/wire_format.h"
#include "server/core/tensor_store.h"

namespace weightd::service {

// Each chunk refers to the immutable published value, never a copy of it
// (or, for 16-bit formats, to its encoding, made once per version), and
// holds it until gRPC has sent it; small chunks batched (copied into the
// batch's buffer) if the caller accepts batches. Not thread-safe: one
// reactor drives it.
class TensorStreamer {
 public:
  // `names[i]` is the name of `published[i]`, taken in `format` (16-bit
  // formats: `encoded` set); `chunk_bytes` is the store's.
  TensorStreamer(const std::vector<std::string>& names,
                 const std::vector<core::PublishedTensor>& published,
                 std::uint64_t chunk_bytes, WireFormat format, bool batches);
  TensorStreamer(const TensorStreamer&) = delete;
  TensorStreamer& operator=(const TensorStreamer&) = delete;

  // True once Next() returned the last message.
  bool finished() { return header_sent_ && chunks_.finished(); }

  // Sets `*msg` to the next message and returns its payload bytes (0 for
  // the header), or returns nullopt when everything was sent.
  std::optional<std::uint64_t> Next(grpc::ByteBuffer* msg);

 private:
  grpc::ByteBuffer header_;
  bool header_sent_ = false;
  TensorStreamWriter chunks_;
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_TENSOR_STREAMER_H_
