#include "common/tensor_stream.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/byte_buffer.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::Flatten;
using ::weightd::testing::StatusIs;

// `bytes` as a message cut into two slices at `cut` (a value, or a field,
// may straddle them).
grpc::ByteBuffer Sliced(const std::string& bytes, std::size_t cut) {
  grpc::Slice slices[2] = {grpc::Slice(bytes.data(), cut),
                           grpc::Slice(bytes.data() + cut, bytes.size() - cut)};
  return grpc::ByteBuffer(slices, 2);
}

std::vector<float> Values(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * (float(i) - n / 3.0f);
  return v;
}

// What a value reads back as after a trip in `format`.
float Through(float v, WireFormat format) {
  switch (format) {
    case WireFormat::kBfloat16:
      return Bfloat16ToFloat(FloatToBfloat16(v));
    case WireFormat::kFloat16:
      return Float16ToFloat(FloatToFloat16(v));
    case WireFormat::kFloat32:
      break;
  }
  return v;
}

struct Message {
  std::string bytes;
  std::uint64_t payload = 0;
};

std::vector<Message> Write(const std::vector<std::vector<float>>& tensors,
                           std::uint64_t chunk_bytes, WireFormat format,
                           bool batches) {
  std::vector<OutgoingTensor> out;
  for (const auto& t : tensors) out.push_back(OutgoingTensor::Copied(t));
  TensorStreamWriter writer(std::move(out), chunk_bytes, format, batches);
  std::vector<Message> messages;
  grpc::ByteBuffer next;
  while (std::optional<std::uint64_t> payload = writer.Next(&next)) {
    messages.push_back({Flatten(next), *payload});
  }
  EXPECT_TRUE(writer.finished());
  return messages;
}

// Plans (batched or not), writes, then reads every message back, each cut
// at `cut` bytes when it is longer, and decodes the chunks in place: what
// the receiving side of a call gets.
std::vector<std::vector<float>> RoundTrip(
    const std::vector<std::vector<float>>& tensors, std::uint64_t chunk_bytes,
    WireFormat format, bool batches, std::size_t cut) {
  std::vector<std::vector<float>> got;
  for (const auto& t : tensors) got.emplace_back(t.size(), -1.0f);
  std::vector<std::uint64_t> next(tensors.size(), 0);
  TensorStreamReader reader;
  for (const Message& m : Write(tensors, chunk_bytes, format, batches)) {
    grpc::ByteBuffer bytes = Sliced(m.bytes, std::min(cut, m.bytes.size()));
    v1::PullResponse msg;
    EXPECT_EQ(reader.Read(&bytes, &msg), TensorStreamReader::Kind::kChunks);
    std::uint64_t payload = 0;
    for (const ChunkView& c : reader.chunks()) {
      EXPECT_EQ(c.offset, next[c.tensor_index]);  // In order.
      DecodePieces(c.pieces, format,
                   got[c.tensor_index].data() + c.offset / kFloatBytes);
      next[c.tensor_index] += c.size / ElementBytes(format) * kFloatBytes;
      payload += c.size;
    }
    EXPECT_EQ(payload, m.payload);
  }
  return got;
}

class TensorStreamFormatTest : public ::testing::TestWithParam<WireFormat> {};

TEST_P(TensorStreamFormatTest, SingleAndBatchedChunksRoundTrip) {
  const WireFormat format = GetParam();
  // Chunks of 8 KiB (batched) and of 128 KiB (alone), a tensor of no
  // values and one of a single value.
  const std::vector<std::vector<float>> tensors = {
      Values(5000, 0.5f), {}, {3.25f}, Values(70000, -0.125f), Values(3, 2)};
  for (std::uint64_t chunk_bytes :
       {std::uint64_t{8192}, std::uint64_t{131072}}) {
    for (bool batches : {false, true}) {
      for (std::size_t cut : {1, 7, 30, 4099}) {
        const auto got = RoundTrip(tensors, chunk_bytes, format, batches, cut);
        for (std::size_t t = 0; t < tensors.size(); ++t) {
          ASSERT_EQ(got[t].size(), tensors[t].size());
          for (std::size_t i = 0; i < tensors[t].size(); ++i) {
            ASSERT_EQ(got[t][i], Through(tensors[t][i], format))
                << "tensor " << t << " value " << i << " chunk_bytes "
                << chunk_bytes << " batches " << batches << " cut " << cut;
          }
        }
      }
    }
  }
}

