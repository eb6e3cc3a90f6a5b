// weightd: the parameter server daemon.
//
// flags / WEIGHTD_* env -> ServerOptions -> Server -> wait for SIGTERM/SIGINT.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/policy_spec.h"
#include "common/startup.h"
#include "common/wire.h"
#include "server/core/policy.h"
#include "server/service/grpc_log.h"
#include "server/service/server.h"
#include "server/storage/crash_point_file_system.h"
#include "server/storage/file_system.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "Address to serve gRPC on: HOST:PORT (PORT 0 picks a free port) or "
          "unix:PATH for a Unix-domain socket.");
ABSL_FLAG(std::string, unix_socket, "",
          "Also listen on this Unix-domain socket path (workers on the same "
          "host, or sharing a volume in Compose, dial unix:PATH). Empty: "
          "TCP only.");
ABSL_FLAG(std::string, unix_socket_mode, "0660",
          "Permissions of the --unix_socket file, in octal: who on this "
          "host may connect (owner and group by default).");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain to serve TLS with on --listen (with "
          "--tls_key). Re-read when it changes (--tls_reload_interval): new "
          "connections get the new one, open ones keep theirs.");
ABSL_FLAG(std::string, tls_key, "",
          "PEM private key of --tls_cert (unencrypted; protect it by file "
          "permissions).");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM bundle of CAs: with it, every client must present a "
          "certificate signed by one of them (mutual TLS).");
ABSL_FLAG(absl::Duration, tls_reload_interval, absl::Seconds(10),
          "How often the TLS files are read again.");
ABSL_FLAG(std::string, auth_policy, "",
          "JSON file of principals, roles and name patterns "
          "(proto/weightd/v1/auth_policy.proto, docs/security.md): who may "
          "make which calls. Read again on SIGHUP and when it changes "
          "(every --auth_reload_interval); a new file that cannot be used is "
          "logged and the old policy kept. Empty: every client may make "
          "every call.");
ABSL_FLAG(absl::Duration, auth_reload_interval, absl::Seconds(10),
          "How often the --auth_policy file is checked for changes.");
ABSL_FLAG(bool, insecure, false,
          "Serve plaintext on --listen, on purpose (e.g. a private network "
          "or a test). Without TLS flags and without this, weightd serves "
          "plaintext and warns at start.");
ABSL_FLAG(bool, shared_memory, true,
          "Let workers on this host move their values through shared memory "
          "(a memfd each hands over; docs/protocol.md, section 11). false: "
          "every worker uses the gRPC stream.");
ABSL_FLAG(bool, pace_pushes, true,
          "Stop reading a sync round's push while it is more than 2 MiB "
          "ahead of the round's slowest push, so that the round's result "
          "streams at the link's rate (docs/design.md, \"Pacing a round's "
          "pushes\"). false: read every push as fast as it arrives.");
ABSL_FLAG(std::string, shard_index, "0",
          "This server's index among --shard_count shards, 0..count-1; "
          "'hostname' takes the number after the host name's last '-' (a "
          "Kubernetes StatefulSet pod's ordinal, e.g. weightd-2).");
ABSL_FLAG(uint32_t, shard_count, 1,
          "Servers the tensors are sharded over; every shard and every "
          "client must agree on it.");
ABSL_FLAG(std::string, mode, "sync",
          "sync: a tensor's round closes when every worker holding it has "
          "pushed; async: every push is applied on arrival.");
ABSL_FLAG(double, server_lr, 1.0,
          "Server learning rate for delta updates: value += server_lr * "
          "(mean) delta.");
ABSL_FLAG(double, async_mix, 0.5,
          "Async weights pushes: value += async_mix * (pushed - value). In "
          "(0, 1].");
ABSL_FLAG(std::string, policy, "",
          "How a tensor combines pushes when its creating worker's "
          "declaration names nothing else (docs/algorithms.md), over "
          "--mode, --server_lr and --async_mix: e.g. \"optimizer=adam "
          "lr=0.01\", \"aggregator=median\", \"consistency=bounded "
          "staleness=2\".");
