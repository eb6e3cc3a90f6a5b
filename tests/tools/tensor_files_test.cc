#include "tools/tensor_files.h"

#include <unistd.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

// The files the tests build by hand, byte by byte, are the formats as their
// specifications state them: they check the reader against the format, not
// against the writer. The writer's output is checked the same way.
namespace weightd::tensor_files {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

std::uint32_t Bits(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float FromBits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

class TensorFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tensor_files_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    ASSERT_EQ(std::system(("rm -rf " + dir_).c_str()), 0);
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteBytes(const std::string& name, const std::string& bytes) {
    const std::string path = Path(name);
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  static std::string ReadBytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  static bool Exists(const std::string& path) {
    return ::access(path.c_str(), F_OK) == 0;
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------
// Hand-built files

std::string U64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}
std::string U32(std::uint32_t v) { return U64(v).substr(0, 4); }
std::string U16(std::uint16_t v) { return U64(v).substr(0, 2); }

template <typename T>
std::string Raw(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()),
                     values.size() * sizeof(T));
}

// A safetensors file: the length, the header text as given, the data.
std::string Safetensors(const std::string& header, const std::string& data) {
  return U64(header.size()) + header + data;
}

// An NPY file of version 1.0 with the header dict as given.
std::string Npy(const std::string& dict, const std::string& data) {
  std::string header = dict;
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  return std::string("\x93NUMPY\x01\x00", 8) + U16(header.size()) + header +
         data;
}

std::uint32_t Crc32(const std::string& data) {
  std::uint32_t crc = 0xffffffffu;
  for (unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k)
      crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
  }
  return ~crc;
}

// Deflate's stored blocks (RFC 1951 3.2.4): a valid deflate stream that any
// inflater must read, without a compressor in the test.
std::string DeflateStored(const std::string& data) {
  std::string out;
  std::size_t at = 0;
  do {
    const std::size_t n = std::min<std::size_t>(65535, data.size() - at);
    const bool last = at + n == data.size();
    out.push_back(last ? 1 : 0);
    out += U16(static_cast<std::uint16_t>(n));
    out += U16(static_cast<std::uint16_t>(~n));
    out += data.substr(at, n);
    at += n;
  } while (at < data.size());
  return out;
}

struct Member {
  std::string name;
  std::string data;
  bool deflate = false;
  bool bad_crc = false;
};

// A zip archive (PKWARE APPNOTE 4.3): local headers, central directory, end.
std::string Zip(const std::vector<Member>& members) {
  std::string out, central;
  for (const Member& m : members) {
    const std::string stored = m.deflate ? DeflateStored(m.data) : m.data;
    const std::uint32_t crc = Crc32(m.data) ^ (m.bad_crc ? 1u : 0u);
    const std::string common = U16(20) + U16(0) + U16(m.deflate ? 8 : 0) +
                               U16(0) + U16(0x21) + U32(crc) +
                               U32(stored.size()) + U32(m.data.size()) +
                               U16(m.name.size()) + U16(0);
    central += U32(0x02014b50) + U16(20) + common + U16(0) + U16(0) + U16(0) +
               U32(0) + U32(out.size()) + m.name;
    out += U32(0x04034b50) + common + m.name + stored;
  }
  const std::size_t central_at = out.size();
  out += central;
  out += U32(0x06054b50) + U16(0) + U16(0) + U16(members.size()) +
         U16(members.size()) + U32(central.size()) + U32(central_at) + U16(0);
  return out;
}

// Tensors with the values a careless writer gets wrong: negative zero,
// subnormals, the extremes, a NaN with a payload, a scalar, and one of 20 MB
// (more than one of the reader's 16 MiB steps).
std::vector<NamedTensor> AwkwardTensors() {
  // weightd holds finite values only, but a file is bytes: a NaN's payload
  // must survive too.
  NamedTensor special{"special/values",
                      {3, 3},
                      {-0.0f, 0.0f, FromBits(1), -FromBits(0x007fffff), FLT_MIN,
                       FLT_MAX, -FLT_MAX, 1.0f / 3.0f, FromBits(0x7fc12345)}};
  NamedTensor scalar{"scalar", {}, {42.5f}};
  NamedTensor large{"large:w", {5, 1000, 1000}, {}};
  large.values.resize(5'000'000);
  for (std::size_t i = 0; i < large.values.size(); ++i) {
    large.values[i] = FromBits(static_cast<std::uint32_t>(i * 2654435761u) &
                               0xbf7fffffu);  // Finite, both signs.
  }
  return {special, scalar, large};
}