// Each message the writer builds is the generated message protobuf reads.
TEST_P(TensorStreamFormatTest, MessagesAreTheProtobufMessages) {
  const WireFormat format = GetParam();
  const std::vector<float> values = Values(3000, 1.5f);
  std::string encoded(values.size() * ElementBytes(format), '\0');
  EncodeValues(values.data(), values.size(), format, encoded.data());
  for (bool batches : {false, true}) {
    std::string joined;
    for (const Message& m : Write({values}, 4096, format, batches)) {
      v1::PullResponse parsed;
      ASSERT_TRUE(parsed.ParseFromString(m.bytes));
      ASSERT_EQ(parsed.has_batch(), batches);
      ASSERT_EQ(parsed.has_chunk(), !batches);
      if (parsed.has_chunk()) {  // As a batch of one (a oneof: copy first).
        const v1::TensorChunk chunk = parsed.chunk();
        *parsed.mutable_batch()->add_chunks() = chunk;
      }
      for (const v1::TensorChunk& c : parsed.batch().chunks()) {
        EXPECT_EQ(c.tensor_index(), 0u);
        EXPECT_EQ(c.offset(), joined.size() / ElementBytes(format) * 4);
        joined += c.data();
      }
    }
    EXPECT_EQ(joined, encoded);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryFormat, TensorStreamFormatTest,
                         ::testing::Values(WireFormat::kFloat32,
                                           WireFormat::kBfloat16,
                                           WireFormat::kFloat16),
                         [](const auto& info) {
                           return std::string(WireFormatName(info.param));
                         });

// The messages of a plan: "b" for a batch, "s" for a lone chunk, each
// followed by its chunks as tensor@offset+covers.
std::vector<std::string> Plan(std::vector<std::uint64_t> tensor_bytes,
                              std::uint64_t chunk_bytes, WireFormat format,
                              bool batches) {
  ChunkPlan plan(std::move(tensor_bytes), chunk_bytes, format, batches);
  std::vector<std::string> out;
  std::vector<PlannedChunk> chunks;
  bool batch = false;
  while (plan.Next(&chunks, &batch)) {
    std::string m = batch ? "b" : "s";
    std::uint64_t payload = 0;
    for (const PlannedChunk& c : chunks) {
      m += " " + std::to_string(c.tensor_index) + "@" +
           std::to_string(c.offset) + "+" + std::to_string(c.covers);
      EXPECT_EQ(c.size, c.covers / 4 * ElementBytes(format));
      payload += c.size;
    }
    EXPECT_TRUE(CheckBatch(chunks.size(), payload, chunk_bytes).ok()) << m;
    out.push_back(m);
  }
  EXPECT_TRUE(plan.done());
  return out;
}

TEST(ChunkPlanTest, ChunksTravelAloneWithoutBatches) {
  EXPECT_THAT(
      Plan({20000, 0, 4}, 8192, WireFormat::kFloat32, false),
      ElementsAre("s 0@0+8192", "s 0@8192+8192", "s 0@16384+3616", "s 2@0+4"));
}

TEST(ChunkPlanTest, SmallChunksShareBatchesUpToChunkBytesOfPayload) {
  // float32: two 8 KiB chunks exceed a batch's 8 KiB.
  EXPECT_THAT(
      Plan({20000, 0, 4}, 8192, WireFormat::kFloat32, true),
      ElementsAre("b 0@0+8192", "b 0@8192+8192", "b 0@16384+3616 2@0+4"));
  // 16 bits: half the payload, so twice the chunks per batch.
  EXPECT_THAT(Plan({20000, 0, 4}, 8192, WireFormat::kBfloat16, true),
              ElementsAre("b 0@0+8192 0@8192+8192", "b 0@16384+3616 2@0+4"));
}

TEST(ChunkPlanTest, ChunksOfAtLeast64KiBTravelAlone) {
  const std::uint64_t mib = 1 << 20;
  EXPECT_THAT(
      Plan({mib + 20000, 100, 65536}, mib, WireFormat::kFloat32, true),
      ElementsAre("s 0@0+1048576", "b 0@1048576+20000 1@0+100", "s 2@0+65536"));
}

TEST(ChunkPlanTest, ABatchHoldsAtMostMaxBatchChunks) {
  std::vector<std::uint64_t> tiny(kMaxBatchChunks + 10, 4);
  const auto plan = Plan(tiny, 1 << 20, WireFormat::kFloat32, true);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_THAT(plan[1], ::testing::StartsWith("b 4096@0+4 "));
}

TEST(ChunkPlanTest, NothingToSend) {
  EXPECT_TRUE(Plan({}, 4096, WireFormat::kFloat32, true).empty());
  EXPECT_TRUE(Plan({0, 0}, 4096, WireFormat::kFloat16, false).empty());
}

TEST(TensorStreamWriterTest, SharedPayloadIsReferencedAndKept) {
  auto value = std::make_shared<std::vector<float>>(Values(40000, 1));
  std::vector<OutgoingTensor> tensors = {OutgoingTensor::Shared(
      reinterpret_cast<const char*>(value->data()), value->size(), value)};
  TensorStreamWriter writer(std::move(tensors), 1 << 20, WireFormat::kFloat32,
                            true);
  grpc::ByteBuffer message;
  ASSERT_EQ(writer.Next(&message), std::optional<std::uint64_t>(160000));
  EXPECT_TRUE(writer.finished());
  EXPECT_FALSE(writer.Next(&message).has_value());
  EXPECT_GE(value.use_count(), 2);  // The message holds the value.
  v1::PullResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(message)));
  EXPECT_EQ(parsed.chunk().data(),
            std::string(reinterpret_cast<const char*>(value->data()), 160000));
}

