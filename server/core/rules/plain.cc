// optimizer=plain: no server optimizer (FedAvg). A round's mean of pushed
// weights becomes the value; a mean delta is added times lr; a push of
// weights applied alone (async) moves the value a fraction `mix` of the way.
#include "server/core/update_rule.h"

namespace weightd::core {
namespace {

class Plain final : public Optimizer {
 public:
  Plain(float lr, float mix) : lr_(lr), mix_(mix) {}

  void Step(const OptimizerStep& s) const override {
    float* x = s.value;
    if (s.kind == UpdateKind::kDelta) {
      for (std::size_t i = 0; i < s.n; ++i) x[i] = s.old[i] + lr_ * x[i];
    } else if (s.single_push) {
      for (std::size_t i = 0; i < s.n; ++i) {
        x[i] = s.old[i] + mix_ * (x[i] - s.old[i]);
      }
    }  // A round's mean of weights is the value as it is.
  }

 private:
  const float lr_;
  const float mix_;
};

}  // namespace

OptimizerRule PlainRule() {
  return {"plain",
          "no server optimizer: the mean of pushed weights is the new value "
          "(FedAvg); a mean delta is added times lr",
          {{"lr", 1.0, 1e-9, 1e6,
            "step size for delta pushes (default: the server's --server_lr)"},
           {"mix", 0.5, 1e-9, 1.0,
            "async weights pushes: value += mix * (pushed - value) "
            "(default: the server's --async_mix)"}},
          [](const RuleParams& p) -> std::unique_ptr<const Optimizer> {
            return std::make_unique<Plain>(static_cast<float>(p.at("lr")),
                                           static_cast<float>(p.at("mix")));
          }};
}

}  // namespace weightd::core
