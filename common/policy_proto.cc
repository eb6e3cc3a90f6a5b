#include "common/policy_proto.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace weightd {

// `spec.consistency` is empty or one of sync, async, bounded
// (ParsePolicySpec checks it).
void PolicySpecToProto(const PolicySpec& spec, v1::TensorPolicy* out) {
  out->set_consistency(spec.consistency == "sync"      ? v1::MODE_SYNC
                       : spec.consistency == "async"   ? v1::MODE_ASYNC
                       : spec.consistency == "bounded" ? v1::MODE_BOUNDED
                                                       : v1::MODE_UNSPECIFIED);
  out->set_optimizer(spec.optimizer);
  out->set_aggregator(spec.aggregator);
  for (const auto& [key, value] : spec.params)
    (*out->mutable_params())[key] = value;
}

absl::StatusOr<PolicySpec> PolicySpecFromProto(const v1::TensorPolicy& policy) {
  PolicySpec spec;
  switch (policy.consistency()) {
    case v1::MODE_UNSPECIFIED:
      break;
    case v1::MODE_SYNC:
      spec.consistency = "sync";
      break;
    case v1::MODE_ASYNC:
      spec.consistency = "async";
      break;
    case v1::MODE_BOUNDED:
      spec.consistency = "bounded";
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("policy consistency ", policy.consistency(),
                       " is not one of MODE_SYNC, MODE_ASYNC, MODE_BOUNDED"));
  }
  if (policy.params_size() > kMaxPolicyParams) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy has ", policy.params_size(),
                     " parameters; the limit is ", kMaxPolicyParams));
  }
  for (const std::string* name : {&policy.optimizer(), &policy.aggregator()}) {
    if (!name->empty() && !IsPolicyName(*name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy rule \"", name->substr(0, 64),
                       "\" is not a name (lower-case letters, digits, _)"));
    }
  }
  spec.optimizer = policy.optimizer();
  spec.aggregator = policy.aggregator();
  for (const auto& [key, value] : policy.params()) {
    if (!IsPolicyName(key) || key == "consistency" || key == "optimizer" ||
        key == "aggregator" || !std::isfinite(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy parameter \"", key.substr(0, 64),
          "\" is not a parameter name (lower-case letters, digits, _) with "
          "a finite value"));
    }
    spec.params[key] = value;
  }
  return spec;
}

}  // namespace weightd