// Chunks that protobuf encoded in a way the codec leaves alone (here an
// unknown field inside each) read the same through the fallback.
TEST(TensorStreamReaderTest, ProtobufFallbackReadsChunksAndBatches) {
  v1::PushRequest lone;
  lone.mutable_chunk()->set_tensor_index(2);
  lone.mutable_chunk()->set_offset(4096);
  lone.mutable_chunk()->set_data("abcdefgh");
  lone.mutable_chunk()
      ->GetReflection()
      ->MutableUnknownFields(lone.mutable_chunk())
      ->AddVarint(9, 1);
  v1::PushRequest batch;
  for (int i = 0; i < 3; ++i) {
    v1::TensorChunk* c = batch.mutable_batch()->add_chunks();
    *c = lone.chunk();
    c->set_tensor_index(i);
  }
  TensorStreamReader reader;
  for (const v1::PushRequest& m : {lone, batch}) {
    ChunkReader codec;
    grpc::ByteBuffer bytes = Sliced(m.SerializeAsString(), 3);
    ASSERT_FALSE(codec.Parse(bytes));  // Not the fast path.
    v1::PushRequest parsed;
    ASSERT_EQ(reader.Read(&bytes, &parsed), TensorStreamReader::Kind::kChunks);
    ASSERT_EQ(reader.chunks().size(), m.has_batch() ? 3u : 1u);
    for (std::size_t i = 0; i < reader.chunks().size(); ++i) {
      const ChunkView& c = reader.chunks()[i];
      EXPECT_EQ(c.tensor_index, m.has_batch() ? i : 2u);
      EXPECT_EQ(c.offset, 4096u);
      EXPECT_EQ(c.size, 8u);
      std::string data(c.size, '\0');
      CopyPieces(c.pieces, data.data());
      EXPECT_EQ(data, "abcdefgh");
    }
  }
}

