// Program start-up of weightd's binaries (weightd, weightd_worker,
// weightctl): their flags from WEIGHTD_* environment variables and the
// command line, parsed strictly, and --help and --version. For main() only:
// libraries take their settings from Options structs.
//
// A configuration that cannot work stops the program at start with exit
// status 2 (kExitBadConfiguration) and one line on stderr that names the
// flag or variable, its value and the fix:
//   weightd: --lease_timeout=5: needs a unit, e.g. 5s
//   weightd: WEIGHTD_LISTNE is not a variable of weightd; did you mean
//   WEIGHTD_LISTEN?
// (absl::ParseCommandLine alone exits 1 on a bad value, the code weightd
// keeps for a lost final snapshot.)
//
// Not thread-safe: call from main() before any thread starts.
#ifndef WEIGHTD_COMMON_STARTUP_H_
#define WEIGHTD_COMMON_STARTUP_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace weightd {

inline constexpr int kExitBadConfiguration = 2;

// A check of one flag's final value (after the environment and the command
// line): returns what is wrong with it and how to fix it ("must be > 0"),
// or "" if it can work. It reads the flag with absl::GetFlag.
struct FlagCheck {
  std::string flag;  // "listen"
  std::function<std::string()> problem;
};

// What a binary tells StartProgram about itself.
struct Program {
  std::string name;       // "weightd": begins every error line and --version
  std::string usage;      // printed by --help above the flags
  std::string main_file;  // "server/main.cc": --help lists the flags defined
                          // in the file whose path ends with it
  std::vector<FlagCheck> checks;  // run in order on the final values
  // More files whose flags are the program's (--help lists them, their
  // durations are checked): a library's flags, "client/credential_flags.cc".
  std::vector<std::string> library_flag_files = {};
};

// A WEIGHTD_* environment variable of the project.
struct EnvironmentVariable {
  absl::string_view name;     // "WEIGHTD_LISTEN"
  absl::string_view program;  // the binary that reads it: "weightd"
  absl::string_view flag;     // the flag it sets ("listen"); empty when the
                              // program reads the variable itself
};

// Every WEIGHTD_* variable of the project, in one place, one row per
// variable and program that reads it: weightd's (one per flag,
// WEIGHTD_<FLAG>), the client programs' WEIGHTD_SERVERS (weightctl and
// weightd_worker) and the build scripts' WEIGHTD_BUILD_JOBS. A program
// ignores the other programs' variables (one container may set them for
// several) and refuses a WEIGHTD_* variable that is not listed.
absl::Span<const EnvironmentVariable> ProjectEnvironment();

// Where each flag's value came from: flag name -> "WEIGHTD_X=VALUE" or
// "--x=VALUE" as given; a flag left at its default is absent.
using FlagSources = std::map<std::string, std::string>;

// Everything below returns INVALID_ARGUMENT with the one line to print
// (without the program's name) when the configuration cannot work.

// For each "NAME=VALUE" in `environment` (as in ::environ) whose NAME
// begins with WEIGHTD_: a variable of `program` in `variables` that names a
// flag is parsed into that flag; a variable of another program is ignored;
// any other is refused, naming the closest listed variable. Also refused: a
// value the flag cannot parse, and a row of `program` naming no flag that
// exists (NOT_FOUND: a bug of the table). Records each flag it sets in
// `sources`.
absl::Status ApplyEnvironment(absl::string_view program,
                              const std::vector<std::string>& environment,
                              absl::Span<const EnvironmentVariable> variables,
                              FlagSources* sources);

// Parses every flag in `args` (args[0] is the program) into its flag with
// absl's syntax (--name=value, --name value, -name, --noname for a bool,
// "--" ends the flags), exactly as absl::ParseCommandLine would set them,
// but refuses instead of exiting: an unknown flag (naming the closest flag
// defined in `main_file`), a missing value, a value that does not parse
// (a duration without a unit: "needs a unit, e.g. 5s"). absl's own flags
// (--help, --version, --flagfile, ...) and positional arguments are left
// for absl::ParseCommandLine. Records each flag it sets in `sources`.
absl::Status ParseFlags(const std::vector<std::string>& args,
                        absl::string_view main_file, FlagSources* sources);

// Checks the final values: no flag defined in `main_file` holds a negative
// duration, then every check of `program`. The message names the source of
// the offending value (`sources`), else --flag with its current value.
absl::Status CheckFlags(const Program& program, const FlagSources& sources);

// Configures --help to list the flags of `program.main_file` and --version
// to print VersionLine(), applies the environment, parses and checks the
// command line, and returns the positional arguments (argv[0] first). On a
// bad configuration prints "NAME: <message>" to stderr and exits 2; --help
// and --version print and exit as absl does (1 and 0). Call once.
std::vector<char*> StartProgram(const Program& program, int argc, char** argv);

// "weightd 0.5.0 (git 0123456789ab, Release build)": the project's version
// (CMake's project(VERSION)), the commit the build tree was configured at
// (left out where git was not available) and CMake's build type.
std::string VersionLine(absl::string_view program);

// Whether `dir` can hold new files: if it is missing and `create` is set,
// creates it and its missing parents (mode 0755); then creates, fsyncs and
// removes an empty probe file. Writes no data, so a full disk passes (its
// snapshots fail and are counted, as before). As root, permission bits do
// not stop the probe; a read-only file system, a path under a regular file
// or an immutable directory do. FAILED_PRECONDITION naming the path and the
// system's reason.
absl::Status ProbeWritableDirectory(const std::string& dir, bool create);

// The candidate closest to `word` in edit distance (insertions, deletions,
// substitutions and swaps of neighbours count 1); the first of equals. ""
// if there is none.
std::string Closest(absl::string_view word,
                    const std::vector<std::string>& candidates);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_STARTUP_H_
