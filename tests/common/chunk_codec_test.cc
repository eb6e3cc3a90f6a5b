#include "common/chunk_codec.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/byte_buffer.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd {
namespace {

using ::testing::ElementsAreArray;
using ::weightd::testing::Flatten;

// The message's bytes cut into slices at `cuts` (a float may straddle two).
grpc::ByteBuffer Sliced(const std::string& bytes,
                        std::vector<std::size_t> cuts) {
  std::vector<grpc::Slice> slices;
  std::size_t from = 0;
  cuts.push_back(bytes.size());
  for (std::size_t cut : cuts) {
    slices.emplace_back(bytes.data() + from, cut - from);
    from = cut;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Joined(const ChunkView& view) {
  std::string out;
  for (absl::string_view p : view.pieces) out.append(p.data(), p.size());
  return out;
}

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(ChunkCodecTest, EncodedChunkIsTheProtobufMessage) {
  const std::vector<float> data = {1.5f, -2.0f, 3.25f};
  auto keep = std::make_shared<int>(7);
  grpc::ByteBuffer encoded =
      EncodeChunk(4, 1 << 20, reinterpret_cast<const char*>(data.data()),
                  data.size() * 4, keep);
  EXPECT_EQ(keep.use_count(), 2);  // The payload slice holds it.

  v1::PushPullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(encoded)));
  ASSERT_TRUE(parsed.has_chunk());
  EXPECT_EQ(parsed.chunk().tensor_index(), 4u);
  EXPECT_EQ(parsed.chunk().offset(), 1u << 20);
  EXPECT_EQ(parsed.chunk().data(), FloatBytes(data));

  encoded.Clear();
  EXPECT_EQ(keep.use_count(), 1);  // Released with the message.
}

TEST(ChunkCodecTest, ParsesProtobufChunksAcrossEverySliceCut) {
  v1::PushRequest msg;
  msg.mutable_chunk()->set_tensor_index(3);
  msg.mutable_chunk()->set_offset(300);
  const std::vector<float> data = {1, 2, 3, 4, 5};
  msg.mutable_chunk()->set_data(FloatBytes(data));
  const std::string bytes = msg.SerializeAsString();
  for (std::size_t a = 0; a <= bytes.size(); ++a) {
    for (std::size_t b = a; b <= bytes.size(); b += 3) {
      ChunkReader reader;
      ASSERT_TRUE(reader.Parse(Sliced(bytes, {a, b}))) << a << "," << b;
      ASSERT_EQ(reader.chunks().size(), 1u);
      const ChunkView& view = reader.chunks()[0];
      EXPECT_EQ(view.tensor_index, 3u);
      EXPECT_EQ(view.offset, 300u);
      EXPECT_EQ(view.size, data.size() * 4);
      EXPECT_EQ(Joined(view), FloatBytes(data));
    }
  }
}

TEST(ChunkCodecTest, DefaultFieldsAndEmptyPayload) {
  v1::PushRequest msg;
  msg.mutable_chunk();  // Every field at its default: an empty field 2.
  ChunkReader reader;
  ASSERT_TRUE(reader.Parse(Sliced(msg.SerializeAsString(), {})));
  ASSERT_EQ(reader.chunks().size(), 1u);
  const ChunkView& view = reader.chunks()[0];
  EXPECT_EQ(view.tensor_index, 0u);
  EXPECT_EQ(view.offset, 0u);
  EXPECT_EQ(view.size, 0u);
  EXPECT_TRUE(view.pieces.empty());
}

TEST(ChunkCodecTest, LeavesEverythingElseToProtobuf) {
  auto refuses = [](const std::string& bytes) {
    ChunkReader reader;
    return !reader.Parse(Sliced(bytes, {}));
  };
  v1::PushRequest header;
  header.mutable_header()->set_lease_id(5);
  EXPECT_TRUE(refuses(header.SerializeAsString()));
  EXPECT_TRUE(refuses(""));  // No field set.

  v1::PushRequest chunk;
  chunk.mutable_chunk()->set_offset(8);
  chunk.mutable_chunk()->set_data("abcd");
  const std::string good = chunk.SerializeAsString();
  ASSERT_FALSE(refuses(good));
  // Two chunk fields (protobuf would merge them), a truncated message, a
  // length past the end, an unknown field inside, a repeated data field.
  EXPECT_TRUE(refuses(good + good));
  EXPECT_TRUE(refuses(good.substr(0, good.size() - 1)));
  std::string longer = good;
  longer[1] = static_cast<char>(longer[1] + 1);
  EXPECT_TRUE(refuses(longer));
  std::string unknown = good;
  unknown[1] = static_cast<char>(unknown[1] + 2);
  unknown += std::string("\x20\x01", 2);  // Field 4, varint 1.
  EXPECT_TRUE(refuses(unknown));
  std::string twice = good;
  twice[1] = static_cast<char>(twice[1] + 6);
  twice += std::string("\x1a\x04wxyz", 6);
  EXPECT_TRUE(refuses(twice));
  // A tensor index that does not fit 32 bits.
  std::string wide("\x12\x06\x08\xff\xff\xff\xff\x1f", 8);
  EXPECT_TRUE(refuses(wide));
}

v1::ChunkBatch ThreeChunks() {
  v1::ChunkBatch batch;
  for (std::uint32_t i = 0; i < 3; ++i) {
    v1::TensorChunk* c = batch.add_chunks();
    c->set_tensor_index(i);
    c->set_offset(4096 * i);
    c->set_data(FloatBytes(std::vector<float>(i + 1, 0.5f * i)));
  }
  return batch;
}

TEST(ChunkCodecTest, BatchWriterWritesTheProtobufBatch) {
  const v1::ChunkBatch want = ThreeChunks();
  BatchWriter writer;
  for (const v1::TensorChunk& c : want.chunks()) {
    std::memcpy(writer.Add(c.tensor_index(), c.offset(), c.data().size()),
                c.data().data(), c.data().size());
  }
  EXPECT_EQ(writer.chunks(), 3u);
  EXPECT_EQ(writer.payload(), 4u * (1 + 2 + 3));
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(writer.Finish())));
  ASSERT_TRUE(parsed.has_batch());
  EXPECT_EQ(parsed.batch().SerializeAsString(), want.SerializeAsString());
  EXPECT_EQ(writer.chunks(), 0u);  // Empty again.
}

