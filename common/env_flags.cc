#include "common/env_flags.h"

#include <cstdlib>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace weightd {

absl::Status ApplyEnvironmentToFlags(absl::string_view prefix,
                                     const std::vector<std::string>& flags) {
  for (const std::string& name : flags) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) {
      return absl::NotFoundError(absl::StrCat("no flag --", name));
    }
    const std::string variable =
        absl::StrCat(prefix, absl::AsciiStrToUpper(name));
    const char* value = std::getenv(variable.c_str());
    if (value == nullptr) continue;
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(variable, "=\"", value, "\": ", error));
    }
  }
  return absl::OkStatus();
}

void ShowFlagsOfFileInHelp(std::string main_file) {
  absl::FlagsUsageConfig config;
  auto matches = [main_file](absl::string_view file) {
    return absl::EndsWith(file, main_file);
  };
  config.contains_help_flags = matches;
  config.contains_helpshort_flags = matches;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace weightd
