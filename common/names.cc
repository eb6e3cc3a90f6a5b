#include "common/names.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace weightd {

absl::Status ValidateName(absl::string_view what, absl::string_view name) {
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  }
  if (name.size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", name.size(),
                                                   " bytes long; the limit is ",
                                                   kMaxNameBytes));
  }
  for (char c : name) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' ||
        c == '.' || c == ':' || c == '/' || c == '-') {
      continue;
    }
    return absl::InvalidArgumentError(
        absl::StrCat(what, " \"", absl::CEscape(name),
                     "\" contains a character outside [A-Za-z0-9_.:/-]"));
  }
  return absl::OkStatus();
}

bool PatternMatches(absl::string_view pattern, absl::string_view text) {
  // Greedy glob with backtracking to the last '*': linear in practice.
  std::size_t p = 0, t = 0, star = absl::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace weightd
