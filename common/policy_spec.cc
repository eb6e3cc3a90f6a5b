#include "common/policy_spec.h"

#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace weightd {
namespace {

// The shortest of %.6g .. %.17g that parses back to `v`.
std::string Number(double v) {
  for (int digits = 6; digits < 17; ++digits) {
    std::string s = absl::StrFormat("%.*g", digits, v);
    double back;
    if (absl::SimpleAtod(s, &back) && back == v) return s;
  }
  return absl::StrFormat("%.17g", v);
}

}  // namespace

bool IsPolicyName(absl::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '_') {
      return false;
    }
  }
  return true;
}

absl::StatusOr<PolicySpec> ParsePolicySpec(absl::string_view text) {
  PolicySpec spec;
  std::vector<absl::string_view> tokens =
      absl::StrSplit(text, absl::ByAnyChar(" \t\n,"), absl::SkipEmpty());
  for (absl::string_view token : tokens) {
    const std::size_t eq = token.find('=');
    if (eq == absl::string_view::npos || eq == 0 || eq + 1 == token.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy \"", text, "\": \"", token,
                       "\" is not key=value (e.g. optimizer=adam lr=0.01)"));
    }
    const absl::string_view key = token.substr(0, eq);
    const absl::string_view value = token.substr(eq + 1);
    if (!IsPolicyName(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy \"", text, "\": \"", key,
                       "\" is not a key (lower-case letters, digits, _)"));
    }
    std::string* rule = key == "consistency"  ? &spec.consistency
                        : key == "optimizer"  ? &spec.optimizer
                        : key == "aggregator" ? &spec.aggregator
                                              : nullptr;
    if (rule != nullptr) {
      if (!rule->empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("policy \"", text, "\" names ", key, " twice"));
      }
      if (!IsPolicyName(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("policy \"", text, "\": ", key, "=", value,
                         " is not a name (lower-case letters, digits, _)"));
      }
      if (rule == &spec.consistency && value != "sync" && value != "async" &&
          value != "bounded") {
        return absl::InvalidArgumentError(
            absl::StrCat("policy \"", text, "\": consistency=", value,
                         " is not one of sync, async, bounded"));
      }
      *rule = std::string(value);
      continue;
    }
    double number;
    if (!absl::SimpleAtod(value, &number) || !std::isfinite(number)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy \"", text, "\": ", key, "=", value, " is not a number"));
    }
    if (!spec.params.emplace(std::string(key), number).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy \"", text, "\" names ", key, " twice"));
    }
  }
  return spec;
}

std::string PolicySpecText(const PolicySpec& spec) {
  std::string text;
  auto add = [&text](absl::string_view key, absl::string_view value) {
    absl::StrAppend(&text, text.empty() ? "" : " ", key, "=", value);
  };
  if (!spec.consistency.empty()) add("consistency", spec.consistency);
  if (!spec.optimizer.empty()) add("optimizer", spec.optimizer);
  if (!spec.aggregator.empty()) add("aggregator", spec.aggregator);
  for (const auto& [key, value] : spec.params) add(key, Number(value));
  return text;
}

}  // namespace weightd
