// aggregator=median and aggregator=trimmed_mean: coordinate-wise, robust to
// a minority of bad contributions (Yin et al., "Byzantine-Robust Distributed
// Learning: Towards Optimal Statistical Rates", ICML 2018). Every
// contribution counts once: push weights are ignored, since a bad worker
// chooses its own.
//   median: of an even count, the mean of the two middle values.
//   trimmed_mean: drops the floor(trim * m) smallest and as many largest of
//   the m values, and averages the rest (at least one stays).
#include <algorithm>
#include <cmath>
#include <vector>

#include "server/core/update_rule.h"

namespace weightd::core {
namespace {

// A strict weak order with NaN above everything (only a server run with
// --allow_non_finite lets NaN in).
bool Less(float a, float b) {
  return a < b || (std::isnan(b) && !std::isnan(a));
}

class OrderStatistic final : public Aggregator {
 public:
  // trim < 0: the median.
  explicit OrderStatistic(double trim) : trim_(trim) {}

  bool needs_round() const override { return true; }

  void Combine(const AggregateInput& in, float* out,
               absl::BitGenRef) const override {
    const std::size_t m = in.values.size();
    std::vector<float> column(m);
    // trim < 0.5 (its range): at least one value stays.
    const std::size_t drop =
        trim_ < 0 ? 0 : static_cast<std::size_t>(std::floor(trim_ * m));
    for (std::size_t i = 0; i < in.n; ++i) {
      for (std::size_t j = 0; j < m; ++j) column[j] = in.values[j][i];
      if (trim_ < 0) {
        out[i] = Median(column);
        continue;
      }
      std::sort(column.begin(), column.end(), Less);
      double sum = 0;
      for (std::size_t j = drop; j < m - drop; ++j) sum += column[j];
      out[i] = static_cast<float>(sum / static_cast<double>(m - 2 * drop));
    }
  }

 private:
  static float Median(std::vector<float>& column) {
    const std::size_t m = column.size();
    auto mid = column.begin() + m / 2;
    std::nth_element(column.begin(), mid, column.end(), Less);
    if (m % 2 == 1) return *mid;
    const float below = *std::max_element(column.begin(), mid, Less);
    return static_cast<float>((static_cast<double>(below) + *mid) / 2);
  }

  const double trim_;
};

}  // namespace

AggregatorRule MedianRule() {
  return {"median",
          "coordinate-wise median, each contribution once (needs a round; "
          "holds every contribution: participants x tensor bytes)",
          {},
          [](const RuleParams&) -> std::unique_ptr<const Aggregator> {
            return std::make_unique<OrderStatistic>(-1);
          }};
}

AggregatorRule TrimmedMeanRule() {
  return {"trimmed_mean",
          "coordinate-wise trimmed mean, each contribution once (needs a "
          "round; holds every contribution: participants x tensor bytes)",
          {{"trim", 0.1, 0.0, 0.499999,
            "fraction dropped from each side (floor(trim * contributions))"}},
          [](const RuleParams& p) -> std::unique_ptr<const Aggregator> {
            return std::make_unique<OrderStatistic>(p.at("trim"));
          }};
}

}  // namespace weightd::core