TEST(ChunkCodecTest, ParsesProtobufBatchesAcrossEverySliceCut) {
  v1::PushRequest msg;
  *msg.mutable_batch() = ThreeChunks();
  const std::string bytes = msg.SerializeAsString();
  ChunkReader reader;  // Reused: views are recycled between messages.
  for (std::size_t cut = 0; cut <= bytes.size(); ++cut) {
    ASSERT_TRUE(reader.Parse(Sliced(bytes, {cut}))) << cut;
    ASSERT_EQ(reader.chunks().size(), 3u);
    for (std::uint32_t i = 0; i < 3; ++i) {
      const ChunkView& view = reader.chunks()[i];
      EXPECT_EQ(view.tensor_index, i);
      EXPECT_EQ(view.offset, 4096u * i);
      EXPECT_EQ(Joined(view), msg.batch().chunks(i).data());
    }
  }
  // A batch holding something other than chunks, or a chunk's length
  // running past the batch, goes to protobuf.
  std::string other = bytes;
  other[2] = 0x12;  // The first entry's tag: field 2 instead of 1.
  EXPECT_FALSE(reader.Parse(Sliced(other, {})));
  std::string longer = bytes;
  longer[3] = static_cast<char>(longer[3] + 40);  // First entry's length.
  EXPECT_FALSE(reader.Parse(Sliced(longer, {})));
}

}  // namespace
}  // namespace weightd
