#include "common/tensor_stream.h"

#include <cstring>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace weightd {

v1::WireFormat WireFormatToProto(WireFormat format) {
  switch (format) {
    case WireFormat::kBfloat16:
      return v1::WIRE_FORMAT_BFLOAT16;
    case WireFormat::kFloat16:
      return v1::WIRE_FORMAT_FLOAT16;
    case WireFormat::kFloat32:
      break;
  }
  return v1::WIRE_FORMAT_FLOAT32;
}

absl::StatusOr<WireFormat> WireFormatFromProto(v1::WireFormat format) {
  switch (format) {
    case v1::WIRE_FORMAT_FLOAT32:
      return WireFormat::kFloat32;
    case v1::WIRE_FORMAT_BFLOAT16:
      return WireFormat::kBfloat16;
    case v1::WIRE_FORMAT_FLOAT16:
      return WireFormat::kFloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "wire format ", static_cast<int>(format),
          " is unknown; use WIRE_FORMAT_FLOAT32, _BFLOAT16 or _FLOAT16"));
  }
}

ChunkPlan::ChunkPlan(std::vector<std::uint64_t> tensor_bytes,
                     std::uint64_t chunk_bytes, WireFormat format, bool batches)
    : tensor_bytes_(std::move(tensor_bytes)),
      chunk_bytes_(chunk_bytes),
      format_(format),
      batches_(batches) {}

std::optional<PlannedChunk> ChunkPlan::Peek() {
  for (; tensor_ < tensor_bytes_.size(); ++tensor_, offset_ = 0) {
    const std::uint64_t bytes = tensor_bytes_[tensor_];
    if (offset_ >= bytes) continue;
    const std::uint64_t covers = ChunkLength(bytes, chunk_bytes_, offset_);
    return PlannedChunk{static_cast<std::uint32_t>(tensor_), offset_, covers,
                        covers / kFloatBytes * ElementBytes(format_)};
  }
  return std::nullopt;
}

bool ChunkPlan::done() { return !Peek().has_value(); }

bool ChunkPlan::Next(std::vector<PlannedChunk>* chunks, bool* batch) {
  chunks->clear();
  std::optional<PlannedChunk> chunk = Peek();
  if (!chunk.has_value()) return false;
  // Small chunks are few bytes and many messages: they share one.
  *batch = batches_ && chunk->covers < kBatchChunksBelow;
  if (!*batch) {
    chunks->push_back(*chunk);
    offset_ += chunk->covers;
    return true;
  }
  std::uint64_t payload = 0;
  while (chunk.has_value() && chunk->covers < kBatchChunksBelow &&
         payload + chunk->size <= chunk_bytes_ &&
         chunks->size() < kMaxBatchChunks) {
    chunks->push_back(*chunk);
    payload += chunk->size;
    offset_ += chunk->covers;
    chunk = Peek();
  }
  return true;
}

OutgoingTensor OutgoingTensor::Copied(absl::Span<const float> values) {
  OutgoingTensor t;
  t.elements = values.size();
  t.values = values.data();
  return t;
}

OutgoingTensor OutgoingTensor::Shared(const char* encoded,
                                      std::uint64_t elements,
                                      std::shared_ptr<const void> keep) {
  OutgoingTensor t;
  t.elements = elements;
  t.encoded = encoded;
  t.keep = std::move(keep);
  return t;
}

namespace {

std::vector<std::uint64_t> TensorBytes(
    const std::vector<OutgoingTensor>& tensors) {
  std::vector<std::uint64_t> bytes;
  bytes.reserve(tensors.size());
  for (const OutgoingTensor& t : tensors) {
    bytes.push_back(t.elements * kFloatBytes);
  }
  return bytes;
}

}  // namespace

TensorStreamWriter::TensorStreamWriter(std::vector<OutgoingTensor> tensors,
                                       std::uint64_t chunk_bytes,
                                       WireFormat format, bool batches)
    : tensors_(std::move(tensors)),
      format_(format),
      plan_(TensorBytes(tensors_), chunk_bytes, format, batches) {}

const std::vector<PlannedChunk>& TensorStreamWriter::Peek() {
  if (!peeked_) peeked_ = plan_.Next(&chunks_, &batch_);
  return chunks_;  // Cleared by plan_.Next() at the end.
}

