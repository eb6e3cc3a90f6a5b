#include "server/core/policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/names.h"

namespace weightd::core {
namespace {

constexpr char kStaleness[] = "staleness";
const RuleParam kStalenessParam{
    kStaleness,      1, 1, 1e6, "pushes a worker may be ahead of the slowest",
    /*integer=*/true};

template <typename Base>
const Rule<Base>* FindRule(const std::vector<Rule<Base>>& rules,
                           absl::string_view name) {
  for (const Rule<Base>& rule : rules) {
    if (name == rule.name) return &rule;
  }
  return nullptr;
}

template <typename Base>
std::string RuleNames(const std::vector<Rule<Base>>& rules) {
  std::vector<std::string> names;
  for (const Rule<Base>& rule : rules) names.emplace_back(rule.name);
  return absl::StrJoin(names, ", ");
}

std::string ParamNames(const std::vector<RuleParam>& params) {
  if (params.empty()) return "none";
  std::vector<std::string> names;
  for (const RuleParam& p : params) names.emplace_back(p.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<Mode> ParseMode(absl::string_view name) {
  if (name == "sync") return Mode::kSync;
  if (name == "async") return Mode::kAsync;
  if (name == "bounded") return Mode::kBounded;
  return absl::InvalidArgumentError(absl::StrCat(
      "consistency=", name, " is not one of sync, async, bounded"));
}

// The parameters a policy's rules take.
std::vector<RuleParam> ParamsOf(Mode consistency, const OptimizerRule& o,
                                const AggregatorRule& a) {
  std::vector<RuleParam> params = o.params;
  params.insert(params.end(), a.params.begin(), a.params.end());
  if (consistency == Mode::kBounded) params.push_back(kStalenessParam);
  return params;
}

}  // namespace

absl::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kSync:
      return "sync";
    case Mode::kAsync:
      return "async";
    case Mode::kBounded:
      return "bounded";
  }
  return "?";
}

std::uint32_t TensorPolicy::staleness() const {
  auto it = params.find(kStaleness);
  return it == params.end() ? 0 : static_cast<std::uint32_t>(it->second);
}

absl::StatusOr<TensorPolicy> ApplyPolicySpec(const TensorPolicy& base,
                                             const PolicySpec& spec,
                                             const TensorPolicy* origin) {
  TensorPolicy policy = base;
  const std::string text = PolicySpecText(spec);
  auto invalid = [&text](auto&&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy \"", text, "\": ", parts...));
  };
  // A rule that changes drops the old rule's parameters, and takes the
  // origin's if the origin has that rule.
  auto forget = [&policy](const std::vector<RuleParam>& params) {
    for (const RuleParam& p : params) policy.params.erase(p.name);
  };
  auto adopt = [&policy, origin](const std::vector<RuleParam>& params,
                                 const std::string& rule,
                                 const std::string& origin_rule) {
    if (origin == nullptr || rule != origin_rule) return;
    for (const RuleParam& p : params) {
      if (auto it = origin->params.find(p.name); it != origin->params.end()) {
        policy.params[p.name] = it->second;
      }
    }
  };
  if (!spec.consistency.empty()) {
    absl::StatusOr<Mode> mode = ParseMode(spec.consistency);
    if (!mode.ok()) return invalid(mode.status().message());
    if (*mode != policy.consistency) policy.params.erase(kStaleness);
    policy.consistency = *mode;
  }
  const OptimizerRule* optimizer = FindRule(OptimizerRules(), policy.optimizer);
  const AggregatorRule* aggregator =
      FindRule(AggregatorRules(), policy.aggregator);
  if (!spec.optimizer.empty() && spec.optimizer != policy.optimizer) {
    const OptimizerRule* named = FindRule(OptimizerRules(), spec.optimizer);
    if (named == nullptr) {
      return invalid("optimizer=", spec.optimizer, " is not one of ",
                     RuleNames(OptimizerRules()));
    }
    if (optimizer != nullptr) forget(optimizer->params);
    optimizer = named;
    policy.optimizer = spec.optimizer;
    if (origin != nullptr)
      adopt(named->params, spec.optimizer, origin->optimizer);
  }
  if (!spec.aggregator.empty() && spec.aggregator != policy.aggregator) {
    const AggregatorRule* named = FindRule(AggregatorRules(), spec.aggregator);
    if (named == nullptr) {
      return invalid("aggregator=", spec.aggregator, " is not one of ",
                     RuleNames(AggregatorRules()));
    }
    if (aggregator != nullptr) forget(aggregator->params);
    aggregator = named;
    policy.aggregator = spec.aggregator;
    if (origin != nullptr) {
      adopt(named->params, spec.aggregator, origin->aggregator);
    }
  }
  if (optimizer == nullptr || aggregator == nullptr) {
    return invalid("the base policy names an unknown rule");
  }
  const std::vector<RuleParam> params =
      ParamsOf(policy.consistency, *optimizer, *aggregator);
  for (const auto& [key, value] : spec.params) {
    auto it = std::find_if(
        params.begin(), params.end(),
        [&key = key](const RuleParam& p) { return key == p.name; });
    if (it == params.end()) {
      return invalid(key, " is a parameter of none of its rules: consistency=",
                     ModeName(policy.consistency), " (",
                     policy.consistency == Mode::kBounded ? kStaleness : "none",
                     "), optimizer=", policy.optimizer, " (",
                     ParamNames(optimizer->params),
                     "), aggregator=", policy.aggregator, " (",
                     ParamNames(aggregator->params), ")");
    }
    if (!(value >= it->min && value <= it->max) ||
        (it->integer && value != std::floor(value))) {
      return invalid(key, "=", value, " is out of range: it must be ",
                     it->integer ? "an integer " : "", "in [", it->min, ", ",
                     it->max, "] (", it->doc, ")");
    }
    policy.params[key] = value;
  }
  for (const RuleParam& p : params)
    policy.params.emplace(p.name, p.default_value);
  if (policy.consistency != Mode::kSync) {
    const AggregatorRule* rule = FindRule(AggregatorRules(), policy.aggregator);
    if (rule->make(policy.params)->needs_round()) {
      return invalid("aggregator=", policy.aggregator,
                     " needs the contributions of a round, and consistency=",
                     ModeName(policy.consistency),
                     " applies each push alone; use consistency=sync, or "
                     "aggregator=mean or clipped_mean");
    }
  }
  return policy;
}

