// The list of every update rule: the one place a new rule is added (its
// file defines the function declared here).
#include "server/core/update_rule.h"

namespace weightd::core {

OptimizerRule PlainRule();         // plain.cc
OptimizerRule MomentumRule();      // momentum.cc
OptimizerRule AdagradRule();       // adaptive.cc
OptimizerRule AdamRule();          // adaptive.cc
OptimizerRule YogiRule();          // adaptive.cc
AggregatorRule MeanRule();         // mean.cc
AggregatorRule MedianRule();       // order_statistics.cc
AggregatorRule TrimmedMeanRule();  // order_statistics.cc
AggregatorRule ClippedMeanRule();  // clipped_mean.cc

const std::vector<OptimizerRule>& OptimizerRules() {
  static const auto* rules = new std::vector<OptimizerRule>{
      PlainRule(), MomentumRule(), AdagradRule(), AdamRule(), YogiRule()};
  return *rules;
}

const std::vector<AggregatorRule>& AggregatorRules() {
  static const auto* rules = new std::vector<AggregatorRule>{
      MeanRule(), MedianRule(), TrimmedMeanRule(), ClippedMeanRule()};
  return *rules;
}

}  // namespace weightd::core