std::optional<std::uint64_t> TensorStreamWriter::Next(
    grpc::ByteBuffer* message) {
  if (!std::exchange(peeked_, false) && !plan_.Next(&chunks_, &batch_)) {
    return std::nullopt;
  }
  const bool batch = batch_;
  const std::size_t element = ElementBytes(format_);
  if (!batch) {
    const PlannedChunk& c = chunks_.front();
    const OutgoingTensor& t = tensors_[c.tensor_index];
    if (t.encoded != nullptr) {
      *message = EncodeChunk(c.tensor_index, c.offset,
                             t.encoded + c.offset / kFloatBytes * element,
                             c.size, t.keep);
      return c.size;
    }
    // Encoded into a buffer gRPC owns: the caller's buffer is theirs again
    // even if a stalled connection still holds unsent bytes.
    std::shared_ptr<char[]> payload(new char[c.size]);  // Not zero-filled.
    char* const data = payload.get();
    EncodeValues(t.values + c.offset / kFloatBytes, c.covers / kFloatBytes,
                 format_, data);
    *message =
        EncodeChunk(c.tensor_index, c.offset, data, c.size, std::move(payload));
    return c.size;
  }
  BatchWriter writer;
  for (const PlannedChunk& c : chunks_) {
    const OutgoingTensor& t = tensors_[c.tensor_index];
    char* out = writer.Add(c.tensor_index, c.offset, c.size);
    if (t.encoded != nullptr) {
      std::memcpy(out, t.encoded + c.offset / kFloatBytes * element, c.size);
    } else {
      EncodeValues(t.values + c.offset / kFloatBytes, c.covers / kFloatBytes,
                   format_, out);
    }
  }
  const std::uint64_t payload = writer.payload();
  *message = writer.Finish();
  return payload;
}

absl::Status CheckBatch(std::size_t chunks, std::uint64_t payload,
                        std::uint64_t chunk_bytes) {
  if (chunks > kMaxBatchChunks) {
    return absl::InvalidArgumentError(
        absl::StrCat("a batch of more than ", kMaxBatchChunks, " chunks"));
  }
  if (chunks > 1 && payload > chunk_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a batch of ", chunks, " chunks carries ", payload,
                     " bytes of payload; a batch carries at most the server's "
                     "chunk_bytes (",
                     chunk_bytes, ")"));
  }
  return absl::OkStatus();
}

void TensorStreamReader::ViewChunk(const v1::TensorChunk& chunk) {
  if (fallback_count_ == fallback_.size()) fallback_.emplace_back();
  ChunkView& view = fallback_[fallback_count_++];
  view.tensor_index = chunk.tensor_index();
  view.offset = chunk.offset();
  view.pieces.assign(1, chunk.data());
  view.size = chunk.data().size();
}

template <typename Message>
TensorStreamReader::Kind TensorStreamReader::Read(grpc::ByteBuffer* bytes,
                                                  Message* message) {
  constexpr bool kHasBatch = !std::is_same_v<Message, v1::JoinRequest>;
  chunks_ = {};
  if (codec_.Parse(*bytes) && (kHasBatch || !codec_.batched())) {
    chunks_ = codec_.chunks();
    return Kind::kChunks;
  }
  // Not in the codec's form: encoded otherwise, or not a chunk at all.
  if (!FromBytes(bytes, message)) return Kind::kInvalid;
  fallback_count_ = 0;
  if constexpr (kHasBatch) {
    if (message->has_chunk()) {
      ViewChunk(message->chunk());
    } else if (message->has_batch()) {
      for (const v1::TensorChunk& c : message->batch().chunks()) ViewChunk(c);
    } else {
      return Kind::kMessage;
    }
  } else {
    if (!message->has_initial_value()) return Kind::kMessage;
    ViewChunk(message->initial_value());
  }
  chunks_ = absl::MakeConstSpan(fallback_.data(), fallback_count_);
  return Kind::kChunks;
}

template TensorStreamReader::Kind TensorStreamReader::Read(grpc::ByteBuffer*,
                                                           v1::PushRequest*);
template TensorStreamReader::Kind TensorStreamReader::Read(grpc::ByteBuffer*,
                                                           v1::PullResponse*);
template TensorStreamReader::Kind TensorStreamReader::Read(grpc::ByteBuffer*,
                                                           v1::JoinRequest*);

void CopyPieces(Pieces pieces, char* out) {
  for (absl::string_view p : pieces) {
    std::memcpy(out, p.data(), p.size());
    out += p.size();
  }
}

}  // namespace weightd
