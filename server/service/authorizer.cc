#include "server/service/authorizer.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/service/file_stamp.h"
#include "spdlog/spdlog.h"

namespace weightd::service {
namespace {

// The names of the caller's client certificate, if TLS verified one.
std::vector<std::string> CertificateNames(
    const grpc::ServerContextBase& context) {
  std::vector<std::string> names;
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return names;
  for (const char* property :
       {GRPC_X509_SAN_PROPERTY_NAME, GRPC_X509_CN_PROPERTY_NAME}) {
    for (const grpc::string_ref& value : auth->FindPropertyValues(property)) {
      names.emplace_back(value.data(), value.size());
    }
  }
  return names;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const AuthPolicy>> Authorizer::Read() const {
  absl::StatusOr<std::shared_ptr<const AuthPolicy>> policy =
      AuthPolicy::Load(path_);
  if (!policy.ok()) return policy.status();
  if ((*policy)->has_certificate_names() && !transport_.client_certificates) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_,
        ": names principals by certificate_names, but this weightd asks "
        "clients for no certificate: give --tls_client_ca (mutual TLS), or "
        "name those principals by token_sha256"));
  }
  if ((*policy)->has_tokens() && transport_.plaintext_tcp) {
    spdlog::warn(
        "auth: the policy {} names bearer tokens, and this weightd serves "
        "plaintext TCP: a token sent there travels in clear. Serve TLS "
        "(--tls_cert, --tls_key), or send tokens over the Unix socket only",
        path_);
  }
  return policy;
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Load(
    std::string path, absl::Duration reload_interval, Transport transport) {
  std::unique_ptr<Authorizer> authorizer(
      new Authorizer(std::move(path), reload_interval, transport));
  const std::string fingerprint = FileStamp(authorizer->path_);
  absl::StatusOr<std::shared_ptr<const AuthPolicy>> policy = authorizer->Read();
  if (!policy.ok()) return policy.status();
  absl::MutexLock lock(&authorizer->mu_);
  authorizer->policy_ = *std::move(policy);
  authorizer->fingerprint_ = fingerprint;
  authorizer->next_poll_ = absl::Now() + reload_interval;
  spdlog::info(
      "auth: policy {} in force: {} principal(s); read again on SIGHUP and "
      "when it changes (checked every {})",
      authorizer->path_, authorizer->policy_->size(),
      absl::FormatDuration(reload_interval));
  return authorizer;
}

absl::StatusOr<Permissions> Authorizer::Admit(
    const grpc::ServerContextBase& context, Rpc rpc) const {
  std::shared_ptr<const AuthPolicy> policy;
  {
    absl::MutexLock lock(&mu_);
    policy = policy_;
  }
  std::optional<absl::string_view> authorization;
  const auto& metadata = context.client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  absl::StatusOr<const Principal*> principal =
      policy->Identify(authorization, CertificateNames(context));
  if (!principal.ok()) return principal.status();
  if (!RoleAllows((*principal)->role, rpc)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal ", (*principal)->name, " (", RoleName((*principal)->role),
        ") may not call ", RpcName(rpc)));
  }
  return Permissions(std::move(policy), *principal);
}

absl::Status Authorizer::Reload() {
  absl::MutexLock reloading(&reload_mu_);
  const std::string fingerprint = FileStamp(path_);
  absl::StatusOr<std::shared_ptr<const AuthPolicy>> policy = Read();
  absl::MutexLock lock(&mu_);
  fingerprint_ = fingerprint;
  if (!policy.ok()) {
    spdlog::error(
        "auth: the policy {} cannot be used, the one read before stays in "
        "force: {}",
        path_, std::string(policy.status().message()));
    return policy.status();
  }
  policy_ = *std::move(policy);
  spdlog::info(
      "auth: policy {} read again: {} principal(s), in force for "
      "calls from now on",
      path_, policy_->size());
  return absl::OkStatus();
}

void Authorizer::Poll(absl::Time now) {
  {
    absl::MutexLock lock(&mu_);
    if (now < next_poll_) return;
    next_poll_ = now + reload_interval_;
    if (FileStamp(path_) == fingerprint_) return;
  }
  (void)Reload();  // Logs what happened.
}

}  // namespace weightd::service