void ExpectBitIdentical(const std::vector<NamedTensor>& got,
                        const std::vector<NamedTensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].name);
    EXPECT_EQ(got[i].shape, want[i].shape) << want[i].name;
    EXPECT_EQ(got[i].source_dtype, "F32");
    ASSERT_EQ(got[i].values.size(), want[i].values.size()) << want[i].name;
    EXPECT_EQ(std::memcmp(got[i].values.data(), want[i].values.data(),
                          want[i].values.size() * 4),
              0)
        << want[i].name << " differs";
  }
}

// ---------------------------------------------------------------------------
// Round trips and the layout of what is written

TEST_F(TensorFilesTest, SafetensorsRoundTripIsBitIdentical) {
  const std::vector<NamedTensor> tensors = AwkwardTensors();
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"weightd.version.scalar", "7"}};
  const std::string path = Path("w.safetensors");
  WEIGHTD_ASSERT_OK(WriteSafetensors(path, tensors, metadata));
  EXPECT_FALSE(Exists(path + ".tmp"));
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile file, ReadSafetensors(path));
  EXPECT_EQ(file.format, TensorFileFormat::kSafetensors);
  EXPECT_EQ(file.metadata, metadata);
  ExpectBitIdentical(file.tensors, tensors);
  // By content alone, without the extension.
  ASSERT_EQ(std::rename(path.c_str(), Path("noext").c_str()), 0);
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile again, ReadTensorFile(Path("noext")));
  ExpectBitIdentical(again.tensors, tensors);
}

TEST_F(TensorFilesTest, SafetensorsLayoutFollowsTheSpecification) {
  const std::vector<NamedTensor> tensors = {{"b", {2}, {1.0f, -2.0f}},
                                            {"a", {1, 1}, {0.5f}}};
  const std::string path = Path("w.safetensors");
  WEIGHTD_ASSERT_OK(WriteSafetensors(path, tensors, {{"format", "pt"}}));
  const std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  std::uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header not padded to a multiple of 8";
  ASSERT_EQ(bytes.size(), 8 + n + 12);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header[0], '{');
  // Padding is spaces after the JSON, nothing else.
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));
  EXPECT_THAT(
      header,
      AllOf(
          HasSubstr(R"("b":{"data_offsets":[0,8],"dtype":"F32","shape":[2]})"),
          HasSubstr(
              R"("a":{"data_offsets":[8,12],"dtype":"F32","shape":[1,1]})"),
          HasSubstr(R"("__metadata__":{"format":"pt"})")));
  // In the order given, little-endian.
  EXPECT_EQ(bytes.substr(8 + n), Raw(std::vector<float>{1.0f, -2.0f, 0.5f}));
  EXPECT_EQ(bytes.substr(8 + n, 4), std::string("\x00\x00\x80\x3f", 4));
}

TEST_F(TensorFilesTest, NpzRoundTripIsBitIdentical) {
  const std::vector<NamedTensor> tensors = AwkwardTensors();
  const std::string path = Path("w.npz");
  WEIGHTD_ASSERT_OK(WriteNpz(path, tensors));
  EXPECT_FALSE(Exists(path + ".tmp"));
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile file, ReadNpz(path));
  EXPECT_EQ(file.format, TensorFileFormat::kNpz);
  ExpectBitIdentical(file.tensors, tensors);
  ASSERT_EQ(std::rename(path.c_str(), Path("noext").c_str()), 0);
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile again, ReadTensorFile(Path("noext")));
  EXPECT_EQ(again.format, TensorFileFormat::kNpz);
}

