// PolicySpec: how a tensor's pushes are to be combined, as a worker or an
// operator writes it (docs/algorithms.md). Text form, tokens separated by
// spaces or commas:
//   consistency=bounded staleness=2 optimizer=adam lr=0.01 aggregator=median
// Three rule names (consistency, optimizer, aggregator) and numeric
// parameters of those rules. This is the syntax only: which rules and
// parameters exist, and their ranges, is the server's (server/core/policy.h).
#ifndef WEIGHTD_COMMON_POLICY_SPEC_H_
#define WEIGHTD_COMMON_POLICY_SPEC_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

struct PolicySpec {
  // Empty: not named (the tensor's, or the server's default).
  std::string consistency;  // sync, async or bounded
  std::string optimizer;    // e.g. plain, momentum, adam
  std::string aggregator;   // e.g. mean, median
  // Parameters of the rules named or defaulted, e.g. {"lr", 0.01}.
  std::map<std::string, double> params;

  bool empty() const {
    return consistency.empty() && optimizer.empty() && aggregator.empty() &&
           params.empty();
  }
  friend bool operator==(const PolicySpec& a, const PolicySpec& b) {
    return a.consistency == b.consistency && a.optimizer == b.optimizer &&
           a.aggregator == b.aggregator && a.params == b.params;
  }
};

// A rule or parameter name: 1 to 64 of [a-z0-9_].
bool IsPolicyName(absl::string_view s);

// INVALID_ARGUMENT for a token that is not key=value, a key named twice, a
// rule name that is not [a-z0-9_]+, or a parameter that is not a finite
// number. Empty text: an empty spec.
absl::StatusOr<PolicySpec> ParsePolicySpec(absl::string_view text);

// The text form: the rules in the order above, then the parameters sorted
// by name, numbers in the shortest form that reads back the same.
std::string PolicySpecText(const PolicySpec& spec);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_POLICY_SPEC_H_
