#include "common/chunk_codec.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "weightd/v1/weightd.pb.h"

namespace weightd {
namespace {

using ::testing::ElementsAreArray;

// The message's bytes cut into slices at `cuts` (a float may straddle two).
grpc::ByteBuffer Sliced(const std::string& bytes, std::vector<std::size_t> cuts) {
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

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
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
      ChunkView view;
      ASSERT_TRUE(reader.Parse(Sliced(bytes, {a, b}), &view)) << a << "," << b;
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
  ChunkView view;
  view.offset = 99;
  ASSERT_TRUE(reader.Parse(Sliced(msg.SerializeAsString(), {}), &view));
  EXPECT_EQ(view.tensor_index, 0u);
  EXPECT_EQ(view.offset, 0u);
  EXPECT_EQ(view.size, 0u);
  EXPECT_TRUE(view.pieces.empty());
}

TEST(ChunkCodecTest, LeavesEverythingElseToProtobuf) {
  auto refuses = [](const std::string& bytes) {
    ChunkReader reader;
    ChunkView view;
    return !reader.Parse(Sliced(bytes, {}), &view);
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

}  // namespace
}  // namespace weightd