TEST_F(TensorFilesTest, NpzMembersAreStoredNpyVersion1Aligned) {
  const std::string path = Path("w.npz");
  WEIGHTD_ASSERT_OK(WriteNpz(path, {{"fc/w", {2, 3}, {1, 2, 3, 4, 5, 6}}}));
  const std::string bytes = ReadBytes(path);
  // The first local file header (APPNOTE 4.3.7).
  ASSERT_GT(bytes.size(), 30u);
  ASSERT_EQ(bytes.substr(0, 4), "PK\x03\x04");
  auto u16 = [&](std::size_t at) {
    return static_cast<unsigned char>(bytes[at]) |
           static_cast<unsigned char>(bytes[at + 1]) << 8;
  };
  EXPECT_EQ(u16(8), 0) << "member not stored (method " << u16(8) << ")";
  const std::size_t name_bytes = u16(26), extra = u16(28);
  EXPECT_EQ(bytes.substr(30, name_bytes), "fc/w.npy");
  const std::string npy = bytes.substr(30 + name_bytes + extra);
  EXPECT_EQ(npy.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_bytes = static_cast<unsigned char>(npy[8]) |
                                   static_cast<unsigned char>(npy[9]) << 8;
  EXPECT_EQ((10 + header_bytes) % 64, 0u) << "data not 64-byte aligned";
  const std::string header = npy.substr(10, header_bytes);
  EXPECT_THAT(header, HasSubstr("'descr': '<f4'"));
  EXPECT_THAT(header, HasSubstr("'fortran_order': False"));
  EXPECT_THAT(header, HasSubstr("'shape': (2, 3)"));
  EXPECT_EQ(header.back(), '\n');
  EXPECT_EQ(npy.substr(10 + header_bytes, 24),
            Raw(std::vector<float>{1, 2, 3, 4, 5, 6}));
}

TEST_F(TensorFilesTest, NpyShapesOfRankZeroAndOneArePythonTuples) {
  const std::string path = Path("w.npz");
  WEIGHTD_ASSERT_OK(WriteNpz(path, {{"s", {}, {1}}, {"v", {3}, {1, 2, 3}}}));
  const std::string bytes = ReadBytes(path);
  EXPECT_THAT(bytes, HasSubstr("'shape': (), }"));
  EXPECT_THAT(bytes, HasSubstr("'shape': (3,), }"));
}

// ---------------------------------------------------------------------------
// Writing

TEST_F(TensorFilesTest, WriteRefusesBadTensorsAndLeavesNoFile) {
  const std::string path = Path("w.safetensors");
  EXPECT_THAT(WriteSafetensors(path, {{"a", {2, 2}, {1, 2, 3}}}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("has 3 values, not 4")));
  EXPECT_THAT(
      WriteNpz(Path("w.npz"), {{"a", {1}, {1}}, {"a", {1}, {2}}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("listed twice")));
  EXPECT_FALSE(Exists(path));
  EXPECT_FALSE(Exists(Path("w.npz")));
}

TEST_F(TensorFilesTest, FailedWriteKeepsThePreviousFile) {
  const std::string path = WriteBytes("w.safetensors", "previous");
  // PATH.tmp cannot be created where a directory of that name is.
  ASSERT_EQ(::mkdir((path + ".tmp").c_str(), 0755), 0);
  EXPECT_THAT(WriteSafetensors(path, {{"a", {1}, {1}}}, {}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr(path + ".tmp")));
  EXPECT_THAT(WriteNpz(path, {{"a", {1}, {1}}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr(path + ".tmp")));
  EXPECT_EQ(ReadBytes(path), "previous");
  EXPECT_THAT(WriteSafetensors(Path("no/such/dir/w.safetensors"), {}, {}),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(FormatForTest, FlagThenExtension) {
  EXPECT_EQ(*FormatFor("npz", "x.safetensors"), TensorFileFormat::kNpz);
  EXPECT_EQ(*FormatFor("", "dir/x.safetensors"),
            TensorFileFormat::kSafetensors);
  EXPECT_EQ(*FormatFor("", "x.npz"), TensorFileFormat::kNpz);
  EXPECT_THAT(FormatFor("", "x.bin"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--format=safetensors|npz")));
  EXPECT_THAT(FormatFor("pickle", "x.npz"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown format \"pickle\"")));
}

// ---------------------------------------------------------------------------
// Reading what others write

TEST_F(TensorFilesTest, ReadsAHandBuiltSafetensorsFile) {
  // Out of order in the header, null metadata, an extra field: all legal.
  const std::string header =
      R"({"b":{"dtype":"F32","shape":[],"data_offsets":[8,12],"x":1},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":null})";
  const std::string path =
      WriteBytes("x.safetensors",
                 Safetensors(header + "   ", Raw(std::vector<float>{1, 2, 3})));
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile file, ReadTensorFile(path));
  ASSERT_EQ(file.tensors.size(), 2u);
  EXPECT_EQ(file.tensors[0].name, "a");  // By offset.
  EXPECT_THAT(file.tensors[0].values, ElementsAre(1, 2));
  EXPECT_EQ(file.tensors[1].name, "b");
  EXPECT_TRUE(file.tensors[1].shape.empty());
  EXPECT_THAT(file.tensors[1].values, ElementsAre(3));
  EXPECT_TRUE(file.metadata.empty());
}

TEST_F(TensorFilesTest, ConvertsF64F16AndBF16Exactly) {
  const std::vector<double> f64 = {1.5, -0.0, 0.1, 3.4028234663852886e38,
                                   1e-40};
  const std::vector<std::uint16_t> f16 = {
      0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x8000, 0x3555, 0x7c00};
  const std::vector<std::uint16_t> bf16 = {0x3f80, 0xc049, 0x0001, 0x8000,
                                           0x7f7f};
  const std::string data = Raw(f64) + Raw(f16) + Raw(bf16);
  const std::string header = absl::StrCat(
      R"({"d":{"dtype":"F64","shape":[5],"data_offsets":[0,40]},)",
      R"("h":{"dtype":"F16","shape":[9],"data_offsets":[40,58]},)",
      R"("b":{"dtype":"BF16","shape":[5],"data_offsets":[58,68]}})");
  const std::string path =
      WriteBytes("x.safetensors", Safetensors(header, data));
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile file, ReadSafetensors(path));
  ASSERT_EQ(file.tensors.size(), 3u);
  const NamedTensor& d = file.tensors[0];
  EXPECT_EQ(d.source_dtype, "F64");
  EXPECT_EQ(Bits(d.values[0]), Bits(1.5f));
  EXPECT_EQ(Bits(d.values[1]), 0x80000000u);  // -0 stays negative.
  EXPECT_EQ(Bits(d.values[2]), Bits(0.1f));   // Nearest float.
  EXPECT_EQ(Bits(d.values[3]), Bits(FLT_MAX));
  EXPECT_EQ(Bits(d.values[4]), 0x000116c2u);  // A float subnormal.
  const NamedTensor& h = file.tensors[1];
  EXPECT_EQ(h.source_dtype, "F16");
  EXPECT_EQ(h.values[0], 1.0f);
  EXPECT_EQ(h.values[1], -2.0f);
  EXPECT_EQ(h.values[2], 65504.0f);                      // Largest half.
  EXPECT_EQ(h.values[3], std::ldexp(1.0f, -24));         // Smallest subnormal.
  EXPECT_EQ(h.values[4], 1023 * std::ldexp(1.0f, -24));  // Largest one.
  EXPECT_EQ(h.values[5], std::ldexp(1.0f, -14));         // Smallest normal.
  EXPECT_EQ(Bits(h.values[6]), 0x80000000u);
  EXPECT_EQ(h.values[7], 0.333251953125f);
  EXPECT_EQ(h.values[8], std::numeric_limits<float>::infinity());
  const NamedTensor& b = file.tensors[2];
  EXPECT_EQ(b.source_dtype, "BF16");
  EXPECT_EQ(b.values[0], 1.0f);
  EXPECT_EQ(b.values[1], -3.140625f);
  EXPECT_EQ(Bits(b.values[2]), 0x00010000u);
  EXPECT_EQ(Bits(b.values[3]), 0x80000000u);
  EXPECT_EQ(Bits(b.values[4]), 0x7f7f0000u);
}

TEST_F(TensorFilesTest, ReadsNpzOfOtherDtypesOrdersAndCompression) {
  const std::string path = WriteBytes(
      "x.npz",
      Zip({{"f8.npy",
            Npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                Raw(std::vector<double>{0.1, -4.0}))},
           {"f2.npy",
            Npy("{'descr': '<f2', 'fortran_order': False, 'shape': (), }",
                U16(0x3555))},
           // Big-endian 1.0f and 2.0f.
           {"be.npy",
            Npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                std::string("\x3f\x80\x00\x00\x40\x00\x00\x00", 8))},
           // Column-major [[1, 2, 3], [4, 5, 6]].
           {"fortran.npy",
            Npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                Raw(std::vector<float>{1, 4, 2, 5, 3, 6}))},
           // As numpy.savez_compressed: deflated.
           {"dir/deflated.npy",
            Npy("{'shape': (1, 2), 'fortran_order': False, 'descr': '<f4'}",
                Raw(std::vector<float>{7, 8})),
            /*deflate=*/true}}));
  WEIGHTD_ASSERT_OK_AND_ASSIGN(TensorFile file, ReadTensorFile(path));
  ASSERT_EQ(file.tensors.size(), 5u);
  EXPECT_EQ(file.tensors[0].name, "f8");
  EXPECT_EQ(file.tensors[0].source_dtype, "F64");
  EXPECT_THAT(file.tensors[0].values, ElementsAre(0.1f, -4.0f));
  EXPECT_EQ(file.tensors[1].source_dtype, "F16");
  EXPECT_THAT(file.tensors[1].values, ElementsAre(0.333251953125f));
  EXPECT_THAT(file.tensors[2].values, ElementsAre(1.0f, 2.0f));
  EXPECT_EQ(file.tensors[2].source_dtype, "F32");
  EXPECT_THAT(file.tensors[3].shape, ElementsAre(2, 3));
  EXPECT_THAT(file.tensors[3].values, ElementsAre(1, 2, 3, 4, 5, 6));
  EXPECT_EQ(file.tensors[4].name, "dir/deflated");
  EXPECT_THAT(file.tensors[4].values, ElementsAre(7, 8));
}

