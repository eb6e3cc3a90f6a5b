// weightctl: the operator's tool for a running weightd (docs/operations.md).
//
//   weightctl COMMAND [ARGS] [--server=ADDR] [--json] [flags]
//
// ADDR is one server or a sharded deployment's servers, comma-separated;
// it defaults to $WEIGHTD_SERVERS, then 127.0.0.1:7070, as for the
// workers. `weightctl COMMAND --help` describes one command. Exit codes: 0
// ok, 1 the server refused (or is not serving), 2 usage, connection or
// local file errors.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/credential_flags.h"
#include "client/credentials.h"
#include "common/startup.h"
#include "tools/ctl.h"

ABSL_FLAG(std::string, server, "",
          "weightd address, or a sharded deployment's addresses "
          "comma-separated (default: $WEIGHTD_SERVERS, else 127.0.0.1:7070).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5),
          "Deadline of each call (export and import: of each server call).");
ABSL_FLAG(bool, json, false,
          "Print one JSON document instead of tables (for scripts).");
ABSL_FLAG(std::string, out, "", "export: the file to write.");
ABSL_FLAG(std::string, format, "",
          "export: safetensors or npz (default: from --out's extension).");
ABSL_FLAG(std::string, prefix, "",
          "import: put before every tensor name of the file.");
ABSL_FLAG(bool, force, false,
          "drop: also when workers share the tensor (they leave it).");
ABSL_FLAG(int64_t, last, 20,
          "history: the newest N records (0: every record kept).");

namespace weightd::ctl {
namespace {

struct Command {
  const char* name;
  const char* args;  // What follows the name.
  const char* help;
  CommandFn run;
  int min_args = 0;
  int max_args = 0;  // -1: any number.
};

constexpr Command kCommands[] = {
    {"health", "",
     "Exit 0 if every server answers SERVING, 1 if not (the gRPC health "
     "check; for probes).",
     Health},
    {"status", "",
     "The server's settings and counters, then its tensors, workers and "
     "barriers (one block per server of a sharded deployment).",
     Status},
    {"tensors", "",
     "Each tensor: shape, version, participants, its policy (consistency/"
     "optimizer/aggregator; every parameter and the bytes it holds with "
     "--json), and who it still waits for: a sync round under way, or a "
     "bounded tensor's slowest workers while a push waits.",
     Tensors},
    {"workers", "",
     "Each joined worker: how long it has been a member, how long since its "
     "last call (its lease lapses at the server's lease timeout), its peer "
     "address and tensors. Lease ids are never printed.",
     Workers},
    {"barriers", "",
     "Each barrier with workers waiting: who waits, k of n, generations "
     "released.",
     Barriers},
    {"history", "TENSOR",
     "Where TENSOR's versions came from: per version, how its round closed "
     "(all, quorum, a leave or a lease expiry; async: a push), the "
     "contributions (worker, sequence, weight), the participants it did "
     "not wait for, and when its first contribution came and it closed. "
     "--last=N: the newest N records (0: all kept).",
     History, 1, 1},
    {"snapshot", "",
     "Write a snapshot now (admin) and print its file (on the server's "
     "disk).",
     Snapshot},
    {"drop", "TENSOR",
     "Remove TENSOR and free its memory (admin). Refused while workers "
     "share it, unless --force: they leave its group, and their calls "
     "naming it get NOT_FOUND.",
     Drop, 1, 1},
    {"export", "[PATTERN...] --out=FILE",
     "Write the shared weights (all, or the tensors whose names match a "
     "PATTERN, * matching anything) to FILE: safetensors or numpy .npz "
     "(--format, else FILE's extension).",
     Export, 0, -1},
    {"import", "FILE",
     "Create tensors from a safetensors or .npz FILE (--prefix=P before "
     "each name): float32, or float64/float16/bfloat16 converted (said "
     "which); other dtypes refused. A tensor that exists with another "
     "shape refuses the whole import; one of the same shape keeps its "
     "value.",
     Import, 1, 1},
};

const Command* FindCommand(const std::string& name) {
  for (const Command& c : kCommands) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string Usage() {
  std::string usage =
      "weightctl COMMAND [ARGS] [--server=ADDR] [--json] [flags]\n"
      "`weightctl COMMAND --help` describes one command.\n";
  for (const Command& c : kCommands) {
    absl::StrAppend(&usage, "  ", c.name, " ", c.args, "\n");
  }
  return usage;
}

// `weightctl COMMAND --help`: the command's own description.
bool PrintedCommandHelp(int argc, char** argv) {
  if (argc < 3) return false;
  const Command* command = FindCommand(argv[1]);
  if (command == nullptr) return false;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 ||
        std::strcmp(argv[i], "-h") == 0) {
      std::printf(
          "weightctl %s %s\n\n%s\n\nEvery command takes --server, --json, "
          "--timeout and the TLS and token flags (weightctl --help).\n",
          command->name, command->args, command->help);
      return true;
    }
  }
  return false;
}

}  // namespace

