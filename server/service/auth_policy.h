// Who may call weightd, as whom, on which tensors: the --auth_policy file
// (proto/weightd/v1/auth_policy.proto, JSON) parsed and checked, a caller
// identified from its bearer token or client certificate, and what its
// role allows. No gRPC here: server/service/authorizer.h takes the
// credentials from a call.
#ifndef WEIGHTD_SERVER_SERVICE_AUTH_POLICY_H_
#define WEIGHTD_SERVER_SERVICE_AUTH_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/names.h"

namespace weightd::service {

enum class Role { kWorker, kReader, kAdmin };

// The calls of weightd.v1.Weightd (the health service is open to all).
enum class Rpc {
  kJoin,
  kPush,
  kPull,
  kPushPull,
  kLeave,
  kHeartbeat,
  kBarrier,
  kGetStatus,
  kTakeSnapshot,
  kGetHistory,
  kDropTensor,
  kAttachSegment,
  kPushSegment,
  kPullSegment,
};

absl::string_view RpcName(Rpc rpc);     // "Join"
absl::string_view RoleName(Role role);  // "worker"

// Whether `role` may make `rpc` at all (the tensors, worker ids and leases
// of the call are checked by Permissions).
bool RoleAllows(Role role, Rpc rpc);

// A principal's patterns are common/names.h's.
using ::weightd::PatternMatches;

struct Principal {
  std::string name;
  Role role = Role::kWorker;
  std::vector<std::string> tensors;     // Patterns (worker, reader).
  std::vector<std::string> worker_ids;  // Patterns (worker).
};

class AuthPolicy {
 public:
  // Parses the JSON of a policy file; `source` names it in messages.
  // INVALID_ARGUMENT saying what is wrong: JSON that does not parse or has
  // unknown fields, a principal without a name, role or credential, a
  // duplicate name, certificate name or token hash, a token hash that is
  // not 64 hex digits, a worker without worker_ids, a worker or reader
  // without tensors.
  static absl::StatusOr<std::shared_ptr<const AuthPolicy>> Parse(
      absl::string_view json, absl::string_view source);
  // Reads and parses `path`; INVALID_ARGUMENT also if it cannot be read.
  static absl::StatusOr<std::shared_ptr<const AuthPolicy>> Load(
      const std::string& path);

  // Who the caller is. A bearer token, if the call carries an
  // authorization header (`authorization`: its value, "Bearer TOKEN"),
  // decides alone; else the client certificate's names (subjectAltNames
  // and common name; empty without one). UNAUTHENTICATED saying what is
  // missing or unknown, never the token: a malformed header, a token of no
  // principal, a certificate of no principal, no credentials at all. The
  // pointer lives as long as this policy.
  absl::StatusOr<const Principal*> Identify(
      std::optional<absl::string_view> authorization,
      absl::Span<const std::string> certificate_names) const;

  std::size_t size() const { return principals_.size(); }
  bool has_tokens() const { return !tokens_.empty(); }
  bool has_certificate_names() const { return !certificate_names_.empty(); }

 private:
  AuthPolicy() = default;

  struct Token {
    unsigned char sha256[32];
    std::size_t principal;
  };
  std::vector<Principal> principals_;
  std::vector<std::pair<std::string, std::size_t>> certificate_names_;
  std::vector<Token> tokens_;
};

// What one caller may do in one call: the principal the policy found, or
// anything when the server runs without a policy. Cheap to copy; keeps its
// policy alive.
class Permissions {
 public:
  // No policy: every call, tensor, worker id and lease.
  static Permissions Unrestricted() { return Permissions(nullptr, nullptr); }
  Permissions(std::shared_ptr<const AuthPolicy> policy,
              const Principal* principal)
      : policy_(std::move(policy)), principal_(principal) {}

  // "" when unrestricted.
  const std::string& principal_name() const;
  // Unrestricted, or an admin: sees lease ids, uses any lease.
  bool admin() const {
    return principal_ == nullptr || principal_->role == Role::kAdmin;
  }
  // PERMISSION_DENIED naming the principal and what it lacks.
  absl::Status MayJoinAs(absl::string_view worker_id) const;
  absl::Status MayUseTensor(absl::string_view name) const;
  // A lease created by `owner` for worker `worker_id`. A lease no
  // principal created (one restored from a snapshot of a server without a
  // policy) may be used by a principal allowed its worker id.
  absl::Status MayUseLease(std::uint64_t lease_id, absl::string_view owner,
                           absl::string_view worker_id) const;

 private:
  std::shared_ptr<const AuthPolicy> policy_;
  const Principal* principal_;
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_AUTH_POLICY_H_