// ---------------------------------------------------------------------------
// Refusals: safetensors

class SafetensorsRefusalTest : public TensorFilesTest {
 protected:
  absl::Status Read(const std::string& bytes) {
    return ReadTensorFile(WriteBytes("bad.safetensors", bytes)).status();
  }
  absl::Status Read(const std::string& header, std::size_t data_bytes) {
    return Read(Safetensors(header, std::string(data_bytes, '\0')));
  }
};

TEST_F(SafetensorsRefusalTest, Truncated) {
  EXPECT_THAT(
      Read(std::string("\x10\x00\x00", 3)),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr("truncated: 3 bytes")));
  EXPECT_THAT(Read(U64(100) + "{}"),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("header length is 100 bytes, but only 2")));
  // The data ends before the last tensor does.
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 12),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("past the end of the data (12 bytes")));
}

TEST_F(SafetensorsRefusalTest, HugeHeaderLengthIsRefusedUnread) {
  EXPECT_THAT(Read(U64(std::uint64_t{1} << 62) + "{}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("exceeds the limit of 100000000")));
  EXPECT_THAT(Read(U64(kMaxSafetensorsHeaderBytes + 1) + "{}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("exceeds the limit")));
}

TEST_F(SafetensorsRefusalTest, HeaderJsonInvalid) {
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32",)", 0),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("header JSON invalid: [json.exception.parse_error")));
  EXPECT_THAT(Read(R"(["a"])", 0),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("does not start with '{'")));
  EXPECT_THAT(Read("{}\x01", 0), StatusIs(absl::StatusCode::kInvalidArgument,
                                          HasSubstr("header JSON invalid")));
  // A repeated name is ambiguous: refused, not last-one-wins.
  EXPECT_THAT(Read(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                   R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   8),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("the key \"a\" appears twice")));
  EXPECT_THAT(Read("{\"a\":" + std::string(100000, '[') + "]}", 0),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("nesting deeper than 3 levels")));
  EXPECT_THAT(
      Read(R"({"__metadata__":{"k":1}})", 0),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("__metadata__ value of \"k\" is not a string")));
  EXPECT_THAT(Read(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor a has no \"dtype\"")));
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("not a dimension: -1")));
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("end before they begin")));
}

