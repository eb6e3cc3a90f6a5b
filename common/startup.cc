#include "common/startup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"

// Set by CMake (common/CMakeLists.txt); defaults for a build without it.
#ifndef WEIGHTD_VERSION
#define WEIGHTD_VERSION "0.0.0"
#endif
#ifndef WEIGHTD_GIT_COMMIT
#define WEIGHTD_GIT_COMMIT ""
#endif
#ifndef WEIGHTD_BUILD_TYPE
#define WEIGHTD_BUILD_TYPE ""
#endif

namespace weightd {
namespace {

constexpr absl::string_view kPrefix = "WEIGHTD_";

// The row of variable `name`: `program`'s own if it reads it (several
// programs may read one variable), else any; end() if none.
absl::Span<const EnvironmentVariable>::const_iterator Find(
    absl::Span<const EnvironmentVariable> variables, absl::string_view name,
    absl::string_view program) {
  const auto own = std::find_if(variables.begin(), variables.end(),
                                [&](const EnvironmentVariable& v) {
                                  return v.name == name && v.program == program;
                                });
  if (own != variables.end()) return own;
  return std::find_if(
      variables.begin(), variables.end(),
      [&](const EnvironmentVariable& v) { return v.name == name; });
}

constexpr EnvironmentVariable kEnvironment[] = {
    // weightd: every flag, as its usage message says.
    {"WEIGHTD_LISTEN", "weightd", "listen"},
    {"WEIGHTD_UNIX_SOCKET", "weightd", "unix_socket"},
    {"WEIGHTD_UNIX_SOCKET_MODE", "weightd", "unix_socket_mode"},
    {"WEIGHTD_TLS_CERT", "weightd", "tls_cert"},
    {"WEIGHTD_TLS_KEY", "weightd", "tls_key"},
    {"WEIGHTD_TLS_CLIENT_CA", "weightd", "tls_client_ca"},
    {"WEIGHTD_TLS_RELOAD_INTERVAL", "weightd", "tls_reload_interval"},
    {"WEIGHTD_INSECURE", "weightd", "insecure"},
    {"WEIGHTD_AUTH_POLICY", "weightd", "auth_policy"},
    {"WEIGHTD_AUTH_RELOAD_INTERVAL", "weightd", "auth_reload_interval"},
    {"WEIGHTD_SHARED_MEMORY", "weightd", "shared_memory"},
    {"WEIGHTD_PACE_PUSHES", "weightd", "pace_pushes"},
    {"WEIGHTD_SHARD_INDEX", "weightd", "shard_index"},
    {"WEIGHTD_SHARD_COUNT", "weightd", "shard_count"},
    {"WEIGHTD_MODE", "weightd", "mode"},
    {"WEIGHTD_SERVER_LR", "weightd", "server_lr"},
    {"WEIGHTD_ASYNC_MIX", "weightd", "async_mix"},
    {"WEIGHTD_POLICY", "weightd", "policy"},
    {"WEIGHTD_POLICY_FILE", "weightd", "policy_file"},
    {"WEIGHTD_MAX_BUFFERED_BYTES", "weightd", "max_buffered_bytes"},
    {"WEIGHTD_CHUNK_BYTES", "weightd", "chunk_bytes"},
    {"WEIGHTD_MAX_TENSOR_BYTES", "weightd", "max_tensor_bytes"},
    {"WEIGHTD_MAX_TOTAL_BYTES", "weightd", "max_total_bytes"},
    {"WEIGHTD_MAX_WORKERS", "weightd", "max_workers"},
    {"WEIGHTD_MAX_TENSORS_PER_PRINCIPAL", "weightd",
     "max_tensors_per_principal"},
    {"WEIGHTD_MAX_BYTES_PER_PRINCIPAL", "weightd", "max_bytes_per_principal"},
    {"WEIGHTD_MAX_CALLS", "weightd", "max_calls"},
    {"WEIGHTD_MAX_STREAMS_PER_CONNECTION", "weightd",
     "max_streams_per_connection"},
    {"WEIGHTD_MAX_RECEIVE_MEMORY", "weightd", "max_receive_memory"},
    {"WEIGHTD_STALL_TIMEOUT", "weightd", "stall_timeout"},
    {"WEIGHTD_MIN_CLIENT_PING_INTERVAL", "weightd", "min_client_ping_interval"},
    {"WEIGHTD_MAX_CONNECTION_IDLE", "weightd", "max_connection_idle"},
    {"WEIGHTD_HANDSHAKE_TIMEOUT", "weightd", "handshake_timeout"},
    {"WEIGHTD_METRICS_LISTEN", "weightd", "metrics_listen"},
    {"WEIGHTD_METRICS_TENSOR_SERIES", "weightd", "metrics_tensor_series"},
    {"WEIGHTD_ROUND_QUORUM", "weightd", "round_quorum"},
    {"WEIGHTD_ROUND_TIMEOUT", "weightd", "round_timeout"},
    {"WEIGHTD_HISTORY_PER_TENSOR", "weightd", "history_per_tensor"},
    {"WEIGHTD_ALLOW_NON_FINITE", "weightd", "allow_non_finite"},
    {"WEIGHTD_LEASE_TIMEOUT", "weightd", "lease_timeout"},
    {"WEIGHTD_SNAPSHOT_DIR", "weightd", "snapshot_dir"},
    {"WEIGHTD_SNAPSHOT_EVERY", "weightd", "snapshot_every"},
    {"WEIGHTD_RESTORE", "weightd", "restore"},
    {"WEIGHTD_CRASH_AT", "weightd", "crash_at"},
    {"WEIGHTD_LOG_LEVEL", "weightd", "log_level"},
    {"WEIGHTD_SHUTDOWN_GRACE", "weightd", "shutdown_grace"},
    {"WEIGHTD_READY_FILE", "weightd", "ready_file"},
    // The servers' addresses, for every client program: weightctl's default
    // of --server; weightd_worker reads it itself (its default of --server).
    {"WEIGHTD_SERVERS", "weightctl", "server"},
    {"WEIGHTD_SERVERS", "weightd_worker", ""},
    // TLS towards the servers (client/credential_flags.h), for every client
    // program: the CA that signed the servers' certificates, this client's
    // certificate and key (mutual TLS), the name to check.
    {"WEIGHTD_TLS_CA", "weightctl", "tls_ca"},
    {"WEIGHTD_TLS_CERT", "weightctl", "tls_cert"},
    {"WEIGHTD_TLS_KEY", "weightctl", "tls_key"},
    {"WEIGHTD_TLS_SERVER_NAME", "weightctl", "tls_server_name"},
    {"WEIGHTD_TLS_CA", "weightd_worker", "tls_ca"},
    {"WEIGHTD_TLS_CERT", "weightd_worker", "tls_cert"},
    {"WEIGHTD_TLS_KEY", "weightd_worker", "tls_key"},
    {"WEIGHTD_TLS_SERVER_NAME", "weightd_worker", "tls_server_name"},
    // A file holding the client's bearer token (client/credential_flags.h).
    {"WEIGHTD_TOKEN_FILE", "weightctl", "token_file"},
    {"WEIGHTD_TOKEN_FILE", "weightd_worker", "token_file"},
    // scripts/build.sh and scripts/tsan_deps.sh: parallel compile jobs.
    {"WEIGHTD_BUILD_JOBS", "scripts/build.sh", ""},
    // Substituted by Compose in deploy/docker-compose*.yml (often exported
    // in the shell that runs the tools as well).
    {"WEIGHTD_JOB", "deploy/docker-compose.yml", ""},
    {"WEIGHTD_PORT", "deploy/docker-compose.yml", ""},
    {"WEIGHTD_SECRETS", "deploy/docker-compose.yml", ""},
    {"WEIGHTD_TAG", "deploy/docker-compose.yml", ""},
    // tests/container/container_test.sh: where its images are cached.
    {"WEIGHTD_CONTAINER_CACHE", "tests/container/container_test.sh", ""},
};

// Optimal string alignment distance: Levenshtein plus swaps of neighbours
// (a typo like LISTNE for LISTEN costs 1).
std::size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<std::vector<std::size_t>> d(
      a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] =
          std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// absl's usage flags: no registered flags in Abseil 20220623, but names
// absl::ParseCommandLine recognizes (absl/flags/usage_config.h).
bool IsAbseilUsageFlag(absl::string_view name) {
  for (absl::string_view usage :
       {"help", "helpfull", "helpshort", "helppackage", "version",
        "only_check_args", "helpon", "helpmatch"}) {
    if (name == usage) return true;
  }
  return false;
}

// --flagfile, --fromenv, --tryfromenv, --undefok.
bool IsAbseilOwnFlag(const absl::CommandLineFlag& flag) {
  return absl::StrContains(flag.Filename(), "absl/flags/");
}

// The names of the flags defined in files whose path ends with `main_file`,
// sorted.
std::vector<std::string> FlagsOfFile(absl::string_view main_file) {
  std::vector<std::string> names;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!main_file.empty() && absl::EndsWith(flag->Filename(), main_file)) {
      names.emplace_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

template <typename T>
std::string WholeNumber(const absl::CommandLineFlag& flag) {
  return absl::StrCat(
      "needs a whole number from ", std::numeric_limits<T>::min(), " to ",
      std::numeric_limits<T>::max(), ", e.g. ", flag.DefaultValue());
}

// What is wrong with `value` for `flag`, which did not parse it; `error`
// is absl's own explanation, if any.
std::string ValueProblem(const absl::CommandLineFlag& flag,
                         absl::string_view value, const std::string& error) {
  if (flag.IsOfType<absl::Duration>()) {
    double number = 0;
    if (absl::SimpleAtod(value, &number)) {
      return absl::StrCat("needs a unit, e.g. ", value, "s");
    }
    return absl::StrCat(
        "not a duration; use a number with a unit (ms, s, m, "
        "h), e.g. ",
        flag.DefaultValue());
  }
  if (flag.IsOfType<bool>()) return "use true or false";
  if (flag.IsOfType<std::int32_t>()) return WholeNumber<std::int32_t>(flag);
  if (flag.IsOfType<std::int64_t>()) return WholeNumber<std::int64_t>(flag);
  if (flag.IsOfType<std::uint32_t>()) return WholeNumber<std::uint32_t>(flag);
  if (flag.IsOfType<std::uint64_t>()) return WholeNumber<std::uint64_t>(flag);
  if (flag.IsOfType<double>()) {
    return absl::StrCat("needs a number, e.g. ", flag.DefaultValue());
  }
  return error.empty() ? "cannot be parsed" : error;
}

// Parses `value` into `flag`; on failure returns "SOURCE=VALUE: problem".
absl::Status SetFlag(absl::CommandLineFlag& flag, absl::string_view source,
                     absl::string_view value) {
  std::string error;
  if (flag.ParseFrom(value, &error)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(source, "=", value, ": ", ValueProblem(flag, value, error)));
}

std::string SourceOf(const absl::CommandLineFlag& flag,
                     const FlagSources& sources) {
  auto it = sources.find(std::string(flag.Name()));
  if (it != sources.end()) return it->second;
  return absl::StrCat("--", flag.Name(), "=", flag.CurrentValue());
}

[[noreturn]] void ExitBadConfiguration(absl::string_view program,
                                       const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", std::string(program).c_str(),
               std::string(status.message()).c_str());
  std::exit(kExitBadConfiguration);
}

}  // namespace

absl::Span<const EnvironmentVariable> ProjectEnvironment() {
  return kEnvironment;
}

std::string Closest(absl::string_view word,
                    const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const std::string& candidate : candidates) {
    const std::size_t distance = EditDistance(word, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

absl::Status ApplyEnvironment(absl::string_view program,
                              const std::vector<std::string>& environment,
                              absl::Span<const EnvironmentVariable> variables,
                              FlagSources* sources) {
  for (const EnvironmentVariable& v : variables) {
    if (v.program == program && !v.flag.empty() &&
        absl::FindCommandLineFlag(v.flag) == nullptr) {
      return absl::NotFoundError(absl::StrCat(v.name, " is listed for flag --",
                                              v.flag, ", which ", program,
                                              " does not define"));
    }
  }
  for (const std::string& entry : environment) {
    const std::size_t equals = entry.find('=');
    if (equals == std::string::npos) continue;
    const absl::string_view name = absl::string_view(entry).substr(0, equals);
    const absl::string_view value = absl::string_view(entry).substr(equals + 1);
    if (!absl::StartsWith(name, kPrefix)) continue;
    const auto row = Find(variables, name, program);
    if (row == variables.end()) {
      // The program's own variables first, so that they win a tie.
      std::vector<std::string> names;
      for (const EnvironmentVariable& v : variables) {
        if (v.program == program) names.emplace_back(v.name);
      }
      for (const EnvironmentVariable& v : variables) {
        if (v.program != program) names.emplace_back(v.name);
      }
      const std::string closest = Closest(name, names);
      std::string hint;
      if (!closest.empty()) {
        const auto its = Find(variables, closest, program);
        hint = absl::StrCat("; did you mean ", closest,
                            its->program == program
                                ? ""
                                : absl::StrCat(" (read by ", its->program, ")"),
                            "?");
      }
      return absl::InvalidArgumentError(
          absl::StrCat(name, " is not a variable of ", program, hint,
                       " Rename or unset it."));
    }
    if (row->program != program || row->flag.empty()) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(row->flag);
    if (absl::Status s = SetFlag(*flag, name, value); !s.ok()) return s;
    (*sources)[std::string(row->flag)] = absl::StrCat(name, "=", value);
  }
  return absl::OkStatus();
}

absl::Status ParseFlags(const std::vector<std::string>& args,
                        absl::string_view main_file, FlagSources* sources) {
  for (std::size_t i = 1; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    // The rules of absl/flags/parse.cc: "-" and words are positional, "--"
    // ends the flags, one or two dashes start a flag.
    if (!absl::ConsumePrefix(&arg, "-") || arg.empty()) continue;
    if (arg == "-") break;
    absl::ConsumePrefix(&arg, "-");
    const std::size_t equals = arg.find('=');
    const bool has_value = equals != absl::string_view::npos;
    const absl::string_view name = arg.substr(0, equals);
    absl::string_view value = has_value ? arg.substr(equals + 1) : "";

    if (IsAbseilUsageFlag(name)) continue;  // absl::ParseCommandLine's.
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    bool negated = false;
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      flag = absl::FindCommandLineFlag(name.substr(2));
      if (flag != nullptr && !flag->IsOfType<bool>()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, ": --", flag->Name(),
                         " is not a true/false flag; give it a value, e.g. --",
                         flag->Name(), "=", flag->DefaultValue()));
      }
      negated = flag != nullptr;
    }
    if (flag == nullptr) {
      const std::string closest = Closest(name, FlagsOfFile(main_file));
      return absl::InvalidArgumentError(absl::StrCat(
          "--", name, ": no such flag",
          closest.empty() ? ""
                          : absl::StrCat("; did you mean --", closest, "?"),
          " See --help."));
    }
    if (IsAbseilOwnFlag(*flag)) {
      // absl::ParseCommandLine handles them; skip a separate value.
      if (!has_value && !flag->IsOfType<bool>() && i + 1 < args.size()) ++i;
      continue;
    }
    if (negated) {
      if (has_value) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", arg, ": --", name, " takes no value; use --",
                         flag->Name(), "=", value));
      }
      value = "false";
    } else if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, ": needs a value, e.g. --", name, "=",
                         flag->DefaultValue()));
      }
    }
    const std::string source = absl::StrCat("--", flag->Name());
    if (absl::Status s = SetFlag(*flag, source, value); !s.ok()) return s;
    (*sources)[std::string(flag->Name())] = absl::StrCat(source, "=", value);
  }
  return absl::OkStatus();
}

