#include "common/chunk_codec.h"

#include <grpcpp/impl/codegen/proto_utils.h>

#include <limits>

namespace weightd {
namespace {

// Wire tags: (field << 3) | wire type; 0 = varint, 2 = length-delimited.
constexpr std::uint8_t kChunkField = (2 << 3) | 2;
constexpr std::uint8_t kBatchField = (3 << 3) | 2;
constexpr std::uint8_t kBatchChunksField = (1 << 3) | 2;
constexpr std::uint8_t kIndexField = (1 << 3) | 0;
constexpr std::uint8_t kOffsetField = (2 << 3) | 0;
constexpr std::uint8_t kDataField = (3 << 3) | 2;

constexpr std::size_t kMaxVarintBytes = 10;

char* PutVarint(std::uint64_t v, char* out) {
  while (v >= 0x80) {
    *out++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *out++ = static_cast<char>(v);
  return out;
}

std::size_t VarintSize(std::uint64_t v) {
  std::size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// The TensorChunk fields before its payload: tensor_index, offset and the
// data field's tag and length. Returns the end; `out` has room for
// kChunkHeadBytes.
constexpr std::size_t kChunkHeadBytes = 3 + 3 * kMaxVarintBytes;

char* PutChunkHead(std::uint32_t tensor_index, std::uint64_t offset,
                   std::size_t size, char* out) {
  *out++ = static_cast<char>(kIndexField);
  out = PutVarint(tensor_index, out);
  *out++ = static_cast<char>(kOffsetField);
  out = PutVarint(offset, out);
  *out++ = static_cast<char>(kDataField);
  return PutVarint(size, out);
}

// Bytes of a TensorChunk holding `size` payload bytes.
std::size_t ChunkBytes(std::uint32_t tensor_index, std::uint64_t offset,
                       std::size_t size) {
  return 3 + VarintSize(tensor_index) + VarintSize(offset) + VarintSize(size) +
         size;
}

void ReleaseKeep(void* keep) {
  delete static_cast<std::shared_ptr<const void>*>(keep);
}

// Reads bytes across a message's slices.
class Cursor {
 public:
  explicit Cursor(const std::vector<grpc::Slice>& slices) : slices_(slices) {
    for (const grpc::Slice& s : slices_) left_ += s.size();
  }

  std::uint64_t left() const { return left_; }

  bool Byte(std::uint8_t* b) {
    if (left_ == 0) return false;
    while (pos_ == slices_[slice_].size()) Advance();
    *b = slices_[slice_].begin()[pos_++];
    --left_;
    return true;
  }

  bool Varint(std::uint64_t* v) {
    *v = 0;
    for (std::size_t i = 0; i < kMaxVarintBytes; ++i) {
      std::uint8_t b;
      if (!Byte(&b)) return false;
      *v |= static_cast<std::uint64_t>(b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }

  // Views of the next `n` bytes.
  bool Take(std::uint64_t n, std::vector<absl::string_view>* pieces) {
    if (n > left_) return false;
    left_ -= n;
    while (n > 0) {
      while (pos_ == slices_[slice_].size()) Advance();
      const grpc::Slice& s = slices_[slice_];
      const std::size_t take = std::min<std::uint64_t>(n, s.size() - pos_);
      pieces->emplace_back(reinterpret_cast<const char*>(s.begin()) + pos_,
                           take);
      pos_ += take;
      n -= take;
    }
    return true;
  }

 private:
  void Advance() {
    ++slice_;
    pos_ = 0;
  }

  const std::vector<grpc::Slice>& slices_;
  std::size_t slice_ = 0;
  std::size_t pos_ = 0;
  std::uint64_t left_ = 0;
};

}  // namespace

grpc::ByteBuffer ToBytes(const google::protobuf::MessageLite& message) {
  grpc::ByteBuffer bytes;
  bool own;
  grpc::GenericSerialize<grpc::ProtoBufferWriter,
                         google::protobuf::MessageLite>(message, &bytes, &own);
  return bytes;
}

bool FromBytes(grpc::ByteBuffer* bytes,
               google::protobuf::MessageLite* message) {
  return grpc::GenericDeserialize<grpc::ProtoBufferReader,
                                  google::protobuf::MessageLite>(bytes, message)
      .ok();
}

grpc::ByteBuffer EncodeChunk(std::uint32_t tensor_index, std::uint64_t offset,
                             const char* data, std::size_t size,
                             std::shared_ptr<const void> keep) {
  char head[1 + kMaxVarintBytes + kChunkHeadBytes];
  char* p = head;
  *p++ = static_cast<char>(kChunkField);
  p = PutVarint(ChunkBytes(tensor_index, offset, size), p);
  p = PutChunkHead(tensor_index, offset, size, p);
  grpc::Slice slices[2] = {
      grpc::Slice(head, static_cast<std::size_t>(p - head)),
      grpc::Slice(const_cast<char*>(data), size, &ReleaseKeep,
                  new std::shared_ptr<const void>(std::move(keep)))};
  return grpc::ByteBuffer(slices, size == 0 ? 1 : 2);
}

namespace {

// Parses the fields of one TensorChunk that ends when `in` has `end_left`
// bytes left.
bool ParseChunkFields(Cursor& in, std::uint64_t end_left, ChunkView* view) {
  view->pieces.clear();
  view->tensor_index = 0;
  view->offset = 0;
  view->size = 0;
  bool seen_index = false, seen_offset = false, seen_data = false;
  while (in.left() > end_left) {
    std::uint8_t tag;
    std::uint64_t value;
    if (!in.Byte(&tag)) return false;
    switch (tag) {
      case kIndexField:
        if (seen_index || !in.Varint(&value) ||
            value > std::numeric_limits<std::uint32_t>::max()) {
          return false;
        }
        seen_index = true;
        view->tensor_index = static_cast<std::uint32_t>(value);
        break;
      case kOffsetField:
        if (seen_offset || !in.Varint(&view->offset)) return false;
        seen_offset = true;
        break;
      case kDataField:
        if (seen_data || !in.Varint(&value) || value > in.left() - end_left ||
            !in.Take(value, &view->pieces)) {
          return false;
        }
        seen_data = true;
        view->size = value;
        break;
      default:
        return false;
    }
  }
  return in.left() == end_left;
}

}  // namespace

char* BatchWriter::Add(std::uint32_t tensor_index, std::uint64_t offset,
                       std::size_t size) {
  char head[1 + kMaxVarintBytes + kChunkHeadBytes];
  char* p = head;
  *p++ = static_cast<char>(kBatchChunksField);
  p = PutVarint(ChunkBytes(tensor_index, offset, size), p);
  p = PutChunkHead(tensor_index, offset, size, p);
  body_.append(head, static_cast<std::size_t>(p - head));
  const std::size_t at = body_.size();
  body_.resize(at + size);
  ++chunks_;
  payload_ += size;
  return body_.data() + at;
}

grpc::ByteBuffer BatchWriter::Finish() {
  char head[1 + kMaxVarintBytes];
  char* p = head;
  *p++ = static_cast<char>(kBatchField);
  p = PutVarint(body_.size(), p);
  auto* body = new std::string(std::move(body_));
  body_.clear();
  chunks_ = 0;
  payload_ = 0;
  grpc::Slice slices[2] = {
      grpc::Slice(head, static_cast<std::size_t>(p - head)),
      grpc::Slice(
          body->data(), body->size(),
          [](void* b) { delete static_cast<std::string*>(b); }, body)};
  return grpc::ByteBuffer(slices, 2);
}

ChunkView* ChunkReader::NextView() {
  if (count_ == views_.size()) views_.emplace_back();
  return &views_[count_++];
}

bool ChunkReader::Parse(const grpc::ByteBuffer& message) {
  slices_.clear();
  count_ = 0;
  batched_ = false;
  if (!message.Dump(&slices_).ok()) return false;
  Cursor in(slices_);
  std::uint8_t tag;
  std::uint64_t length;
  if (!in.Byte(&tag) || (tag != kChunkField && tag != kBatchField) ||
      !in.Varint(&length) || length != in.left()) {
    return false;
  }
  if (tag == kChunkField) return ParseChunkFields(in, 0, NextView());
  batched_ = true;
  while (in.left() > 0) {
    std::uint64_t entry;
    if (!in.Byte(&tag) || tag != kBatchChunksField || !in.Varint(&entry) ||
        entry > in.left() ||
        !ParseChunkFields(in, in.left() - entry, NextView())) {
      return false;
    }
  }
  return true;
}

}  // namespace weightd
