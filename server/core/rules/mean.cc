// aggregator=mean: the mean of the contributions weighted by their pushes'
// weights (FedAvg's). A sync round sums it as chunks arrive, in constant
// memory (SharedTensor); Combine serves a push applied alone.
#include "server/core/update_rule.h"

namespace weightd::core {
namespace {

class Mean final : public Aggregator {
 public:
  bool buffered() const override { return false; }

  void Combine(const AggregateInput& in, float* out,
               absl::BitGenRef) const override {
    double total = 0;
    for (double w : in.weights) total += w;
    for (std::size_t i = 0; i < in.n; ++i) {
      double sum = 0;
      for (std::size_t j = 0; j < in.values.size(); ++j) {
        sum += in.weights[j] * in.values[j][i];
      }
      out[i] = static_cast<float>(sum / total);
    }
  }
};

}  // namespace

AggregatorRule MeanRule() {
  return {"mean",
          "mean weighted by the pushes' weights (sample counts); constant "
          "memory",
          {},
          [](const RuleParams&) -> std::unique_ptr<const Aggregator> {
            return std::make_unique<Mean>();
          }};
}

}  // namespace weightd::core