ABSL_FLAG(std::string, policy_file, "",
          "File of per-tensor defaults: lines NAME_GLOB POLICY (e.g. "
          "\"hidden/* optimizer=adam\"), '*' any run of characters, the "
          "first match over --policy; '#' comments. Read at start.");
ABSL_FLAG(uint64_t, max_buffered_bytes, uint64_t{1} << 30,
          "Median, trimmed_mean and clipped_mean hold a copy of every "
          "participant's push (participants x tensor bytes per tensor); a "
          "Join that would take their sum past this gets RESOURCE_EXHAUSTED. "
          "0: no limit.");
ABSL_FLAG(uint64_t, chunk_bytes, weightd::kDefaultChunkBytes,
          "Size of the chunks tensors travel in, in bytes; a multiple of 4 "
          "between 4 KiB and 16 MiB.");
ABSL_FLAG(uint64_t, max_tensor_bytes, uint64_t{4} << 30,
          "Largest tensor a worker may declare, in bytes.");
ABSL_FLAG(uint64_t, max_total_bytes, 0,
          "Largest sum of all tensors' sizes with their optimizer state "
          "(adam: 4 floats per element beside the value, momentum 2), in "
          "bytes; a Join that would exceed it gets RESOURCE_EXHAUSTED. A "
          "sync tensor also holds its round's accumulator (one more value). "
          "0: no limit.");
ABSL_FLAG(uint32_t, max_workers, 10000,
          "Most workers that may be members at once; a Join of another gets "
          "RESOURCE_EXHAUSTED. 0: no limit.");
ABSL_FLAG(uint32_t, max_tensors_per_principal, 0,
          "Most tensors the joins of one --auth_policy principal may create; "
          "a Join over it gets RESOURCE_EXHAUSTED. 0: no limit.");
ABSL_FLAG(uint64_t, max_bytes_per_principal, 0,
          "Most bytes of tensors the joins of one --auth_policy principal may "
          "create; a Join over it gets RESOURCE_EXHAUSTED. 0: no limit.");
ABSL_FLAG(uint32_t, max_calls, 40000,
          "Most calls served at once, over all connections; another gets "
          "UNAVAILABLE (clients retry with backoff). At least 3 x "
          "--max_workers. 0: no limit.");
ABSL_FLAG(uint32_t, max_streams_per_connection, 100,
          "Most calls one connection may have open at once (HTTP/2 "
          "SETTINGS_MAX_CONCURRENT_STREAMS); clients queue beyond it.");
ABSL_FLAG(uint64_t, max_receive_memory, uint64_t{1} << 30,
          "Memory, in bytes, gRPC may hold for connections and the data "
          "they bring in before calls consume it (its resource quota); "
          "under pressure it stops reading, then cancels streams with "
          "RESOURCE_EXHAUSTED. At least 4 x (2 x --chunk_bytes + 8 MiB).");
ABSL_FLAG(absl::Duration, stall_timeout, absl::Seconds(30),
          "How long a Join, Push or PushPull may send nothing in the middle "
          "of its stream before the call is cut (DEADLINE_EXCEEDED; weightd's "
          "clients send the push again): a stalled pusher holds no round and "
          "no memory longer. inf: never.");
ABSL_FLAG(absl::Duration, min_client_ping_interval, absl::Seconds(5),
          "Client pings without data closer together than this are strikes; "
          "after two the connection is closed (GOAWAY too_many_pings). "
          "weightd's clients ping every 20s at most.");
ABSL_FLAG(absl::Duration, max_connection_idle, absl::Minutes(10),
          "A connection with no call for this long is closed (a client "
          "reconnects for its next call). inf: never.");
ABSL_FLAG(absl::Duration, handshake_timeout, absl::Seconds(10),
          "A new connection must finish its TLS and HTTP/2 handshakes "
          "within this, or it is closed.");
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; port "
          "0: any free one, logged). Plaintext HTTP without authentication: "
          "bind it to an address only the scraper reaches. Empty: none.");