TEST_F(SafetensorsRefusalTest, OffsetsPastEndOverlappingOrWithGaps) {
  EXPECT_THAT(
      Read(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551616]}})",
          4),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("no \"data_offsets\"")));  // 2^64 is no offset.
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 4),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("past the end of the data")));
  EXPECT_THAT(Read(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   8),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensors a and b overlap")));
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
           12),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("bytes [4, 8) of the data belong to no tensor")));
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 6),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("bytes [4, 6) of the data belong to no tensor (a gap "
                         "at the end)")));
  EXPECT_THAT(
      Read(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("hold 8 bytes, but shape [3] of F32 needs 12")));
  // A shape that claims more than any file holds, before any allocation.
  EXPECT_THAT(
      Read(
          R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
          4),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("more than 17179869184 elements")));
}

TEST_F(SafetensorsRefusalTest, IntegerBoolAndUnknownDtypes) {
  EXPECT_THAT(
      Read(R"({"step":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("tensor step has dtype I32")));
  EXPECT_THAT(
      Read(R"({"mask":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", 1),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("tensor mask has dtype BOOL")));
  EXPECT_THAT(
      Read(R"({"q":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("tensor q has unknown dtype \"Q4\"")));
}

// ---------------------------------------------------------------------------
// Refusals: .npz