absl::Status CheckFlags(const Program& program, const FlagSources& sources) {
  std::vector<std::string> names = FlagsOfFile(program.main_file);
  for (const std::string& file : program.library_flag_files) {
    const std::vector<std::string> more = FlagsOfFile(file);
    names.insert(names.end(), more.begin(), more.end());
  }
  for (const std::string& name : names) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    const absl::optional<absl::Duration> d = flag->TryGet<absl::Duration>();
    if (d.has_value() && *d < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(SourceOf(*flag, sources),
                       ": must not be negative, e.g. ", flag->DefaultValue()));
    }
  }
  for (const FlagCheck& check : program.checks) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(check.flag);
    if (flag == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("a check names --", check.flag, ", which is no flag"));
    }
    const std::string problem = check.problem();
    if (!problem.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(SourceOf(*flag, sources), ": ", problem));
    }
  }
  return absl::OkStatus();
}

std::vector<char*> StartProgram(const Program& program, int argc, char** argv) {
  absl::FlagsUsageConfig config;
  std::vector<std::string> files = program.library_flag_files;
  files.push_back(program.main_file);
  auto matches = [files](absl::string_view f) {
    for (const std::string& file : files) {
      if (absl::EndsWith(f, file)) return true;
    }
    return false;
  };
  config.contains_help_flags = matches;
  config.contains_helpshort_flags = matches;
  config.version_string = [name = program.name] {
    return VersionLine(name) + "\n";
  };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(program.usage);

  std::vector<std::string> environment;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    environment.emplace_back(*e);
  }
  FlagSources sources;
  absl::Status status = ApplyEnvironment(program.name, environment,
                                         ProjectEnvironment(), &sources);
  if (status.ok()) {
    status = ParseFlags(std::vector<std::string>(argv, argv + argc),
                        program.main_file, &sources);
  }
  if (!status.ok()) ExitBadConfiguration(program.name, status);
  // Sets the same values again, and handles --help, --version and
  // --flagfile (whose contents it alone checks).
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  status = CheckFlags(program, sources);
  if (!status.ok()) ExitBadConfiguration(program.name, status);
  return positional;
}

