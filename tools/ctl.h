// weightctl's subcommands: what each gets, and the helpers they share.
// tools/weightctl.cc parses the flags and dispatches; ctl_status.cc holds
// the commands that read and change the daemon's state, ctl_transfer.cc
// export and import.
#ifndef WEIGHTD_TOOLS_CTL_H_
#define WEIGHTD_TOOLS_CTL_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/types.h"
#include "weightd/v1/weightd.grpc.pb.h"

namespace weightd::ctl {

// Exit codes: 0 ok, 1 the server answered with a failure (or is not
// serving), 2 usage, connection or local file errors. `health` exits 1 for
// an unreachable server too (a Docker HEALTHCHECK must exit 0 or 1).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRefused = 1;
inline constexpr int kExitUsage = 2;

// The flags, resolved, and a channel to each server.
struct Context {
  // --server, else $WEIGHTD_SERVERS, else 127.0.0.1:7070: one server, or
  // the shards of a sharded deployment (comma-separated).
  std::string address;
  // The servers of `address` in the order given, a channel to each.
  std::vector<std::string> targets;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  TlsOptions tls;
  std::string token;
  absl::Duration timeout = absl::Seconds(5);
  bool json = false;  // --json: one JSON document on stdout.
  // The command's positional arguments (after the command's name).
  std::vector<std::string> args;
  // Command flags (tools/weightctl.cc defines them all).
  std::string out;        // export --out
  std::string format;     // export --format: safetensors, npz (else by --out)
  std::string prefix;     // import --prefix
  bool force = false;     // drop --force
  std::int64_t last = 0;  // history --last

  // Now + timeout, for a call's deadline.
  std::chrono::system_clock::time_point Deadline() const {
    return std::chrono::system_clock::now() +
           absl::ToChronoMilliseconds(timeout);
  }
};

// Prints "weightctl: WHAT: CODE: message" (and, for UNAVAILABLE, a hint on
// the connection) to stderr; returns kExitUsage for UNAVAILABLE (the server
// could not be reached), else kExitRefused.
int Failed(const Context& context, const std::string& what,
           const grpc::Status& status);
// The same for a local error: "weightctl: WHAT: message"; kExitUsage.
int Failed(const std::string& what, const absl::Status& status);

// GetStatus of every server, in --server's order, lease ids cleared.
// Returns kExitOk, or the exit code of the first failure (printed).
int StatusOfAll(const Context& context, bool tensors, bool workers,
                std::vector<v1::GetStatusResponse>* responses);

// Prints `rows` (the first is the header) as columns padded to their
// widest cell, two spaces apart.
void PrintTable(const std::vector<std::vector<std::string>>& rows);

using CommandFn = int (*)(const Context&);

// ctl_status.cc
int Health(const Context& context);
int Status(const Context& context);
int Tensors(const Context& context);
int Workers(const Context& context);
int Barriers(const Context& context);
int History(const Context& context);
int Snapshot(const Context& context);
int Drop(const Context& context);
// ctl_transfer.cc
int Export(const Context& context);
int Import(const Context& context);

}  // namespace weightd::ctl

#endif  // WEIGHTD_TOOLS_CTL_H_
