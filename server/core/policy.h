// TensorPolicy: how one tensor combines the pushes it receives: its
// consistency (sync rounds, async, bounded staleness), its aggregator and
// its server optimizer (server/core/update_rule.h), with every parameter.
// Fixed when the tensor is created: from the creating worker's declaration
// (a PolicySpec) over the server's defaults for the tensor's name.
#ifndef WEIGHTD_SERVER_CORE_POLICY_H_
#define WEIGHTD_SERVER_CORE_POLICY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/policy_spec.h"
#include "server/core/update_rule.h"

namespace weightd::core {

enum class Mode {
  kSync,   // Round r of a tensor closes when all its participants contributed.
  kAsync,  // Every push is applied as soon as it completes.
  // As async, but a worker's push waits while it is `staleness` pushes
  // ahead of the tensor's slowest participant (stale synchronous parallel).
  kBounded,
};

absl::string_view ModeName(Mode mode);  // sync, async, bounded

struct TensorPolicy {
  Mode consistency = Mode::kSync;
  std::string optimizer = "plain";
  std::string aggregator = "mean";
  // Every parameter of the chosen rules (and staleness if bounded).
  RuleParams params;

  // Bounded: how many pushes a worker may be ahead of the slowest.
  std::uint32_t staleness() const;
  friend bool operator==(const TensorPolicy& a, const TensorPolicy& b) {
    return a.consistency == b.consistency && a.optimizer == b.optimizer &&
           a.aggregator == b.aggregator && a.params == b.params;
  }
  friend bool operator!=(const TensorPolicy& a, const TensorPolicy& b) {
    return !(a == b);
  }
};

// `spec` over `base`, field by field: a rule it names replaces the base's
// (with its parameters: the base's if it is the same rule, else those of
// `origin` (the server's flags) if it has that rule, else the rule's
// defaults), a parameter it gives replaces that parameter.
// INVALID_ARGUMENT for an unknown rule, a parameter of none of the chosen
// rules, a value out of its range, or an aggregator that needs a round on a
// tensor that has none (async, bounded).
absl::StatusOr<TensorPolicy> ApplyPolicySpec(
    const TensorPolicy& base, const PolicySpec& spec,
    const TensorPolicy* origin = nullptr);

// The spec naming every field of `policy` (its text: PolicySpecText).
PolicySpec SpecOf(const TensorPolicy& policy);
std::string PolicyText(const TensorPolicy& policy);

// A policy's rules, made.
struct CompiledPolicy {
  TensorPolicy policy;
  std::unique_ptr<const Optimizer> optimizer;
  std::unique_ptr<const Aggregator> aggregator;
};
// `policy` must have come from ApplyPolicySpec.
std::shared_ptr<const CompiledPolicy> Compile(TensorPolicy policy);

// The server's defaults: a policy for every tensor, and the first of
// `patterns` (name glob, policy) that matches a tensor's name instead.
class PolicyDefaults {
 public:
  PolicyDefaults() = default;
  // Each spec over the one before: `fallback` over `base`, each pattern's
  // over the result. INVALID_ARGUMENT naming the spec that fails.
  static absl::StatusOr<PolicyDefaults> Make(
      const TensorPolicy& base, const PolicySpec& fallback,
      const std::vector<std::pair<std::string, PolicySpec>>& patterns);

  // The policy a tensor named `name` gets when its creator names none.
  const TensorPolicy& For(absl::string_view name) const;
  // ApplyPolicySpec(For(name), spec) with the server's flags as origin.
  absl::StatusOr<TensorPolicy> Apply(absl::string_view name,
                                     const PolicySpec& spec) const;
  // ApplyPolicySpec(held, spec) with the server's flags as origin.
  absl::StatusOr<TensorPolicy> Apply(const TensorPolicy& held,
                                     const PolicySpec& spec) const;
  const TensorPolicy& fallback() const { return fallback_; }
  const std::vector<std::pair<std::string, TensorPolicy>>& patterns() const {
    return patterns_;
  }

 private:
  TensorPolicy base_;  // From the flags: --mode, --server_lr, --async_mix.
  TensorPolicy fallback_;
  std::vector<std::pair<std::string, TensorPolicy>> patterns_;
};

// Parses a policy file: one `NAME_GLOB POLICY_TEXT` per line, `#` starts a
// comment. INVALID_ARGUMENT naming the line.
absl::StatusOr<std::vector<std::pair<std::string, PolicySpec>>> ParsePolicyFile(
    absl::string_view contents);

}  // namespace weightd::core

#endif  // WEIGHTD_SERVER_CORE_POLICY_H_
