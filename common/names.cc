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

}  // namespace weightd
