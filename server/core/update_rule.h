// The update rule's one home: how a tensor turns the pushes it receives
// into its next value. Two parts, each chosen per tensor by its policy
// (server/core/policy.h):
//   an Aggregator combines the contributions of a round (or one push) into
//   one aggregate, in the pushes' own terms (weights, or a delta);
//   an Optimizer turns the aggregate and the current value into the new
//   value, with state of its own beside the value (FedAdam's moments).
// Each rule lives in one file under server/core/rules/ and is listed once
// in rules.cc; nothing else names it. A new rule is a new file and a line.
#ifndef WEIGHTD_SERVER_CORE_UPDATE_RULE_H_
#define WEIGHTD_SERVER_CORE_UPDATE_RULE_H_

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/types/span.h"
#include "common/update_kind.h"

namespace weightd::core {

using ::weightd::UpdateKind;

// A numeric parameter of a rule, e.g. FedAdam's lr.
struct RuleParam {
  const char* name;
  double default_value;
  double min;  // Inclusive bounds.
  double max;
  const char* doc;
  bool integer = false;
};

// A rule's parameters by name: every parameter of the rule, given or
// defaulted.
using RuleParams = std::map<std::string, double>;

// One optimizer step over `n` elements.
struct OptimizerStep {
  const float* old;  // The published value.
  // In: the aggregate (the mean of the pushed weights, or the mean delta).
  // Out: the new value.
  float* value;
  // state_slots() arrays of `n` floats each: the rule's state for these
  // elements, updated in place.
  const absl::Span<float* const> state;
  std::size_t n;
  UpdateKind kind;
  // One push applied alone (async, bounded staleness), not a round's mean.
  bool single_push;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Floats of state per element (memory: 4 bytes each).
  virtual int state_slots() const { return 0; }
  // The value state slot `slot` starts at.
  virtual float initial_state(int slot) const { return 0.0f; }
  // Must not read state or write anything outside the `n` elements. A
  // result that is not finite is thrown away by the caller, state included.
  virtual void Step(const OptimizerStep& step) const = 0;
};

// The contributions to one range of a tensor's elements.
struct AggregateInput {
  // Contribution j's values over the range, as pushed (weights or delta).
  absl::Span<const float* const> values;
  absl::Span<const double> weights;  // The pushes' weights.
  // Contribution j's factor from Aggregator::Scales (empty if it has none).
  absl::Span<const double> scales;
  const float* old;  // The published value over the range.
  std::size_t n;     // Elements in the range.
  UpdateKind kind;
};

class Aggregator {
 public:
  virtual ~Aggregator() = default;
  // False: the weighted mean, which a sync round sums as chunks arrive in
  // constant memory (Combine is then used for single pushes only). True:
  // it needs every contribution's values at once, so a round holds a copy
  // of each: participants x tensor bytes.
  virtual bool buffered() const { return true; }
  // True if it needs several contributions to mean anything (median): a
  // tensor that applies each push alone (async, bounded staleness) cannot
  // use it.
  virtual bool needs_round() const { return false; }
  // True if Scales is used: a factor per contribution that depends on the
  // contribution's whole update, so no range of a round's result is made
  // before every contribution is complete.
  virtual bool scales_whole() const { return false; }
  // Over the whole tensor: one factor per contribution.
  virtual std::vector<double> Scales(const AggregateInput& whole) const {
    return {};
  }
  // out[i] = the aggregate of values[j][i] over j. `rng` for noise.
  virtual void Combine(const AggregateInput& in, float* out,
                       absl::BitGenRef rng) const = 0;
};

template <typename Base>
struct Rule {
  const char* name;
  const char* doc;
  std::vector<RuleParam> params;
  std::function<std::unique_ptr<const Base>(const RuleParams&)> make;
};
using OptimizerRule = Rule<Optimizer>;
using AggregatorRule = Rule<Aggregator>;

// Every rule there is (server/core/rules/rules.cc), by name.
const std::vector<OptimizerRule>& OptimizerRules();
const std::vector<AggregatorRule>& AggregatorRules();

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_UPDATE_RULE_H_
