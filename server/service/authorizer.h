// Who each call is and whether it may be made: the --auth_policy in force
// (server/service/auth_policy.h), the caller's credentials taken from the
// call (its bearer token, else its client certificate's names), and the
// policy file read again on SIGHUP or when it changes on disk. A new file
// that cannot be used is logged and the policy in force kept.
#ifndef WEIGHTD_SERVER_SERVICE_AUTHORIZER_H_
#define WEIGHTD_SERVER_SERVICE_AUTHORIZER_H_

#include <grpcpp/server_context.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/service/auth_policy.h"

namespace weightd::service {

class Authorizer {
 public:
  // Every caller unrestricted (the server runs without a policy).
  Authorizer() = default;
  // Loads the policy at `path`. INVALID_ARGUMENT if it cannot be used.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Load(
      std::string path, absl::Duration reload_interval);
  Authorizer(const Authorizer&) = delete;
  Authorizer& operator=(const Authorizer&) = delete;

  bool enabled() const { return !path_.empty(); }
  // Whether the policy in force names bearer tokens (a plaintext listener
  // would carry them in clear).
  bool has_tokens() const;

  // The caller of `rpc` and what it may do. UNAUTHENTICATED (no, bad or
  // unknown credentials) or PERMISSION_DENIED (its role does not make
  // `rpc`), each saying what is missing, never a token. Thread-safe.
  absl::StatusOr<Permissions> Admit(const grpc::ServerContextBase& context,
                                    Rpc rpc) const;

  // Reads the file again now (SIGHUP): the new policy is in force for the
  // calls that start after it, or, if it cannot be used, an error line says
  // why and the old one stays. Returns what happened. Thread-safe.
  absl::Status Reload();
  // At most once per reload interval: Reload() if the file changed.
  void Poll(absl::Time now);

 private:
  Authorizer(std::string path, absl::Duration reload_interval)
      : path_(std::move(path)), reload_interval_(reload_interval) {}

  const std::string path_;
  const absl::Duration reload_interval_ = absl::Seconds(10);
  mutable absl::Mutex mu_;
  std::shared_ptr<const AuthPolicy> policy_ ABSL_GUARDED_BY(mu_);
  std::string fingerprint_ ABSL_GUARDED_BY(mu_);  // Of the file, as read.
  absl::Time next_poll_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_AUTHORIZER_H_
