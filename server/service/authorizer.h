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

// What the listener can carry, which decides which policies can work.
struct Transport {
  // Clients present certificates (mutual TLS): certificate_names can match.
  bool client_certificates = false;
  // TCP without TLS: bearer tokens would travel in clear (warned).
  bool plaintext_tcp = false;
};

// A server without a policy has no Authorizer (WeightdService takes null).
class Authorizer {
 public:
  // Loads the policy at `path`. INVALID_ARGUMENT if it cannot be used,
  // which includes a policy naming certificate_names on a `transport`
  // without client certificates (those principals could never call).
  static absl::StatusOr<std::unique_ptr<Authorizer>> Load(
      std::string path, absl::Duration reload_interval, Transport transport);
  Authorizer(const Authorizer&) = delete;
  Authorizer& operator=(const Authorizer&) = delete;

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
  Authorizer(std::string path, absl::Duration reload_interval,
             Transport transport)
      : path_(std::move(path)),
        reload_interval_(reload_interval),
        transport_(transport) {}
  // The policy in `path_` if it can work on transport_ (logging the
  // warnings it deserves).
  absl::StatusOr<std::shared_ptr<const AuthPolicy>> Read() const;

  const std::string path_;
  const absl::Duration reload_interval_ = absl::Seconds(10);
  const Transport transport_;
  // Held across a whole reload (read and commit), so that a SIGHUP and a
  // timed reload cannot commit an older file after a newer one.
  absl::Mutex reload_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  std::shared_ptr<const AuthPolicy> policy_ ABSL_GUARDED_BY(mu_);
  std::string fingerprint_ ABSL_GUARDED_BY(mu_);  // Of the file, as read.
  absl::Time next_poll_ ABSL_GUARDED_BY(mu_);
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_AUTHORIZER_H_
