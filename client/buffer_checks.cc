#include "client/buffer_checks.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace weightd {

std::uint64_t ElementsOf(const std::vector<std::int64_t>& shape) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) n *= d < 0 ? 0 : static_cast<std::uint64_t>(d);
  return n;
}

absl::Status CheckBufferFitsShape(const TensorRef& tensor) {
  const std::uint64_t needed = ElementsOf(tensor.shape);
  if (tensor.data.size() == needed) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("buffer of tensor ", tensor.name, " holds ",
                   tensor.data.size(), " floats; shape [",
                   absl::StrJoin(tensor.shape, ","), "] needs ", needed));
}

absl::Status CheckBufferHolds(const TensorRef& tensor, std::uint64_t needed) {
  if (tensor.data.size() == needed) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("buffer of tensor ", tensor.name, " holds ",
                   tensor.data.size(), " floats; its shape needs ", needed));
}

}  // namespace weightd
