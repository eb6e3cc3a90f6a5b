// aggregator=clipped_mean: each contribution's update (pushed weights minus
// the value, or the pushed delta) is scaled to an L2 norm of at most
// clip_norm over the whole tensor (this server's part of it, if split),
// then the m updates are averaged, each counting once, and Gaussian noise
// of standard deviation noise_multiplier * clip_norm / m is added to every
// element (DP-FedAvg's central mechanism, McMahan et al., "Learning
// Differentially Private Recurrent Language Models", ICLR 2018). What that
// gives in (epsilon, delta) over a training run is for an accountant to
// compute from these parameters (docs/algorithms.md); the server claims
// nothing. Only complete contributions count.
#include <algorithm>
#include <cmath>

#include "absl/random/distributions.h"
#include "server/core/update_rule.h"

namespace weightd::core {
namespace {

class ClippedMean final : public Aggregator {
 public:
  ClippedMean(double clip, double noise) : clip_(clip), noise_(noise) {}

  bool scales_whole() const override { return true; }

  std::vector<double> Scales(const AggregateInput& whole) const override {
    std::vector<double> scales;
    const bool weights = whole.kind == UpdateKind::kWeights;
    for (const float* x : whole.values) {
      double sum = 0;
      for (std::size_t i = 0; i < whole.n; ++i) {
        const double u = weights ? double{x[i]} - whole.old[i] : x[i];
        sum += u * u;
      }
      const double norm = std::sqrt(sum);
      scales.push_back(norm > clip_ ? clip_ / norm : 1.0);
    }
    return scales;
  }

  void Combine(const AggregateInput& in, float* out,
               absl::BitGenRef rng) const override {
    const auto m = static_cast<double>(in.values.size());
    const double stddev = noise_ * clip_ / m;
    const bool weights = in.kind == UpdateKind::kWeights;
    for (std::size_t i = 0; i < in.n; ++i) {
      double sum = 0;
      for (std::size_t j = 0; j < in.values.size(); ++j) {
        const double u =
            weights ? double{in.values[j][i]} - in.old[i] : in.values[j][i];
        sum += in.scales[j] * u;
      }
      double update = sum / m;
      if (stddev > 0) update += absl::Gaussian<double>(rng, 0.0, stddev);
      out[i] = static_cast<float>(weights ? in.old[i] + update : update);
    }
  }

 private:
  const double clip_;
  const double noise_;
};

}  // namespace

AggregatorRule ClippedMeanRule() {
  return {"clipped_mean",
          "mean of the updates clipped to clip_norm, each contribution once, "
          "plus Gaussian noise (noise_multiplier * clip_norm / "
          "contributions); holds every contribution: participants x tensor "
          "bytes",
          {{"clip_norm", 1.0, 1e-12, 1e12, "L2 bound of each update"},
           {"noise_multiplier", 0.0, 0.0, 1e6,
            "noise standard deviation in units of clip_norm / contributions "
            "(0: none)"}},
          [](const RuleParams& p) -> std::unique_ptr<const Aggregator> {
            return std::make_unique<ClippedMean>(p.at("clip_norm"),
                                                 p.at("noise_multiplier"));
          }};
}

}  // namespace weightd::core
