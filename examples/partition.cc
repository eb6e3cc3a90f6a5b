#include "examples/partition.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace weightd::examples {
namespace {

constexpr int kMaxDraws = 1000;

// Uniform in the open interval (0, 1), from the top 53 bits.
double Uniform(std::mt19937_64* rng) {
  return (static_cast<double>((*rng)() >> 11) + 0.5) * 0x1p-53;
}

// Standard normal (Box-Muller; the second value is dropped for simplicity).
double Normal(std::mt19937_64* rng) {
  constexpr double kTwoPi = 6.283185307179586476925;
  const double radius = std::sqrt(-2 * std::log(Uniform(rng)));
  return radius * std::cos(kTwoPi * Uniform(rng));
}

// Fisher-Yates; the modulo's bias is below 2^-48 for n up to 2^16.
void Shuffle(std::vector<int>* values, std::mt19937_64* rng) {
  for (std::size_t i = values->size(); i > 1; --i) {
    std::swap((*values)[i - 1], (*values)[(*rng)() % i]);
  }
}

// Proportions ~ Dirichlet(alpha, ..., alpha) over `n` parts.
std::vector<double> SampleDirichlet(int n, double alpha, std::mt19937_64* rng) {
  std::vector<double> parts(n);
  for (;;) {
    double sum = 0;
    for (double& part : parts) {
      part = SampleGamma(alpha, rng);
      sum += part;
    }
    // Every part can underflow to 0 for a tiny alpha: draw again.
    if (sum > 0 && std::isfinite(sum)) {
      for (double& part : parts) part /= sum;
      return parts;
    }
  }
}

// One draw of the partition (see DirichletPartition), shards unsorted.
std::vector<std::vector<int>> DrawPartition(
    const std::vector<std::vector<int>>& by_class, int workers, double alpha,
    std::mt19937_64* rng) {
  std::vector<std::vector<int>> shards(workers);
  for (std::vector<int> members : by_class) {
    Shuffle(&members, rng);
    const std::vector<double> share = SampleDirichlet(workers, alpha, rng);
    const double n = static_cast<double>(members.size());
    double cumulative = 0;
    std::size_t begin = 0;
    for (int j = 0; j < workers; ++j) {
      cumulative += share[j];
      std::size_t end =
          j == workers - 1
              ? members.size()
              : std::min(members.size(), static_cast<std::size_t>(
                                             std::llround(n * cumulative)));
      end = std::max(end, begin);
      shards[j].insert(shards[j].end(), members.begin() + begin,
                       members.begin() + end);
      begin = end;
    }
  }
  return shards;
}

}  // namespace

double SampleGamma(double shape, std::mt19937_64* rng) {
  if (shape < 1) {
    // Gamma(a) = Gamma(a + 1) * U^(1/a) (Marsaglia and Tsang, section 6).
    return SampleGamma(shape + 1, rng) * std::pow(Uniform(rng), 1 / shape);
  }
  const double d = shape - 1.0 / 3;
  const double c = 1 / std::sqrt(9 * d);
  for (;;) {
    const double x = Normal(rng);
    double v = 1 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    const double u = Uniform(rng);
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

absl::StatusOr<std::vector<std::vector<int>>> DirichletPartition(
    absl::Span<const std::uint8_t> labels, int classes, int workers,
    double alpha, std::uint64_t seed, int min_examples) {
  if (workers < 1) {
    return absl::InvalidArgumentError("a partition needs at least 1 worker");
  }
  if (!(alpha > 0 && std::isfinite(alpha))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Dirichlet alpha must be positive and finite, not ", alpha));
  }
  if (min_examples < 0 || static_cast<std::int64_t>(min_examples) * workers >
                              static_cast<std::int64_t>(labels.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(labels.size(), " examples cannot give ", workers,
                     " shards of ", min_examples, " or more"));
  }
  std::vector<std::vector<int>> by_class(classes);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] >= classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "example ", i, " has label ", labels[i], ", not below ", classes));
    }
    by_class[labels[i]].push_back(static_cast<int>(i));
  }
  std::mt19937_64 rng(seed);
  for (int draw = 0; draw < kMaxDraws; ++draw) {
    std::vector<std::vector<int>> shards =
        DrawPartition(by_class, workers, alpha, &rng);
    const bool big_enough =
        std::all_of(shards.begin(), shards.end(), [&](const auto& shard) {
          return static_cast<int>(shard.size()) >= min_examples;
        });
    if (!big_enough) continue;
    for (std::vector<int>& shard : shards) {
      std::sort(shard.begin(), shard.end());
    }
    return shards;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      kMaxDraws, " Dirichlet(", alpha, ") partitions over ", workers,
      " workers all left a shard with fewer than ", min_examples,
      " examples: use a larger alpha or fewer workers"));
}

Dataset Subset(const Dataset& data, absl::Span<const int> indices) {
  Dataset subset;
  subset.rows = data.rows;
  subset.cols = data.cols;
  subset.images.reserve(indices.size() *
                        static_cast<std::size_t>(data.pixels()));
  subset.labels.reserve(indices.size());
  for (int i : indices) {
    subset.images.insert(subset.images.end(), data.image(i),
                         data.image(i) + data.pixels());
    subset.labels.push_back(data.labels[i]);
  }
  return subset;
}

std::vector<int> ClassHistogram(const Dataset& data, int classes) {
  std::vector<int> histogram(classes);
  for (std::uint8_t label : data.labels) {
    if (label < classes) ++histogram[label];
  }
  return histogram;
}

std::string HistogramText(absl::Span<const int> histogram) {
  int total = 0;
  std::string per_class;
  for (std::size_t c = 0; c < histogram.size(); ++c) {
    total += histogram[c];
    absl::StrAppend(&per_class, c == 0 ? "" : " ", c, ":", histogram[c]);
  }
  return absl::StrCat(total, " examples; per class ", per_class);
}

}  // namespace weightd::examples