ABSL_FLAG(std::uint32_t, metrics_tensor_series, 0,
          "Also serve per-tensor series (weightd_tensor_*{tensor=...}) for "
          "at most this many tensors, the first by name: each is a series "
          "Prometheus stores. 0: none.");
ABSL_FLAG(std::string, round_quorum, "all",
          "Sync mode: how many of a tensor's workers must have pushed before "
          "its round may close without the rest, once --round_timeout has "
          "passed since the round's first push: a count (3), a fraction "
          "(0.75, rounded up) or all. Pushes of the others to that round "
          "get ABORTED; the client then pulls the current value.");
ABSL_FLAG(absl::Duration, round_timeout, absl::ZeroDuration(),
          "With --round_quorum: how long a round waits for the workers "
          "beyond its quorum, from its first push. 0s: it closes as soon as "
          "the quorum has pushed.");
ABSL_FLAG(std::uint32_t, history_per_tensor, 64,
          "Each tensor keeps the record of its last N published versions "
          "(who contributed, how the round closed, when; weightctl history), "
          "in snapshots too. About 100 bytes plus 60 per contribution each. "
          "0: none. At most 1000000.");
ABSL_FLAG(bool, allow_non_finite, false,
          "Accept NaN and Inf in pushed values (rejected by default).");
ABSL_FLAG(absl::Duration, lease_timeout, absl::Seconds(6),
          "A worker that makes no call (push, barrier, heartbeat) for this "
          "long is dropped from its sharing groups; sync rounds stop waiting "
          "for it. Clients heartbeat every third of it.");
ABSL_FLAG(std::string, snapshot_dir, "",
          "Directory for snapshots. At start the newest usable one is loaded "
          "(a torn or corrupt one is skipped and logged); more are written "
          "per --snapshot_every and a final one on SIGTERM/SIGINT. Empty: "
          "no snapshots, the state lives in memory only.");
ABSL_FLAG(std::string, snapshot_every, "10",
          "Snapshot cadence with --snapshot_dir: a number of rounds of the "
          "job (how far the most advanced tensor moved, whatever the number "
          "of tensors; e.g. 10), or a duration (e.g. 30s, 5m; only if a "
          "round closed since the last snapshot). A kill -9 loses at most "
          "this much training (the default: 10 rounds), plus the open round.");
ABSL_FLAG(std::string, restore, "",
          "Start from this snapshot file (it must be usable), e.g. one "
          "copied from another server's --snapshot_dir.");
ABSL_FLAG(std::string, crash_at, "",
          "Fault injection for crash tests: SIGKILL this process at the "
          "named point of a snapshot write (snapshot_mid_write, "
          "snapshot_before_fsync, snapshot_after_fsync, "
          "snapshot_after_rename). Never set it in production.");
ABSL_FLAG(std::string, log_level, "info",
          "Log level: trace, debug, info, warn, error, off.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "On SIGTERM/SIGINT, how long in-flight calls may finish before "
          "they are cancelled.");
ABSL_FLAG(std::string, ready_file, "",
          "If set, write the address clients can dial to this file once "
          "serving (for scripts that start weightd on port 0).");

namespace {

constexpr const char* kUsage =
    "weightd: holds shared weight tensors; workers push what they learned "
    "and pull the average.\n\n"
    "Usage: weightd [--flag=value ...]\n"
    "Every flag can also be set through the environment as WEIGHTD_<FLAG> "
    "(e.g. WEIGHTD_LISTEN=0.0.0.0:7070); the command line wins.";

int Fail(const std::string& message) {
  std::fprintf(stderr, "weightd: %s\n", message.c_str());
  return weightd::kExitBadConfiguration;
}

// What is wrong with a --listen value, or "": HOST:PORT with PORT in
// 0..65535 and an IPv6 HOST in brackets, or unix:PATH. gRPC itself would
// serve "127.0.0.1" on its default port 443, and "HOST:99999" on another.
std::string ListenProblem(const std::string& address) {
  if (absl::StartsWith(address, "unix:") ||
      absl::StartsWith(address, "unix-abstract:")) {
    return address.substr(address.find(':') + 1).empty()
               ? "needs a path after unix:, e.g. unix:/run/weightd.sock"
               : "";
  }
  const std::size_t colon = address.rfind(':');
  const std::size_t bracket = address.rfind(']');
  if (colon == std::string::npos ||
      (bracket != std::string::npos && colon < bracket)) {
    return "needs a port, e.g. " + address + ":7070 (0 picks a free one)";
  }
  const std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.find(':') != std::string::npos &&
      !(absl::StartsWith(host, "[") && absl::EndsWith(host, "]"))) {
    return "an IPv6 address needs brackets, e.g. [::1]:7070";
  }
  std::uint32_t number = 0;
  if (port.empty() ||
      port.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port, &number) || number > 65535) {
    return "the port must be a number from 0 to 65535 (0 picks a free one), "
           "e.g. " +
           host + ":7070";
  }
  return "";
}