int Failed(const Context& context, const std::string& what,
           const grpc::Status& status) {
  const bool unavailable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
  const std::string hint =
      unavailable ? "; " + ConnectHint(context.tls, status.error_message())
                  : "";
  // The code's name (UNAUTHENTICATED, PERMISSION_DENIED, ...): what
  // docs/errors.md lists.
  const std::string code = absl::StatusCodeToString(
      static_cast<absl::StatusCode>(status.error_code()));
  std::fprintf(stderr, "weightctl: %s: %s: %s%s\n", what.c_str(), code.c_str(),
               status.error_message().c_str(), hint.c_str());
  return unavailable ? kExitUsage : kExitRefused;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

int Failed(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "weightctl: %s: %s\n", what.c_str(),
               std::string(status.message()).c_str());
  return kExitUsage;
}

}  // namespace weightd::ctl

int main(int argc, char** argv) {
  using weightd::ctl::Command;
  using weightd::ctl::Context;
  if (weightd::ctl::PrintedCommandHelp(argc, argv)) return 0;
  // WEIGHTD_SERVERS sets --server (common/startup.cc); a bad value, flag or
  // WEIGHTD_* variable exits 2 with one line.
  const std::string usage = weightd::ctl::Usage();
  const weightd::Program program{
      "weightctl",
      usage,
      "tools/weightctl.cc",
      {{"timeout",
        [] {
          return absl::GetFlag(FLAGS_timeout) > absl::ZeroDuration()
                     ? std::string()
                     : std::string("must be > 0, e.g. 5s");
        }},
       {"format",
        [] {
          const std::string f = absl::GetFlag(FLAGS_format);
          return f.empty() || f == "safetensors" || f == "npz"
                     ? std::string()
                     : std::string("must be safetensors or npz");
        }},
       {"last",
        [] {
          return absl::GetFlag(FLAGS_last) >= 0
                     ? std::string()
                     : std::string("must be >= 0 (0: every record kept)");
        }}},
      {weightd::kCredentialFlagsFile}};
  std::vector<char*> args = weightd::StartProgram(program, argc, argv);
  if (args.size() < 2) {
    std::fprintf(stderr, "weightctl: give a command (see --help):\n%s",
                 usage.c_str());
    return weightd::ctl::kExitUsage;
  }
  const Command* command = weightd::ctl::FindCommand(args[1]);
  if (command == nullptr) {
    std::fprintf(stderr, "weightctl: unknown command %s (see --help):\n%s",
                 args[1], usage.c_str());
    return weightd::ctl::kExitUsage;
  }
  Context context;
  context.args.assign(args.begin() + 2, args.end());
  const int given = static_cast<int>(context.args.size());
  if (given < command->min_args ||
      (command->max_args >= 0 && given > command->max_args)) {
    std::fprintf(stderr, "weightctl: usage: weightctl %s %s\n", command->name,
                 command->args);
    return weightd::ctl::kExitUsage;
  }
  context.address = absl::GetFlag(FLAGS_server);
  if (context.address.empty()) context.address = "127.0.0.1:7070";
  context.tls = weightd::TlsOptionsFromFlags();
  context.timeout = absl::GetFlag(FLAGS_timeout);
  context.json = absl::GetFlag(FLAGS_json);
  context.out = absl::GetFlag(FLAGS_out);
  context.format = absl::GetFlag(FLAGS_format);
  context.prefix = absl::GetFlag(FLAGS_prefix);
  context.force = absl::GetFlag(FLAGS_force);
  context.last = absl::GetFlag(FLAGS_last);
  absl::StatusOr<std::string> token = weightd::TokenFromFlags();
  if (!token.ok()) return weightd::ctl::Failed("token", token.status());
  context.token = *token;
  // Status and history answers of big deployments pass gRPC's default
  // 4 MiB; the server bounds them (e.g. 10000 history records).
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(256 << 20);
  for (absl::string_view target : absl::StrSplit(context.address, ',')) {
    target = absl::StripAsciiWhitespace(target);
    if (target.empty()) {
      std::fprintf(stderr, "weightctl: --server=%s: an empty address\n",
                   context.address.c_str());
      return weightd::ctl::kExitUsage;
    }
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        weightd::CreateChannel(context.tls, context.token, std::string(target),
                               channel_args);
    if (!channel.ok()) return weightd::ctl::Failed("connect", channel.status());
    context.targets.emplace_back(target);
    context.channels.push_back(*std::move(channel));
  }
  return command->run(context);
}
