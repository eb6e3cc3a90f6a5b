// optimizer=adagrad|adam|yogi: the adaptive server optimizers of Reddi et
// al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2. With u
// the round's update (the mean of pushed weights minus the value, or the
// mean delta):
//   m = beta1 * m + (1 - beta1) * u
//   adagrad: v = v + u^2
//   adam:    v = beta2 * v + (1 - beta2) * u^2
//   yogi:    v = v - (1 - beta2) * u^2 * sign(v - u^2)
//   value += lr * m / (sqrt(v) + tau)
// m starts at 0 and v at tau^2 (the paper's v_{-1} >= tau^2); no bias
// correction, as in the paper. 2 floats of state per element.
#include <cmath>

#include "server/core/update_rule.h"

namespace weightd::core {
namespace {

enum class Variant { kAdagrad, kAdam, kYogi };

template <Variant kVariant>
class Adaptive final : public Optimizer {
 public:
  Adaptive(float lr, float beta1, float beta2, float tau)
      : lr_(lr), beta1_(beta1), beta2_(beta2), tau_(tau) {}

  int state_slots() const override { return 2; }
  float initial_state(int slot) const override {
    return slot == 1 ? tau_ * tau_ : 0.0f;
  }

  void Step(const OptimizerStep& s) const override {
    float* m = s.state[0];
    float* v = s.state[1];
    const bool weights = s.kind == UpdateKind::kWeights;
    for (std::size_t i = 0; i < s.n; ++i) {
      const float u = weights ? s.value[i] - s.old[i] : s.value[i];
      const float u2 = u * u;
      m[i] = beta1_ * m[i] + (1.0f - beta1_) * u;
      if constexpr (kVariant == Variant::kAdagrad) {
        v[i] = v[i] + u2;
      } else if constexpr (kVariant == Variant::kAdam) {
        v[i] = beta2_ * v[i] + (1.0f - beta2_) * u2;
      } else {
        const float d = v[i] - u2;
        const float sign = d > 0 ? 1.0f : (d < 0 ? -1.0f : 0.0f);
        v[i] = v[i] - (1.0f - beta2_) * u2 * sign;
      }
      s.value[i] = s.old[i] + lr_ * m[i] / (std::sqrt(v[i]) + tau_);
    }
  }

 private:
  const float lr_;
  const float beta1_;
  const float beta2_;
  const float tau_;
};

template <Variant kVariant>
OptimizerRule AdaptiveRule(const char* name, const char* doc, double lr) {
  std::vector<RuleParam> params = {
      {"lr", lr, 1e-9, 1e6, "server step size (eta)"},
      {"beta1", 0.9, 0.0, 0.999999, "first-moment decay"},
      {"tau", 1e-3, 1e-12, 1e3, "adaptivity: added to sqrt(v)"}};
  if (kVariant != Variant::kAdagrad) {
    params.insert(params.begin() + 2, RuleParam{"beta2", 0.99, 0.0, 0.999999,
                                                "second-moment decay"});
  }
  return {name, doc, std::move(params),
          [](const RuleParams& p) -> std::unique_ptr<const Optimizer> {
            auto get = [&p](const char* key) {
              auto it = p.find(key);
              return it == p.end() ? 0.0f : static_cast<float>(it->second);
            };
            return std::make_unique<Adaptive<kVariant>>(
                get("lr"), get("beta1"), get("beta2"), get("tau"));
          }};
}

}  // namespace

OptimizerRule AdagradRule() {
  return AdaptiveRule<Variant::kAdagrad>(
      "adagrad", "FedAdagrad (Reddi et al. 2021), 2 floats of state", 0.1);
}
OptimizerRule AdamRule() {
  return AdaptiveRule<Variant::kAdam>(
      "adam", "FedAdam (Reddi et al. 2021), 2 floats of state", 0.01);
}
OptimizerRule YogiRule() {
  return AdaptiveRule<Variant::kYogi>(
      "yogi", "FedYogi (Reddi et al. 2021), 2 floats of state", 0.01);
}

}  // namespace weightd::core
