// A call's tensor stream on a synchronous gRPC client stream: writing a
// push (header, then chunks) or a Join's initial values, and reading a
// pull-shaped response into the caller's buffers. The framing (which
// chunks, in which messages, and reading them back) is
// common/tensor_stream.h's; this file adds what the client's side of a
// call does with it: when to half-close, what to count, and the checks
// that keep a bad server from writing outside the caller's buffers.
// Internal to the client library; templates over the stream types of
// grpcpp/support/sync_stream.h.
#ifndef WEIGHTD_CLIENT_STREAM_IO_H_
#define WEIGHTD_CLIENT_STREAM_IO_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "client/buffer_checks.h"
#include "client/types.h"
#include "common/chunk_codec.h"
#include "common/tensor_stream.h"
#include "common/wire.h"
#include "common/wire_format.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd {

// How far a push has copied each tensor out of the caller's buffers (its
// chunks go in offset order), for a PushPull that reads its result into
// the same buffers on another thread: a chunk of the result waits until
// the push has copied what it overwrites. Thread-safe.
class CopyProgress {
 public:
  explicit CopyProgress(std::size_t tensors) : copied_(tensors, 0) {}
  CopyProgress(const CopyProgress&) = delete;
  CopyProgress& operator=(const CopyProgress&) = delete;

  // The push has copied `chunks` (float32 byte ranges).
  void Copied(const std::vector<PlannedChunk>& chunks) {
    absl::MutexLock lock(&mu_);
    for (const PlannedChunk& c : chunks) {
      copied_[c.tensor_index] = c.offset + c.covers;
    }
  }
  // The push copies nothing more (it built every message, or it failed).
  void Done() {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  // Waits until bytes [0, end) of tensor `i` are copied, or Done().
  void AwaitCopied(std::uint32_t i, std::uint64_t end) {
    absl::MutexLock lock(&mu_);
    auto copied = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return done_ || copied_[i] >= end;
    };
    mu_.Await(absl::Condition(&copied));
  }

