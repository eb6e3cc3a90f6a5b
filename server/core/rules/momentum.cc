// optimizer=momentum: FedAvgM (Hsu, Qi and Brown, "Measuring the Effects of
// Non-Identical Data Distribution for Federated Visual Classification",
// 2019). With u the round's update (the mean of pushed weights minus the
// value, or the mean delta):
//   m = momentum * m + u;  value += lr * m
#include "server/core/update_rule.h"

namespace weightd::core {
namespace {

class Momentum final : public Optimizer {
 public:
  Momentum(float lr, float beta) : lr_(lr), beta_(beta) {}

  int state_slots() const override { return 1; }

  void Step(const OptimizerStep& s) const override {
    float* m = s.state[0];
    const bool weights = s.kind == UpdateKind::kWeights;
    for (std::size_t i = 0; i < s.n; ++i) {
      const float u = weights ? s.value[i] - s.old[i] : s.value[i];
      m[i] = beta_ * m[i] + u;
      s.value[i] = s.old[i] + lr_ * m[i];
    }
  }

 private:
  const float lr_;
  const float beta_;
};

}  // namespace

OptimizerRule MomentumRule() {
  return {"momentum",
          "FedAvgM: server momentum on the round's update (1 float of state "
          "per element)",
          {{"lr", 1.0, 1e-9, 1e6, "server step size"},
           {"momentum", 0.9, 0.0, 0.999999, "momentum coefficient (beta)"}},
          [](const RuleParams& p) -> std::unique_ptr<const Optimizer> {
            return std::make_unique<Momentum>(
                static_cast<float>(p.at("lr")),
                static_cast<float>(p.at("momentum")));
          }};
}

}  // namespace weightd::core