std::string VersionLine(absl::string_view program) {
  constexpr absl::string_view kCommit = WEIGHTD_GIT_COMMIT;
  constexpr absl::string_view kBuildType = WEIGHTD_BUILD_TYPE;
  return absl::StrCat(
      program, " ", WEIGHTD_VERSION, " (",
      kCommit.empty() ? "" : absl::StrCat("git ", kCommit, ", "),
      kBuildType.empty() ? "unknown" : kBuildType, " build)");
}

absl::Status ProbeWritableDirectory(const std::string& dir, bool create) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT || !create) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, ": ", std::strerror(errno)));
    }
    // mkdir -p: each missing component in turn.
    for (std::size_t end = dir.find('/', 1);; end = dir.find('/', end + 1)) {
      const std::string prefix = dir.substr(0, end);
      if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot create directory ", prefix, ": ", std::strerror(errno)));
      }
      if (end == std::string::npos) break;
    }
    if (::stat(dir.c_str(), &st) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, ": ", std::strerror(errno)));
    }
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " is not a directory"));
  }
  const std::string probe = absl::StrCat(dir, "/.weightd-probe-", ::getpid());
  const int fd =
      ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create a file in ", dir, ": ", std::strerror(errno)));
  }
  const bool synced = ::fsync(fd) == 0;
  const int fsync_errno = errno;
  ::close(fd);
  if (::unlink(probe.c_str()) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot remove ", probe, ": ", std::strerror(errno)));
  }
  if (!synced) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot fsync a file in ", dir, ": ", std::strerror(fsync_errno)));
  }
  return absl::OkStatus();
}

}  // namespace weightd