 private:
  absl::Mutex mu_;
  std::vector<std::uint64_t> copied_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// Reads a pull-shaped stream (header, then chunks) into the callers' spans,
// copying each chunk once, from the slices it arrived in. Checks everything
// the server sends: a bad server cannot make the client write outside the
// spans. Sets `versions` to the tensors' versions; adds the payload bytes
// to `bytes_read`. UNAVAILABLE if the stream ended early (Finish() then
// says why); DATA_LOSS if the server sent something malformed, after
// cancelling the call through `context` so that Finish() does not wait for
// the rest. May run while another thread writes to `stream` (a PushPull
// reads its result as it pushes): every error returned while the stream
// is still open cancels the call, so that writer's next Write() fails;
// with `progress` (that writer's), each chunk waits until the push has
// copied the part of the spans it overwrites. With `written`, sets
// (*written)[i] to the float32 bytes of tensor i's span it wrote, also
// when it fails: a prefix, as chunks are taken only in offset order.
template <typename Stream>
absl::Status ReadTensors(Stream& stream, grpc::ClientContext& context,
                         WireFormat format, absl::Span<const TensorRef> tensors,
                         std::vector<std::uint64_t>& versions,
                         std::uint64_t& bytes_read,
                         CopyProgress* progress = nullptr,
                         std::vector<std::uint64_t>* written = nullptr) {
  std::vector<std::uint64_t> own;
  std::vector<std::uint64_t>& next = written != nullptr ? *written : own;
  next.assign(tensors.size(), 0);
  auto malformed = [&context](absl::string_view what) {
    context.TryCancel();
    return absl::DataLossError(absl::StrCat("server sent ", what));
  };
  grpc::ByteBuffer bytes;
  v1::PullResponse msg;  // Wire-identical to PushPullResponse.
  if (!stream.Read(&bytes)) {
    return absl::UnavailableError("stream ended before the pull header");
  }
  if (!FromBytes(&bytes, &msg) || !msg.has_header() ||
      msg.header().tensors_size() != static_cast<int>(tensors.size())) {
    return malformed("a malformed pull header");
  }
  versions.resize(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const v1::TensorInfo& info = msg.header().tensors(static_cast<int>(i));
    if (info.name() != tensors[i].name ||
        ElementsOf({info.shape().begin(), info.shape().end()}) !=
            tensors[i].data.size()) {
      return malformed(absl::StrCat("tensor ", info.name(), " for ",
                                    tensors[i].name, " or a different size"));
    }
    versions[i] = info.version();
  }
  // Copies one chunk into its tensor; false if it is out of place.
  auto take = [&](const ChunkView& chunk) {
    const std::uint32_t i = chunk.tensor_index;
    // Offsets are float32 bytes in every format.
    const std::uint64_t covers =
        chunk.size / ElementBytes(format) * kFloatBytes;
    if (i >= tensors.size() || chunk.offset != next[i] ||
        chunk.size % ElementBytes(format) != 0 ||
        covers > tensors[i].data.size() * kFloatBytes - chunk.offset) {
      return false;
    }
    if (progress != nullptr) progress->AwaitCopied(i, chunk.offset + covers);
    DecodePieces(chunk.pieces, format,
                 tensors[i].data.data() + chunk.offset / kFloatBytes);
    next[i] += covers;
    bytes_read += chunk.size;
    return true;
  };
  TensorStreamReader reader;
  while (stream.Read(&bytes)) {
    if (reader.Read(&bytes, &msg) != TensorStreamReader::Kind::kChunks) {
      return malformed("a second pull header or an unreadable message");
    }
    for (const ChunkView& chunk : reader.chunks()) {
      if (!take(chunk)) return malformed("a chunk out of place");
    }
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (next[i] != tensors[i].data.size() * kFloatBytes) {
      return absl::DataLossError(absl::StrCat(
          "pull of ", tensors[i].name, " ended after ", next[i], " bytes"));
    }
  }
  return absl::OkStatus();
}

// Writes a push header and every tensor's chunks in `format` (small ones
// batched: the server accepts batches), then half-closes; adds the
// payload bytes to `bytes_written` if every write went out. Each chunk's
// payload is copied (or encoded, for 16-bit formats) into a buffer gRPC
// owns, so the caller's buffers are theirs again when this returns, even
// if a stalled connection still holds unsent bytes. On a failed write the
// server has ended the call: Finish() says why. With `progress`, reports
// each message's chunks there once they are copied (the caller says
// Done() when this returns).
template <typename Stream>
void WritePush(Stream& stream, const v1::PushHeader& header,
               absl::Span<const TensorRef> tensors, std::uint64_t chunk_bytes,
               WireFormat format, std::uint64_t& bytes_written,
               CopyProgress* progress = nullptr) {
  v1::PushRequest msg;  // Wire-identical to PushPullRequest.
  *msg.mutable_header() = header;
  // Each message is written once the next exists, so that the last one
  // carries the half-close. (No buffer_hint on the header: a synchronous
  // write with it does not complete until something flushes it.)
  bool ok = stream.Write(ToBytes(msg));
  std::vector<OutgoingTensor> outgoing;
  outgoing.reserve(tensors.size());
  for (const TensorRef& t : tensors) {
    outgoing.push_back(OutgoingTensor::Copied(t.data));
  }
  TensorStreamWriter writer(std::move(outgoing), chunk_bytes, format,
                            /*batches=*/true);
  std::optional<grpc::ByteBuffer> pending;
  grpc::ByteBuffer next;
  std::uint64_t total = 0;  // Payload bytes; counted if the push went out.
  std::vector<PlannedChunk> planned;  // The chunks of `next`.
  while (ok) {
    if (progress != nullptr) planned = writer.Peek();
    const std::optional<std::uint64_t> payload = writer.Next(&next);
    if (!payload.has_value()) break;
    if (progress != nullptr) progress->Copied(planned);
    if (pending.has_value()) ok = stream.Write(*pending);
    pending = std::move(next);
    total += *payload;
  }
  if (!ok) return;
  if (pending.has_value()) {
    ok = stream.Write(*pending, grpc::WriteOptions().set_last_message());
  } else {
    ok = stream.WritesDone();
  }
  if (ok) bytes_written += total;
}

// Writes the initial values of a Join (`values[i]`: tensor i's, empty if
// none is offered), one chunk per message (Join takes no batches, and its
// values always travel as float32), reusing `msg` so that the chunk
// buffer is allocated once per call; adds each written chunk's bytes to
// `bytes_written`. False if a write failed (the server ended the call).
template <typename Stream>
bool WriteInitialValues(Stream& stream,
                        absl::Span<const absl::Span<const float>> values,
                        std::uint64_t chunk_bytes, v1::JoinRequest& msg,
                        std::uint64_t& bytes_written) {
  std::vector<std::uint64_t> tensor_bytes;
  tensor_bytes.reserve(values.size());
  for (absl::Span<const float> v : values) {
    tensor_bytes.push_back(v.size() * kFloatBytes);
  }
  ChunkPlan plan(std::move(tensor_bytes), chunk_bytes, WireFormat::kFloat32,
                 /*batches=*/false);
  std::vector<PlannedChunk> chunks;
  bool batch = false;
  while (plan.Next(&chunks, &batch)) {
    const PlannedChunk& c = chunks.front();
    const char* base =
        reinterpret_cast<const char*>(values[c.tensor_index].data());
    v1::TensorChunk* chunk = msg.mutable_initial_value();
    chunk->set_tensor_index(c.tensor_index);
    chunk->set_offset(c.offset);
    chunk->mutable_data()->assign(base + c.offset, c.covers);
    if (!stream.Write(msg)) return false;
    bytes_written += c.covers;
  }
  return true;
}

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_STREAM_IO_H_
