#include "examples/mlp.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace weightd::examples {
namespace {

// Eigen is column-major, so a row-major [rows, cols] buffer reads as the
// [cols, rows] transpose. With examples as columns, the row-major
// [inputs, hidden] hidden weights are thus exactly the [hidden, inputs]
// matrix W1 of hidden = relu(W1 x + b1), and likewise for the head.
using Matrix = Eigen::MatrixXf;
using MatrixMap = Eigen::Map<Matrix>;
using ConstMatrixMap = Eigen::Map<const Matrix>;
using VectorMap = Eigen::Map<Eigen::VectorXf>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;

// Examples per forward pass in Evaluate: bounds the activations' memory.
constexpr int kEvalChunk = 1024;

struct ConstParams {
  ConstMatrixMap w1;  // [hidden, inputs]
  ConstVectorMap b1;  // [hidden]
  ConstMatrixMap w2;  // [classes, hidden]
  ConstVectorMap b2;  // [classes]
};

ConstParams ViewParams(const MlpOptions& options, const float* w1,
                       const float* b1, const float* w2, const float* b2) {
  return {ConstMatrixMap(w1, options.hidden, options.inputs),
          ConstVectorMap(b1, options.hidden),
          ConstMatrixMap(w2, options.classes, options.hidden),
          ConstVectorMap(b2, options.classes)};
}

// Fills `hidden` ([hidden, n], after ReLU) and `logits` ([classes, n]) for
// the n examples in the columns of `x`.
void Forward(const ConstParams& p, const Eigen::Ref<const Matrix>& x,
             Matrix* hidden, Matrix* logits) {
  hidden->noalias() = p.w1 * x;
  hidden->colwise() += p.b1;
  *hidden = hidden->cwiseMax(0.0f);
  logits->noalias() = p.w2 * *hidden;
  logits->colwise() += p.b2;
}

// Replaces each column of `logits` by its softmax, returns the summed
// cross-entropy against `labels` (one per column) and adds the number of
// columns whose argmax is their label to `*correct`.
double SoftmaxCrossEntropy(const std::uint8_t* labels, Matrix* logits,
                           int* correct) {
  double loss = 0;
  for (Eigen::Index j = 0; j < logits->cols(); ++j) {
    auto column = logits->col(j);
    Eigen::Index argmax;
    // Shifting by the max keeps exp() from overflowing.
    const float max = column.maxCoeff(&argmax);
    const float label_logit = column(labels[j]);
    column = (column.array() - max).exp();
    const float sum = column.sum();
    loss += std::log(sum) - (label_logit - max);
    column /= sum;
    if (argmax == labels[j]) ++*correct;
  }
  return loss;
}

absl::Status CheckLabel(const Dataset& data, int index, int classes) {
  if (data.labels[index] >= classes) {
    return absl::InvalidArgumentError(
        absl::StrCat("label ", data.labels[index], " of example ", index,
                     " is not below the model's ", classes, " classes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Mlp>> Mlp::Create(const MlpOptions& options) {
  if (options.inputs < 1 || options.hidden < 1 || options.classes < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "an MLP needs >= 1 inputs, >= 1 hidden units and >= 2 classes, not ",
        options.inputs, ", ", options.hidden, " and ", options.classes));
  }
  return std::unique_ptr<Mlp>(new Mlp(options));
}

Mlp::Mlp(const MlpOptions& options)
    : options_(options),
      hidden_weights_(static_cast<std::size_t>(options.inputs) *
                      options.hidden),
      hidden_bias_(options.hidden, 0.0f),
      head_weights_(static_cast<std::size_t>(options.hidden) * options.classes),
      head_bias_(options.classes, 0.0f) {
  // libstdc++'s normal_distribution is deterministic for a given engine
  // state, so a seed always yields the same model with this toolchain.
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> hidden_init(
      0.0f, std::sqrt(2.0f / static_cast<float>(options.inputs)));
  for (float& w : hidden_weights_) w = hidden_init(rng);
  std::normal_distribution<float> head_init(
      0.0f, std::sqrt(2.0f / static_cast<float>(options.hidden)));
  for (float& w : head_weights_) w = head_init(rng);
}

absl::Status Mlp::CheckData(const Dataset& data) const {
  if (data.pixels() != options_.inputs) {
    return absl::InvalidArgumentError(
        absl::StrCat("examples have ", data.pixels(), " pixels but the model ",
                     options_.inputs, " inputs"));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> Mlp::TrainStep(const Dataset& data,
                                      absl::Span<const int> batch,
                                      float learning_rate) {
  WEIGHTD_RETURN_IF_ERROR(CheckData(data));
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  const int n = static_cast<int>(batch.size());
  const int inputs = options_.inputs;

  // Gather the batch into contiguous columns.
  Matrix x(inputs, n);
  std::vector<std::uint8_t> labels(n);
  for (int j = 0; j < n; ++j) {
    const int index = batch[j];
    if (index < 0 || index >= data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "example ", index, " is outside a dataset of ", data.size()));
    }
    WEIGHTD_RETURN_IF_ERROR(CheckLabel(data, index, options_.classes));
    std::memcpy(x.col(j).data(), data.image(index), inputs * sizeof(float));
    labels[j] = data.labels[index];
  }

  Matrix hidden;
  Matrix probs;
  Forward(ViewParams(options_, hidden_weights_.data(), hidden_bias_.data(),
                     head_weights_.data(), head_bias_.data()),
          x, &hidden, &probs);
  int correct = 0;
  const double loss = SoftmaxCrossEntropy(labels.data(), &probs, &correct) / n;

  // d(mean loss)/d(logits) = (softmax - one_hot(label)) / n, in place.
  for (int j = 0; j < n; ++j) probs(labels[j], j) -= 1.0f;
  probs *= 1.0f / static_cast<float>(n);
  const Matrix& d_logits = probs;

  MatrixMap w1(hidden_weights_.data(), options_.hidden, inputs);
  VectorMap b1(hidden_bias_.data(), options_.hidden);
  MatrixMap w2(head_weights_.data(), options_.classes, options_.hidden);
  VectorMap b2(head_bias_.data(), options_.classes);

  // Back through the head (before updating it), then through the ReLU.
  Matrix d_hidden = w2.transpose() * d_logits;
  d_hidden = (hidden.array() > 0.0f).select(d_hidden, 0.0f);

  w2.noalias() -= learning_rate * d_logits * hidden.transpose();
  b2 -= learning_rate * d_logits.rowwise().sum();
  w1.noalias() -= learning_rate * d_hidden * x.transpose();
  b1 -= learning_rate * d_hidden.rowwise().sum();
  return loss;
}

absl::StatusOr<Evaluation> Mlp::Evaluate(const Dataset& data) const {
  WEIGHTD_RETURN_IF_ERROR(CheckData(data));
  if (data.size() == 0) return absl::InvalidArgumentError("empty dataset");
  for (int i = 0; i < data.size(); ++i) {
    WEIGHTD_RETURN_IF_ERROR(CheckLabel(data, i, options_.classes));
  }

  const ConstParams params =
      ViewParams(options_, hidden_weights_.data(), hidden_bias_.data(),
                 head_weights_.data(), head_bias_.data());
  Matrix hidden;
  Matrix probs;
  double loss = 0;
  int correct = 0;
  for (int start = 0; start < data.size(); start += kEvalChunk) {
    const int n = std::min(kEvalChunk, data.size() - start);
    // Stored images are already the columns of a [inputs, n] matrix.
    Forward(params, ConstMatrixMap(data.image(start), options_.inputs, n),
            &hidden, &probs);
    loss += SoftmaxCrossEntropy(data.labels.data() + start, &probs, &correct);
  }
  return Evaluation{.accuracy = static_cast<double>(correct) / data.size(),
                    .loss = loss / data.size()};
}

std::vector<TensorRef> Mlp::Tensors(absl::string_view hidden_prefix,
                                    absl::string_view head_prefix) {
  const std::int64_t inputs = options_.inputs;
  const std::int64_t hidden = options_.hidden;
  const std::int64_t classes = options_.classes;
  return {
      {absl::StrCat(hidden_prefix, "/w"),
       {inputs, hidden},
       absl::MakeSpan(hidden_weights_)},
      {absl::StrCat(hidden_prefix, "/b"),
       {hidden},
       absl::MakeSpan(hidden_bias_)},
      {absl::StrCat(head_prefix, "/w"),
       {hidden, classes},
       absl::MakeSpan(head_weights_)},
      {absl::StrCat(head_prefix, "/b"), {classes}, absl::MakeSpan(head_bias_)},
  };
}

absl::StatusOr<std::unique_ptr<BatchSampler>> BatchSampler::Create(
    int size, int batch, std::uint64_t seed) {
  if (batch < 1 || batch > size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a batch of ", batch, " cannot be drawn from ", size, " examples"));
  }
  return std::unique_ptr<BatchSampler>(new BatchSampler(size, batch, seed));
}

BatchSampler::BatchSampler(int size, int batch, std::uint64_t seed)
    : batch_(batch), order_(size), rng_(seed) {
  std::iota(order_.begin(), order_.end(), 0);
  std::shuffle(order_.begin(), order_.end(), rng_);
}

absl::Span<const int> BatchSampler::Next() {
  if (next_ + batch_ > order_.size()) {
    std::shuffle(order_.begin(), order_.end(), rng_);
    next_ = 0;
  }
  absl::Span<const int> batch(order_.data() + next_, batch_);
  next_ += batch_;
  return batch;
}

}  // namespace weightd::examples
