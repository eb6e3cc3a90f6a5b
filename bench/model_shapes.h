// The shapes of a real model's shared tensors, for the benchmarks and the
// tests that need more than one tensor of one size. In bench/, not tests/:
// the image's build context (.dockerignore) leaves tests/ out.
#ifndef WEIGHTD_BENCH_MODEL_SHAPES_H_
#define WEIGHTD_BENCH_MODEL_SHAPES_H_

#include <cstdint>
#include <vector>

namespace weightd::bench {

// ResNet-50's trainable tensors (conv weights, batch-norm scale and shift,
// the classifier): 161 tensors, 25,557,032 floats.
inline std::vector<std::vector<std::int64_t>> ResNet50Shapes() {
  std::vector<std::vector<std::int64_t>> shapes;
  auto conv = [&](std::int64_t out, std::int64_t in, std::int64_t k) {
    shapes.push_back({out, in, k, k});
    shapes.push_back({out});  // Batch-norm scale.
    shapes.push_back({out});  // Batch-norm shift.
  };
  conv(64, 3, 7);
  std::int64_t in = 64;
  const std::int64_t widths[] = {64, 128, 256, 512};
  const int blocks[] = {3, 4, 6, 3};
  for (int stage = 0; stage < 4; ++stage) {
    const std::int64_t w = widths[stage];
    for (int b = 0; b < blocks[stage]; ++b) {
      conv(w, in, 1);
      conv(w, w, 3);
      conv(4 * w, w, 1);
      if (b == 0) conv(4 * w, in, 1);  // Downsample.
      in = 4 * w;
    }
  }
  shapes.push_back({1000, 2048});
  shapes.push_back({1000});
  return shapes;
}

}  // namespace weightd::bench

#endif  // WEIGHTD_BENCH_MODEL_SHAPES_H_
