// WEIGHTD_* environment variables as defaults for a binary's absl flags.
// For main() only: libraries take their settings from Options structs.
#ifndef WEIGHTD_COMMON_ENV_FLAGS_H_
#define WEIGHTD_COMMON_ENV_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace weightd {

// For each flag name in `flags`, if the environment variable
// `<prefix><NAME in upper case>` is set (e.g. WEIGHTD_LISTEN for "listen"),
// parses it into the flag. Call before absl::ParseCommandLine so that the
// command line wins. INVALID_ARGUMENT naming the variable if a value does
// not parse; NOT_FOUND if a name is not a defined flag.
absl::Status ApplyEnvironmentToFlags(absl::string_view prefix,
                                     const std::vector<std::string>& flags);

// Makes --help list the flags defined in source files whose path ends with
// `main_file` (e.g. "server/main.cc").
void ShowFlagsOfFileInHelp(std::string main_file);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_ENV_FLAGS_H_