// "" if `dir` is a directory weightd can write files in (created if
// `create`), else what is wrong and the fix.
std::string DirectoryProblem(const std::string& dir, bool create) {
  const absl::Status s = weightd::ProbeWritableDirectory(dir, create);
  if (s.ok()) return "";
  return absl::StrCat(s.message(), "; give a directory weightd can write");
}

// Each connection holds a file descriptor, and the soft limit is often
// 1,024 where the hard one is far higher: take the hard one, and say what
// it is.
void RaiseOpenFileLimit() {
  struct rlimit limit;
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  if (limit.rlim_cur < limit.rlim_max) {
    struct rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max == RLIM_INFINITY
                          ? std::max<rlim_t>(limit.rlim_cur, rlim_t{1} << 20)
                          : limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur < 4096) {
    spdlog::warn(
        "open files: at most {} (RLIMIT_NOFILE): each connection holds one, "
        "so about that many workers and idle connections fill it and new "
        "ones are refused; raise it (ulimit -n, LimitNOFILE= in systemd)",
        static_cast<unsigned long long>(limit.rlim_cur));
  } else {
    spdlog::info("open files: at most {} (RLIMIT_NOFILE)",
                 static_cast<unsigned long long>(limit.rlim_cur));
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, so absl::Mutex checks lock order
  // on every nested acquisition (a graph of all locks held). The tests keep
  // the check (thread-safety analysis and TSan too); the daemon does not
  // pay for it: it was 9% of weightd's CPU in rounds of 10,000 tensors.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Values that parse but cannot work; the rules of the store's options
  // (chunk_bytes, server_lr, async_mix, lease_timeout, ...) are the core's,
  // checked by Server::Start, and negative durations are refused for every
  // flag by StartProgram.
  const weightd::Program program{
      "weightd",
      kUsage,
      "server/main.cc",
      {{"listen", [] { return ListenProblem(absl::GetFlag(FLAGS_listen)); }},
       {"history_per_tensor",
        [] {
          return absl::GetFlag(FLAGS_history_per_tensor) > 1000000
                     ? std::string("must be <= 1000000 (0: no records)")
                     : std::string();
        }},
       {"shard_count",
        [] {
          return absl::GetFlag(FLAGS_shard_count) < 1
                     ? std::string("must be >= 1 (1: not sharded)")
                     : std::string();
        }},
       {"snapshot_dir",
        [] {
          const std::string dir = absl::GetFlag(FLAGS_snapshot_dir);
          return dir.empty() ? std::string() : DirectoryProblem(dir, true);
        }},
       {"crash_at",
        [] {
          const std::string point = absl::GetFlag(FLAGS_crash_at);
          if (point.empty()) return std::string();
          const absl::StatusOr<weightd::storage::CrashPoint> parsed =
              weightd::storage::ParseCrashPoint(point);
          return parsed.ok() ? std::string()
                             : std::string(parsed.status().message());
        }},
       {"ready_file", [] {
          const std::string file = absl::GetFlag(FLAGS_ready_file);
          if (file.empty()) return std::string();
          const std::size_t slash = file.rfind('/');
          const std::string dir =
              slash == std::string::npos
                  ? "."
                  : file.substr(0, std::max<std::size_t>(slash, 1));
          return DirectoryProblem(dir, false);
        }}}};
  std::vector<char*> positional = weightd::StartProgram(program, argc, argv);
  if (positional.size() > 1) {
    return Fail(absl::StrCat("unexpected argument \"", positional[1],
                             "\"; see --help"));
  }

  const std::string level = absl::GetFlag(FLAGS_log_level);
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return Fail(absl::StrCat("--log_level=", level, " is not a log level"));
  }
  spdlog::set_level(parsed);

  weightd::service::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.unix_socket = absl::GetFlag(FLAGS_unix_socket);
  const std::string socket_mode = absl::GetFlag(FLAGS_unix_socket_mode);
  char* mode_end = nullptr;
  options.unix_socket_mode = static_cast<std::uint32_t>(
      std::strtoul(socket_mode.c_str(), &mode_end, 8));
  if (socket_mode.empty() || *mode_end != '\0' ||
      options.unix_socket_mode > 0777) {
    return Fail(absl::StrCat("--unix_socket_mode=", socket_mode,
                             ": use an octal mode from 0 to 0777, e.g. 0660"));
  }
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.tls.reload_interval = absl::GetFlag(FLAGS_tls_reload_interval);
  const bool tls = !options.tls.cert_file.empty() ||
                   !options.tls.key_file.empty() ||
                   !options.tls.client_ca_file.empty();
  if (tls && absl::GetFlag(FLAGS_insecure)) {
    return Fail(
        "--insecure and TLS flags (--tls_cert, --tls_key, --tls_client_ca) "
        "contradict each other: give one or the other");
  }
  if (tls && (options.tls.cert_file.empty() || options.tls.key_file.empty())) {
    return Fail(
        "TLS needs both --tls_cert and --tls_key (--tls_client_ca adds "
        "client certificates to them)");
  }
  options.auth_policy = absl::GetFlag(FLAGS_auth_policy);
  options.auth_reload_interval = absl::GetFlag(FLAGS_auth_reload_interval);
  if (options.auth_reload_interval < absl::Seconds(1)) {
    return Fail(absl::StrCat("--auth_reload_interval=",
                             absl::FormatDuration(options.auth_reload_interval),
                             ": must be at least 1s"));
  }
  if (options.tls.reload_interval < absl::Seconds(1)) {
    return Fail(absl::StrCat("--tls_reload_interval=",
                             absl::FormatDuration(options.tls.reload_interval),
                             ": must be at least 1s"));
  }
  options.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  options.pace_pushes = absl::GetFlag(FLAGS_pace_pushes);
  std::string shard = absl::GetFlag(FLAGS_shard_index);
  if (shard == "hostname") {
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    const std::string name = host;
    shard = name.substr(name.rfind('-') + 1);  // Whole name if no '-'.
    if (!absl::SimpleAtoi(shard, &options.shard_index)) {
      return Fail(absl::StrCat("--shard_index=hostname: host name ", name,
                               " does not end in -<number>"));
    }
  } else if (!absl::SimpleAtoi(shard, &options.shard_index)) {
    return Fail(
        absl::StrCat("--shard_index=", shard, ": use a number or 'hostname'"));
  }
  options.shard_count = absl::GetFlag(FLAGS_shard_count);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "sync") {
    options.store.mode = weightd::core::Mode::kSync;
  } else if (mode == "async") {
    options.store.mode = weightd::core::Mode::kAsync;
  } else {
    return Fail(absl::StrCat("--mode=", mode, ": use sync or async"));
  }
  options.store.server_lr = absl::GetFlag(FLAGS_server_lr);
  options.store.async_mix = absl::GetFlag(FLAGS_async_mix);
  {
    absl::StatusOr<weightd::PolicySpec> policy =
        weightd::ParsePolicySpec(absl::GetFlag(FLAGS_policy));
    if (!policy.ok()) {
      return Fail(absl::StrCat("--policy: ", policy.status().message()));
    }
    options.store.default_policy = *std::move(policy);
    const std::string file = absl::GetFlag(FLAGS_policy_file);
    if (!file.empty()) {
      std::ifstream in(file);
      std::string contents((std::istreambuf_iterator<char>(in)),
                           std::istreambuf_iterator<char>());
      if (!in.good() && !in.eof()) {
        return Fail(absl::StrCat("--policy_file=", file, ": cannot read it"));
      }
      auto patterns = weightd::core::ParsePolicyFile(contents);
      if (!patterns.ok()) {
        return Fail(absl::StrCat("--policy_file=", file, ": ",
                                 patterns.status().message()));
      }
      options.store.policy_patterns = *std::move(patterns);
    }
  }
  options.store.max_buffered_bytes = absl::GetFlag(FLAGS_max_buffered_bytes);
  options.store.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  options.store.max_tensor_bytes = absl::GetFlag(FLAGS_max_tensor_bytes);
  options.store.allow_non_finite = absl::GetFlag(FLAGS_allow_non_finite);
  options.store.lease_timeout = absl::GetFlag(FLAGS_lease_timeout);
  options.store.max_total_bytes = absl::GetFlag(FLAGS_max_total_bytes);
  options.store.max_workers = absl::GetFlag(FLAGS_max_workers);
  options.store.max_tensors_per_principal =
      absl::GetFlag(FLAGS_max_tensors_per_principal);
  options.store.max_bytes_per_principal =
      absl::GetFlag(FLAGS_max_bytes_per_principal);
  options.limits.max_calls = absl::GetFlag(FLAGS_max_calls);
  options.limits.max_streams_per_connection =
      absl::GetFlag(FLAGS_max_streams_per_connection);
  options.limits.max_receive_memory = absl::GetFlag(FLAGS_max_receive_memory);
  options.limits.stall_timeout = absl::GetFlag(FLAGS_stall_timeout);
  options.limits.min_client_ping_interval =
      absl::GetFlag(FLAGS_min_client_ping_interval);
  options.limits.max_connection_idle = absl::GetFlag(FLAGS_max_connection_idle);
  options.limits.handshake_timeout = absl::GetFlag(FLAGS_handshake_timeout);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.metrics.tensor_series = absl::GetFlag(FLAGS_metrics_tensor_series);
  options.store.round_timeout = absl::GetFlag(FLAGS_round_timeout);
  options.store.history_per_tensor = absl::GetFlag(FLAGS_history_per_tensor);
  const std::string quorum = absl::GetFlag(FLAGS_round_quorum);
  std::uint32_t quorum_count = 0;
  double quorum_fraction = 0;
  if (quorum == "all") {
    options.store.round_quorum = {};
  } else if (absl::SimpleAtoi(quorum, &quorum_count) && quorum_count > 0) {
    options.store.round_quorum.count = quorum_count;
  } else if (absl::SimpleAtod(quorum, &quorum_fraction) &&
             quorum_fraction > 0 && quorum_fraction <= 1) {
    options.store.round_quorum.fraction = quorum_fraction;
  } else {
    return Fail(absl::StrCat("--round_quorum=", quorum,
                             ": use a count (3), a fraction (0.75) or all"));
  }
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.snapshot_dir = absl::GetFlag(FLAGS_snapshot_dir);
  options.restore_path = absl::GetFlag(FLAGS_restore);
  // Fault injection: the snapshot writes die at the named step.
  std::unique_ptr<weightd::storage::CrashPointFileSystem> crash_points;
  if (const std::string point = absl::GetFlag(FLAGS_crash_at); !point.empty()) {
    auto created = weightd::storage::CrashPointFileSystem::Create(
        weightd::storage::DefaultFileSystem(), point);
    if (!created.ok()) {
      return Fail(
          absl::StrCat("--crash_at=", point, ": ", created.status().message()));
    }
    crash_points = std::move(*created);
    options.file_system = crash_points.get();
  }
  const std::string every = absl::GetFlag(FLAGS_snapshot_every);
  std::uint64_t rounds = 0;
  absl::Duration interval;
  if (absl::SimpleAtoi(every, &rounds) && rounds > 0) {
    options.snapshot_every.every_rounds = rounds;
  } else if (absl::ParseDuration(every, &interval) &&
             interval > absl::ZeroDuration()) {
    options.snapshot_every.every = interval;
  } else {
    return Fail(
        absl::StrCat("--snapshot_every=", every,
                     ": use a number of rounds (100) or a duration (30s)"));
  }

  // Signals are taken synchronously by sigwait below; block them before any
  // gRPC thread exists so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);  // Reload the auth policy.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  options.on_listening = [](const std::string& address) {
    spdlog::info(
        "listening on {}; loading state (calls get UNAVAILABLE "
        "until then)",
        address);
  };
  RaiseOpenFileLimit();
  weightd::service::RouteGrpcLogs();
  auto server = weightd::service::Server::Start(options);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  if (!tls && !absl::StartsWith(options.listen_address, "unix")) {
    if (absl::GetFlag(FLAGS_insecure)) {
      spdlog::info("plaintext on {} (--insecure)", (*server)->address());
    } else {
      spdlog::warn(
          "serving plaintext on {}: whoever reaches this port can join as "
          "any worker, read and overwrite every tensor, and see the calls "
          "in clear. Give --tls_cert and --tls_key (docs/security.md), or "
          "--insecure to say plaintext is intended",
          (*server)->address());
    }
  }
  spdlog::info(
      "weightd serving on {}{} (mode={} chunk_bytes={} server_lr={} "
      "shard={}/{})",
      (*server)->address(),
      options.unix_socket.empty() ? "" : " and unix:" + options.unix_socket,
      mode, options.store.chunk_bytes, options.store.server_lr,
      options.shard_index, options.shard_count);
  const weightd::core::PolicyDefaults& defaults =
      (*server)->store().policy_defaults();
  spdlog::info(
      "policy: a tensor gets \"{}\" unless its creating worker declares "
      "otherwise (--policy){}",
      weightd::core::PolicyText(defaults.fallback()),
      defaults.patterns().empty() ? "" : ", or the first of these it matches:");
  for (const auto& [pattern, policy] : defaults.patterns()) {
    spdlog::info("policy: {} -> \"{}\" (--policy_file)", pattern,
                 weightd::core::PolicyText(policy));
  }
  // gRPC clients refuse messages over 4 MiB unless told otherwise; a pull
  // streams chunks of chunk_bytes plus a small header.
  if (options.store.chunk_bytes > (std::uint64_t{4} << 20) - (64 << 10)) {
    spdlog::warn(
        "--chunk_bytes={} is near or above gRPC's default 4 MiB "
        "receive limit: clients other than weightd's must raise it "
        "(e.g. grpc.max_receive_message_length), or their Pulls fail "
        "(docs/protocol.md)",
        options.store.chunk_bytes);
  }

  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (!ready_file.empty()) {
    // Write then rename, so a reader never sees a partial address.
    const std::string tmp = ready_file + ".tmp";
    std::ofstream(tmp) << (*server)->address() << "\n";
    if (std::rename(tmp.c_str(), ready_file.c_str()) != 0) {
      return Fail(absl::StrCat("cannot write --ready_file ", ready_file));
    }
  }

  int signal_number = 0;
  while (sigwait(&signals, &signal_number) == 0 && signal_number == SIGHUP) {
    spdlog::info("received SIGHUP: reading the auth policy again");
    (void)(*server)->ReloadAuthPolicy();  // Logs what happened.
  }
  spdlog::info("received {}; draining (grace {})",
               signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
               absl::FormatDuration(options.shutdown_grace));
  (*server)->Shutdown();
  if (!(*server)->final_snapshot().ok()) {
    // The state since the last good snapshot is lost: say so in the exit
    // status too, so that a supervisor notices.
    spdlog::error("weightd stopped without its final snapshot: {}",
                  (*server)->final_snapshot().ToString());
    return 1;
  }
  spdlog::info("weightd stopped");
  return 0;
}
