// Fashion-MNIST in its original gzipped IDX form, and the ways the demo
// worker slices and relabels it.
//
// All functions are thread-compatible: they touch only their arguments.
#ifndef WEIGHTD_EXAMPLES_FASHION_MNIST_H_
#define WEIGHTD_EXAMPLES_FASHION_MNIST_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd::examples {

// Fashion-MNIST labels are 0..9: T-shirt/top, Trouser, Pullover, Dress, Coat,
// Sandal, Shirt, Sneaker, Bag, Ankle boot.
inline constexpr int kFashionClasses = 10;

// Labeled grayscale images held in memory.
struct Dataset {
  int rows = 0;
  int cols = 0;
  // size() images of rows * cols pixels, one after the other, each row-major,
  // scaled from 0..255 to [0, 1].
  std::vector<float> images;
  std::vector<std::uint8_t> labels;

  int size() const { return static_cast<int>(labels.size()); }
  int pixels() const { return rows * cols; }
  // The pixels of example `i` (0 <= i < size()).
  const float* image(int i) const {
    return images.data() + static_cast<std::size_t>(i) * pixels();
  }
};

enum class Split {
  kTrain,  // train-{images-idx3,labels-idx1}-ubyte.gz: 60000 examples.
  kTest,   // t10k-{images-idx3,labels-idx1}-ubyte.gz: 10000 examples.
};

// Reads the images and labels of `split` from the gzipped IDX files in `dir`.
// Errors: NOT_FOUND if a file is missing (the errno-derived code for other
// open or read failures); DATA_LOSS if a file is not a well-formed IDX file
// of the expected kind (magic number, dimensions, length, trailing bytes, a
// label above 9) or the two files disagree on the count.
absl::StatusOr<Dataset> LoadFashionMnist(absl::string_view dir, Split split);

// Shard `index` of `count`: the examples i of `data` with i % count == index,
// in their original order. The shards of 0..count-1 partition `data`; striding
// (rather than cutting contiguous blocks) keeps each shard's class mix close
// to the whole even if the file were sorted by class.
// INVALID_ARGUMENT unless 0 <= index < count.
absl::StatusOr<Dataset> Shard(const Dataset& data, int index, int count);

// Keeps the first `n` examples of `*data`, n clamped to [0, size()].
void Truncate(Dataset* data, int n);

// The "upper-body garment" task: 2 classes.
inline constexpr int kUpperBodyClasses = 2;

// Relabels `*data` (Fashion-MNIST labels) for the upper-body task: 1 for
// T-shirt/top (0), Pullover (2), Coat (4) and Shirt (6); 0 for the rest.
void ToUpperBodyLabels(Dataset* data);

}  // namespace weightd::examples

#endif  // WEIGHTD_EXAMPLES_FASHION_MNIST_H_