PolicySpec SpecOf(const TensorPolicy& policy) {
  PolicySpec spec;
  spec.consistency = std::string(ModeName(policy.consistency));
  spec.optimizer = policy.optimizer;
  spec.aggregator = policy.aggregator;
  spec.params = policy.params;
  return spec;
}

std::string PolicyText(const TensorPolicy& policy) {
  return PolicySpecText(SpecOf(policy));
}

std::shared_ptr<const CompiledPolicy> Compile(TensorPolicy policy) {
  auto compiled = std::make_shared<CompiledPolicy>();
  compiled->optimizer =
      FindRule(OptimizerRules(), policy.optimizer)->make(policy.params);
  compiled->aggregator =
      FindRule(AggregatorRules(), policy.aggregator)->make(policy.params);
  compiled->policy = std::move(policy);
  return compiled;
}

absl::StatusOr<PolicyDefaults> PolicyDefaults::Make(
    const TensorPolicy& base, const PolicySpec& fallback,
    const std::vector<std::pair<std::string, PolicySpec>>& patterns) {
  PolicyDefaults defaults;
  defaults.base_ = base;
  absl::StatusOr<TensorPolicy> policy = ApplyPolicySpec(base, fallback);
  if (!policy.ok()) return policy.status();
  defaults.fallback_ = *std::move(policy);
  for (const auto& [pattern, spec] : patterns) {
    absl::StatusOr<TensorPolicy> p =
        ApplyPolicySpec(defaults.fallback_, spec, &defaults.base_);
    if (!p.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the policy of pattern ", pattern, ": ", p.status().message()));
    }
    defaults.patterns_.emplace_back(pattern, *std::move(p));
  }
  return defaults;
}

absl::StatusOr<TensorPolicy> PolicyDefaults::Apply(
    absl::string_view name, const PolicySpec& spec) const {
  return ApplyPolicySpec(For(name), spec, &base_);
}

absl::StatusOr<TensorPolicy> PolicyDefaults::Apply(
    const TensorPolicy& held, const PolicySpec& spec) const {
  return ApplyPolicySpec(held, spec, &base_);
}

const TensorPolicy& PolicyDefaults::For(absl::string_view name) const {
  for (const auto& [pattern, policy] : patterns_) {
    if (PatternMatches(pattern, name)) return policy;
  }
  return fallback_;
}

absl::StatusOr<std::vector<std::pair<std::string, PolicySpec>>> ParsePolicyFile(
    absl::string_view contents) {
  std::vector<std::pair<std::string, PolicySpec>> patterns;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++number;
    line = line.substr(0, line.find('#'));
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const std::size_t space = line.find_first_of(" \t");
    const absl::string_view pattern = line.substr(0, space);
    const absl::string_view text =
        space == absl::string_view::npos ? "" : line.substr(space + 1);
    absl::StatusOr<PolicySpec> spec = ParsePolicySpec(text);
    if (!spec.ok() || spec->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "line ", number, ": ",
          spec.ok() ? "expected NAME_PATTERN POLICY (e.g. \"hidden/* "
                      "optimizer=adam lr=0.01\")"
                    : spec.status().message()));
    }
    patterns.emplace_back(std::string(pattern), *std::move(spec));
  }
  return patterns;
}

}  // namespace weightd::core
