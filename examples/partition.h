// How a job's training set is split over its workers: the demo's IID
// shards (fashion_mnist.h, Shard) or label-skewed ones drawn from a
// Dirichlet distribution, for the non-IID experiments of issue 17
// (bench/experiments.py).
//
// All functions are thread-compatible: they touch only their arguments.
// Every random draw goes through std::mt19937_64 (whose output the C++
// standard fixes) and code of this file, never std::*_distribution (whose
// output it does not), so a seed gives the same partition on every machine
// and standard library: each worker of a job computes the whole partition
// and keeps its own shard, with no coordination.
#ifndef WEIGHTD_EXAMPLES_PARTITION_H_
#define WEIGHTD_EXAMPLES_PARTITION_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "examples/fashion_mnist.h"

namespace weightd::examples {

// A draw from Gamma(shape, 1) (Marsaglia and Tsang 2000; for shape < 1,
// Gamma(shape + 1) * U^(1 / shape)). shape > 0.
double SampleGamma(double shape, std::mt19937_64* rng);

// Label-skewed shards: for each class, its examples (in a seeded random
// order) are cut into `workers` consecutive runs whose lengths follow
// proportions p ~ Dirichlet(alpha, ..., alpha), drawn afresh per class, and
// run j goes to shard j. This is the per-class scheme of Yurochkin et al.
// 2019 and Wang et al. 2020 (FedMA), often credited to Hsu et al. 2019
// (who draw a class mix per client instead). Small alpha: each shard holds
// few classes (alpha = 0.1: mostly one or two); large alpha: close to IID.
//
// A partition in which some shard holds fewer than `min_examples` examples
// is drawn again (up to 1000 times), as in NIID-Bench (Li et al. 2022),
// so that every worker can fill its mini-batches.
//
// Returns `workers` lists of indices into `labels`, each in increasing
// order; together they hold every index exactly once. The result depends
// only on the arguments. INVALID_ARGUMENT unless workers >= 1, alpha > 0
// and finite, every label < classes, and min_examples * workers <=
// labels.size(); FAILED_PRECONDITION if 1000 draws all left a shard below
// min_examples.
absl::StatusOr<std::vector<std::vector<int>>> DirichletPartition(
    absl::Span<const std::uint8_t> labels, int classes, int workers,
    double alpha, std::uint64_t seed, int min_examples);

// The examples of `data` at `indices` (each in [0, data.size())), in that
// order.
Dataset Subset(const Dataset& data, absl::Span<const int> indices);

// How many examples of `data` carry each label 0..classes-1 (labels at or
// above `classes` are not counted).
std::vector<int> ClassHistogram(const Dataset& data, int classes);

// "N examples; per class 0:n0 1:n1 ...", for the worker's log.
std::string HistogramText(absl::Span<const int> histogram);

}  // namespace weightd::examples

#endif  // WEIGHTD_EXAMPLES_PARTITION_H_