TEST(TensorStreamReaderTest, HeadersEmptyMessagesAndGarbage) {
  TensorStreamReader reader;
  v1::PushRequest header;
  header.mutable_header()->set_lease_id(7);
  grpc::ByteBuffer bytes = Sliced(header.SerializeAsString(), 1);
  v1::PushRequest parsed;
  ASSERT_EQ(reader.Read(&bytes, &parsed), TensorStreamReader::Kind::kMessage);
  EXPECT_EQ(parsed.header().lease_id(), 7u);

  bytes = Sliced("", 0);  // A message with nothing set.
  EXPECT_EQ(reader.Read(&bytes, &parsed), TensorStreamReader::Kind::kMessage);
  EXPECT_FALSE(parsed.has_header());

  bytes = Sliced(std::string("\x12\x7f\x08", 3), 1);  // Length past the end.
  EXPECT_EQ(reader.Read(&bytes, &parsed), TensorStreamReader::Kind::kInvalid);
}

// JoinRequest's field 2 is a chunk; it has no field 3: a batch there is an
// unknown field, and the message carries nothing, as protobuf reads it.
TEST(TensorStreamReaderTest, JoinTakesLoneChunksOnly) {
  v1::PushRequest chunk;
  chunk.mutable_chunk()->set_offset(8);
  chunk.mutable_chunk()->set_data("wxyz");
  v1::PushRequest batch;
  *batch.mutable_batch()->add_chunks() = chunk.chunk();
  TensorStreamReader reader;
  v1::JoinRequest join;
  grpc::ByteBuffer bytes = Sliced(chunk.SerializeAsString(), 2);
  ASSERT_EQ(reader.Read(&bytes, &join), TensorStreamReader::Kind::kChunks);
  ASSERT_EQ(reader.chunks().size(), 1u);
  EXPECT_EQ(reader.chunks()[0].offset, 8u);
  bytes = Sliced(batch.SerializeAsString(), 2);
  EXPECT_EQ(reader.Read(&bytes, &join), TensorStreamReader::Kind::kMessage);
  EXPECT_FALSE(join.has_header());
  EXPECT_FALSE(join.has_initial_value());
}

TEST(CheckBatchTest, RefusesWhatTheServerAlwaysRefused) {
  EXPECT_TRUE(CheckBatch(kMaxBatchChunks, 8192, 8192).ok());
  EXPECT_TRUE(CheckBatch(1, 1 << 30, 8192).ok());  // Its length check says.
  EXPECT_THAT(CheckBatch(kMaxBatchChunks + 1, 8, 8192),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(CheckBatch(kMaxBatchChunks + 1, 8, 8192).message(),
            "a batch of more than 4096 chunks");
  EXPECT_EQ(CheckBatch(2, 8196, 8192),
            absl::InvalidArgumentError(
                "a batch of 2 chunks carries 8196 bytes of payload; a batch "
                "carries at most the server's chunk_bytes (8192)"));
}

TEST(WireFormatProtoTest, EveryFormatBothWaysAndUnknownRefused) {
  for (WireFormat f :
       {WireFormat::kFloat32, WireFormat::kBfloat16, WireFormat::kFloat16}) {
    absl::StatusOr<WireFormat> back = WireFormatFromProto(WireFormatToProto(f));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, f);
  }
  EXPECT_EQ(WireFormatToProto(WireFormat::kBfloat16), v1::WIRE_FORMAT_BFLOAT16);
  EXPECT_EQ(WireFormatFromProto(static_cast<v1::WireFormat>(7)).status(),
            absl::InvalidArgumentError("wire format 7 is unknown; use "
                                       "WIRE_FORMAT_FLOAT32, _BFLOAT16 or "
                                       "_FLOAT16"));
}

}  // namespace
}  // namespace weightd
