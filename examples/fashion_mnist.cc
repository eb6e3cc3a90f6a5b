#include "examples/fashion_mnist.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "common/status_macros.h"

namespace weightd::examples {
namespace {

// Upper bound on what an IDX header may claim, checked before allocating, so
// a corrupt header fails with DATA_LOSS instead of exhausting memory. The
// Fashion-MNIST train images are 47M bytes.
constexpr std::uint64_t kMaxIdxElements = std::uint64_t{1} << 28;

// IDX magic: two zero bytes, the element type, the number of dimensions.
constexpr std::uint8_t kIdxUnsignedByte = 0x08;

struct GzCloser {
  void operator()(gzFile file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

absl::StatusOr<GzFile> OpenGz(const std::string& path) {
  errno = 0;
  GzFile file(gzopen(path.c_str(), "rb"));
  if (file == nullptr) {
    // gzopen leaves errno at 0 when it fails for lack of memory.
    if (errno == 0) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot open ", path));
    }
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  }
  // Bigger than zlib's 8 KiB default: fewer reads for the 26 MB train file.
  gzbuffer(file.get(), 1 << 17);
  return file;
}

absl::Status GzReadError(gzFile file, const std::string& path) {
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code == Z_ERRNO) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
  }
  // zlib's message starts with the path.
  return absl::DataLossError(absl::StrCat("cannot read ", message));
}

// Fills `out` from `file`. DATA_LOSS if the file ends first or is corrupt.
absl::Status ReadExactly(gzFile file, const std::string& path,
                         absl::Span<std::uint8_t> out) {
  while (!out.empty()) {
    // gzread takes an unsigned length and returns an int.
    const unsigned chunk =
        static_cast<unsigned>(std::min<std::size_t>(out.size(), 1 << 30));
    const int got = gzread(file, out.data(), chunk);
    if (got < 0) return GzReadError(file, path);
    if (got == 0) {
      return absl::DataLossError(
          absl::StrCat(path, " is truncated: ", out.size(), " bytes missing"));
    }
    out.remove_prefix(static_cast<std::size_t>(got));
  }
  return absl::OkStatus();
}

// DATA_LOSS unless `file` has no bytes left. Reading past the end is also
// what makes zlib check the gzip trailer (CRC and length).
absl::Status ExpectEnd(gzFile file, const std::string& path) {
  std::uint8_t extra;
  const int got = gzread(file, &extra, 1);
  if (got < 0) return GzReadError(file, path);
  if (got > 0) {
    return absl::DataLossError(absl::StrCat(path, " has trailing bytes"));
  }
  return absl::OkStatus();
}

// Reads the whole IDX file of unsigned bytes at `path`, which must have
// `dims.size()` dimensions; stores them in `dims` and returns the data.
absl::StatusOr<std::vector<std::uint8_t>> ReadIdx(
    const std::string& path, absl::Span<std::uint32_t> dims) {
  WEIGHTD_ASSIGN_OR_RETURN(GzFile file, OpenGz(path));
  std::array<std::uint8_t, 4> magic;
  WEIGHTD_RETURN_IF_ERROR(ReadExactly(file.get(), path, absl::MakeSpan(magic)));
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != kIdxUnsignedByte ||
      magic[3] != dims.size()) {
    return absl::DataLossError(absl::StrCat(
        path, ": bad magic number; want an IDX file of unsigned bytes of rank ",
        dims.size()));
  }
  std::uint64_t elements = 1;
  for (std::uint32_t& dim : dims) {
    std::array<std::uint8_t, 4> be;
    WEIGHTD_RETURN_IF_ERROR(ReadExactly(file.get(), path, absl::MakeSpan(be)));
    dim = std::uint32_t{be[0]} << 24 | std::uint32_t{be[1]} << 16 |
          std::uint32_t{be[2]} << 8 | std::uint32_t{be[3]};
    // The running product is <= kMaxIdxElements = 2^28 and dim < 2^32, so this
    // cannot overflow before the check.
    elements *= dim;
    if (elements > kMaxIdxElements) {
      return absl::DataLossError(absl::StrCat(path, " claims more than ",
                                              kMaxIdxElements, " elements"));
    }
  }
  std::vector<std::uint8_t> data(elements);
  WEIGHTD_RETURN_IF_ERROR(ReadExactly(file.get(), path, absl::MakeSpan(data)));
  WEIGHTD_RETURN_IF_ERROR(ExpectEnd(file.get(), path));
  return data;
}

std::string JoinPath(absl::string_view dir, absl::string_view file) {
  if (dir.empty()) return std::string(file);
  if (dir.back() == '/') return absl::StrCat(dir, file);
  return absl::StrCat(dir, "/", file);
}

}  // namespace

absl::StatusOr<Dataset> LoadFashionMnist(absl::string_view dir, Split split) {
  const absl::string_view prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string images_path =
      JoinPath(dir, absl::StrCat(prefix, "-images-idx3-ubyte.gz"));
  const std::string labels_path =
      JoinPath(dir, absl::StrCat(prefix, "-labels-idx1-ubyte.gz"));

  std::array<std::uint32_t, 3> image_dims;  // count, rows, cols
  WEIGHTD_ASSIGN_OR_RETURN(std::vector<std::uint8_t> pixels,
                           ReadIdx(images_path, absl::MakeSpan(image_dims)));
  std::array<std::uint32_t, 1> label_dims;  // count
  WEIGHTD_ASSIGN_OR_RETURN(std::vector<std::uint8_t> labels,
                           ReadIdx(labels_path, absl::MakeSpan(label_dims)));

  if (image_dims[1] == 0 || image_dims[2] == 0) {
    return absl::DataLossError(absl::StrCat(images_path, " has empty images"));
  }
  if (image_dims[0] != label_dims[0]) {
    return absl::DataLossError(
        absl::StrCat(images_path, " holds ", image_dims[0], " images but ",
                     labels_path, " holds ", label_dims[0], " labels"));
  }
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= kFashionClasses) {
      return absl::DataLossError(
          absl::StrCat(labels_path, ": label ", labels[i], " of example ", i,
                       " is not a Fashion-MNIST class (0..9)"));
    }
  }

  Dataset data;
  data.rows = static_cast<int>(image_dims[1]);
  data.cols = static_cast<int>(image_dims[2]);
  data.images.resize(pixels.size());
  std::transform(pixels.begin(), pixels.end(), data.images.begin(),
                 [](std::uint8_t p) { return p * (1.0f / 255.0f); });
  data.labels = std::move(labels);
  return data;
}

absl::StatusOr<Dataset> Shard(const Dataset& data, int index, int count) {
  if (count < 1 || index < 0 || index >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard ", index, " of ", count, " does not exist"));
  }
  Dataset shard;
  shard.rows = data.rows;
  shard.cols = data.cols;
  const int n = (data.size() - index + count - 1) / count;
  shard.images.reserve(static_cast<std::size_t>(n) * data.pixels());
  shard.labels.reserve(n);
  for (int i = index; i < data.size(); i += count) {
    shard.images.insert(shard.images.end(), data.image(i),
                        data.image(i) + data.pixels());
    shard.labels.push_back(data.labels[i]);
  }
  return shard;
}

void Truncate(Dataset* data, int n) {
  n = std::clamp(n, 0, data->size());
  data->labels.resize(n);
  data->images.resize(static_cast<std::size_t>(n) * data->pixels());
}

void ToUpperBodyLabels(Dataset* data) {
  for (std::uint8_t& label : data->labels) {
    label = (label == 0 || label == 2 || label == 4 || label == 6) ? 1 : 0;
  }
}

}  // namespace weightd::examples
