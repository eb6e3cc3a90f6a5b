// A one-hidden-layer perceptron trained by mini-batch SGD, with its
// parameters in flat buffers that a worker can share through weightd.
#ifndef WEIGHTD_EXAMPLES_MLP_H_
#define WEIGHTD_EXAMPLES_MLP_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/client.h"
#include "examples/fashion_mnist.h"

namespace weightd::examples {

struct MlpOptions {
  int inputs = 784;
  int hidden = 128;
  int classes = 10;
  // Seeds the He initialisation; equal seeds give equal models.
  std::uint64_t seed = 1;
};

struct Evaluation {
  double accuracy = 0;  // Fraction of examples whose argmax is the label.
  double loss = 0;      // Mean softmax cross-entropy, in nats.
};

// inputs -> hidden (ReLU) -> classes (softmax), trained on softmax
// cross-entropy. The parameters are four flat row-major buffers:
//   hidden weights [inputs, hidden]   hidden bias [hidden]
//   head weights   [hidden, classes]  head bias   [classes]
// Tensors() exposes them as weightd tensors; whatever is written into those
// spans (e.g. by Client::PushPull) becomes the model.
//
// Thread safety: none; use from one thread at a time. Neither copyable nor
// movable, so spans from Tensors() stay valid for the model's lifetime.
class Mlp {
 public:
  // He initialisation: weights normal with mean 0 and variance 2 / fan_in,
  // biases 0.
  // INVALID_ARGUMENT unless inputs >= 1, hidden >= 1 and classes >= 2.
  static absl::StatusOr<std::unique_ptr<Mlp>> Create(const MlpOptions& options);

  Mlp(const Mlp&) = delete;
  Mlp& operator=(const Mlp&) = delete;

  // One SGD step with `learning_rate` on the examples `batch` (indices into
  // `data`, repeats allowed). Returns the batch's mean cross-entropy before
  // the update. INVALID_ARGUMENT, and no update, if `batch` is empty, an
  // index is out of range, data.pixels() != inputs or a label >= classes.
  absl::StatusOr<double> TrainStep(const Dataset& data,
                                   absl::Span<const int> batch,
                                   float learning_rate);

  // Accuracy and mean cross-entropy over all of `data`. INVALID_ARGUMENT if
  // `data` is empty, data.pixels() != inputs or a label >= classes.
  absl::StatusOr<Evaluation> Evaluate(const Dataset& data) const;

  // The parameters as {hidden_prefix}/w, {hidden_prefix}/b, {head_prefix}/w,
  // {head_prefix}/b, in that order, with the shapes above. Models with equal
  // `inputs` and `hidden` can share the hidden layer under one prefix while
  // keeping their heads apart under different ones.
  std::vector<TensorRef> Tensors(absl::string_view hidden_prefix,
                                 absl::string_view head_prefix);

 private:
  explicit Mlp(const MlpOptions& options);

  absl::Status CheckData(const Dataset& data) const;

  MlpOptions options_;
  std::vector<float> hidden_weights_;
  std::vector<float> hidden_bias_;
  std::vector<float> head_weights_;
  std::vector<float> head_bias_;
};

// An endless stream of mini-batches of indices into a dataset of `size`
// examples. Each pass over the data follows a fresh seeded permutation; the
// size % batch examples left over at the end of a pass are skipped (other
// ones each pass).
//
// Thread safety: none. Not copyable.
class BatchSampler {
 public:
  // INVALID_ARGUMENT unless 1 <= batch <= size.
  static absl::StatusOr<std::unique_ptr<BatchSampler>> Create(
      int size, int batch, std::uint64_t seed);

  BatchSampler(const BatchSampler&) = delete;
  BatchSampler& operator=(const BatchSampler&) = delete;

  // The next `batch` indices; valid until the next call.
  absl::Span<const int> Next();

 private:
  BatchSampler(int size, int batch, std::uint64_t seed);

  int batch_;
  std::vector<int> order_;
  std::size_t next_ = 0;  // Start of the next batch in order_.
  std::mt19937_64 rng_;
};

}  // namespace weightd::examples

#endif  // WEIGHTD_EXAMPLES_MLP_H_