class NpzRefusalTest : public TensorFilesTest {
 protected:
  absl::Status Read(const std::vector<Member>& members) {
    return ReadTensorFile(WriteBytes("bad.npz", Zip(members))).status();
  }
  static std::string F4(const std::string& shape, const std::string& data) {
    return Npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }",
        data);
  }
};

TEST_F(NpzRefusalTest, IntegerAndBoolDtypes) {
  EXPECT_THAT(
      Read({{"step.npy",
             Npy("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
                 U32(3))}}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("tensor step has dtype '<i4'")));
  EXPECT_THAT(
      Read({{"mask.npy",
             Npy("{'descr': '|b1', 'fortran_order': False, 'shape': (1,), }",
                 "\x01")}}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("tensor mask has dtype '|b1'")));
}

TEST_F(NpzRefusalTest, TruncatedCorruptOrMalformedMembers) {
  EXPECT_THAT(
      Read({{"a.npy", F4("(4,)", std::string(12, '\0'))}}),
      StatusIs(absl::StatusCode::kDataLoss,
               HasSubstr("is truncated: it holds 12 bytes, 16 expected")));
  EXPECT_THAT(Read({{"a.npy", F4("(2,)", std::string(12, '\0'))}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("more bytes than its shape [2] needs")));
  EXPECT_THAT(Read({{"a.npy", F4("(1,)", std::string(4, '\0')), false,
                     /*bad_crc=*/true}}),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("corrupt")));
  EXPECT_THAT(Read({{"a.npy", F4("(1,)", std::string(4, '\0')), true, true}}),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("corrupt")));
  EXPECT_THAT(Read({{"a.txt", "hello"}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("\"a.txt\" is not a NAME.npy array")));
  EXPECT_THAT(Read({{"a.npy", "not an npy file at all"}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("is not an NPY file")));
  EXPECT_THAT(Read({{"a.npy", F4("[1]", "")}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("shape that is not a tuple")));
  EXPECT_THAT(Read({{"a.npy", Npy("{'descr': [('x', '<f4')], 'fortran_order': "
                                  "False, 'shape': (1,), }",
                                  U32(0))}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("descr that is not a string")));
  EXPECT_THAT(Read({{"a.npy", F4("(4294967296, 4294967296)", "")}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("more than 17179869184 elements")));
  EXPECT_THAT(
      Read({{"a.npy", F4("(1,)", U32(0))}, {"a.npy", F4("(1,)", U32(0))}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("appears twice")));
  // An NPY 2.0 header length of 4 GiB - 1.
  EXPECT_THAT(
      Read({{"a.npy", std::string("\x93NUMPY\x02\x00", 8) + U32(0xffffffffu)}}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("NPY header of 4294967295 bytes")));
}

TEST_F(NpzRefusalTest, NotAZipArchive) {
  const std::string path = WriteBytes("bad.npz", "PK\x03\x04 and then nothing");
  EXPECT_THAT(ReadTensorFile(path),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("is not a readable .npz (zip) archive")));
  EXPECT_THAT(ReadTensorFile(WriteBytes("x.bin", "neither")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("neither a safetensors file nor an .npz")));
  EXPECT_THAT(ReadTensorFile(Path("missing.npz")),
              StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace weightd::tensor_files
