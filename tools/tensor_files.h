// Files of named tensors that other tools load: safetensors (PyTorch,
// Hugging Face) and numpy's .npz. weightctl export writes them from the
// shared weights and weightctl import reads them back (tools/ctl_transfer.cc).
// No gRPC and no weightd types: a file is bytes on one side, NamedTensors on
// the other.
//
// Formats, as their own specifications state them:
//   safetensors  an 8-byte little-endian header length N, N bytes of JSON
//                ({name: {"dtype", "shape", "data_offsets": [begin, end]},
//                "__metadata__": {string: string}}, padded with spaces), then
//                the tensors' raw little-endian bytes; offsets are relative
//                to the end of the header, and the tensors cover that data
//                exactly, without overlap or gap.
//                https://github.com/huggingface/safetensors#format
//   .npz         a zip archive of NAME.npy members (numpy.savez stores them,
//                numpy.savez_compressed deflates them), each an NPY file:
//                https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
//
// Values are float32 on this side. Reading converts float64, float16 and
// bfloat16 to float32 (NamedTensor::source_dtype says from what) and refuses
// every other dtype. Reading never trusts the file: every length, offset
// and shape is checked against the bytes actually there before anything is
// allocated or copied, so a truncated or malicious file is an error, not a
// crash or a huge allocation.
//
// Thread safety: the functions share no state; call them from any thread.
#ifndef WEIGHTD_TOOLS_TENSOR_FILES_H_
#define WEIGHTD_TOOLS_TENSOR_FILES_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace weightd::tensor_files {

// The safetensors header's size limit, as the reference implementation's
// (MAX_HEADER_SIZE): a larger length is refused before it is read.
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
// A tensor read from a file may have at most this many elements (64 GiB
// of float32): what a shape may claim before its bytes are even looked at.
inline constexpr std::uint64_t kMaxElements = std::uint64_t{1} << 34;

struct NamedTensor {
  std::string name;
  // Row-major dimensions; empty for a scalar (one value). A file may hold
  // dimensions of 0 (no values); weightd itself needs every dimension >= 1.
  std::vector<std::int64_t> shape;
  // Product of `shape` values, row-major (C order).
  std::vector<float> values;
  // The dtype the values had in the file, in safetensors' spelling: "F32",
  // or "F64", "F16", "BF16" for values converted to float32. Writing
  // ignores it (always F32).
  std::string source_dtype = "F32";
};

enum class TensorFileFormat { kSafetensors, kNpz };

// "safetensors" or "npz".
absl::string_view FormatName(TensorFileFormat format);

// The format of --format `flag` ("safetensors", "npz"), else of `path`'s
// extension (.safetensors, .npz). INVALID_ARGUMENT, saying what to give,
// for an unknown flag value or, without one, another extension.
absl::StatusOr<TensorFileFormat> FormatFor(absl::string_view flag,
                                           absl::string_view path);

struct TensorFile {
  TensorFileFormat format = TensorFileFormat::kSafetensors;
  // In the file's order: by data offset (safetensors), by member (.npz).
  std::vector<NamedTensor> tensors;
  // safetensors' "__metadata__" (an .npz has none).
  std::map<std::string, std::string> metadata;
};

// Write `tensors` to `path` as a file of float32 tensors, in the order
// given. The file appears whole or not at all: it is written as PATH.tmp,
// flushed to disk, then renamed over `path` (PATH.tmp is removed on
// failure). INVALID_ARGUMENT for an empty or repeated name, a negative
// dimension or values that do not match the shape (nothing written);
// the errno's code (e.g. RESOURCE_EXHAUSTED for a full disk, PERMISSION_
// DENIED) naming the file for I/O errors.
//
// WriteSafetensors: `metadata` becomes "__metadata__" (omitted if empty).
absl::Status WriteSafetensors(
    const std::string& path, absl::Span<const NamedTensor> tensors,
    const std::map<std::string, std::string>& metadata);
// WriteNpz: member NAME.npy per tensor, stored uncompressed (as
// numpy.savez), NPY format 1.0, '<f4', C order, data 64-byte aligned.
absl::Status WriteNpz(const std::string& path,
                      absl::Span<const NamedTensor> tensors);

// Read every tensor of the file at `path`. Errors name the file and, where
// one is at fault, the tensor:
//   NOT_FOUND / PERMISSION_DENIED ...  the file cannot be opened or read;
//   DATA_LOSS         it ends before what its header describes (truncated),
//                     or a compressed member does not inflate;
//   INVALID_ARGUMENT  anything else that breaks the format: a header length
//                     over kMaxSafetensorsHeaderBytes, header JSON that does
//                     not parse or lacks a field, a repeated name, offsets
//                     past the data, overlapping or leaving a gap, a size
//                     other than the shape's, a shape over kMaxElements, a
//                     member that is not NAME.npy; and a dtype that is not
//                     float32, float64, float16 or bfloat16 (integers,
//                     bool, ...), naming the tensor and the dtype.
absl::StatusOr<TensorFile> ReadSafetensors(const std::string& path);
absl::StatusOr<TensorFile> ReadNpz(const std::string& path);
// ReadSafetensors or ReadNpz, by the file's first bytes (a zip archive is
// an .npz), else by its extension. INVALID_ARGUMENT if neither says.
absl::StatusOr<TensorFile> ReadTensorFile(const std::string& path);

}  // namespace weightd::tensor_files

#endif  // WEIGHTD_TOOLS_TENSOR_FILES_H_
