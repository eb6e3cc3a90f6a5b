#include "server/service/server_tls.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/tls.h"
#include "server/service/file_stamp.h"
#include "spdlog/spdlog.h"

namespace weightd::service {
namespace {

// The stamps of the three files (file_stamp.h).
std::string Fingerprint(const TlsFiles& files) {
  return absl::StrCat(FileStamp(files.cert_file), ";",
                      FileStamp(files.key_file), ";",
                      FileStamp(files.client_ca_file));
}

// What the server presents and whom it lets in, for the log; or why the
// files cannot be used.
absl::StatusOr<std::string> Check(const TlsFiles& files, absl::Time now) {
  absl::StatusOr<CertificateSummary> served =
      CheckKeyPair(files.cert_file, files.key_file, now);
  if (!served.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS certificate and key: ", served.status().message()));
  }
  std::string clients = "any client (no client certificate asked for)";
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::vector<CertificateSummary>> cas =
        ReadCertificates(files.client_ca_file);
    if (!cas.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS client CA: ", cas.status().message()));
    }
    std::vector<std::string> names;
    for (const CertificateSummary& ca : *cas) names.push_back(ca.subject);
    clients = absl::StrCat("clients with a certificate signed by ",
                           absl::StrJoin(names, " or "), " (mutual TLS)");
  }
  return absl::StrCat("certificate ", Describe(*served), "; admits ", clients);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerTls>> ServerTls::Create(TlsFiles files) {
  if (files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "a TLS certificate needs its private key too");
  }
  const std::string fingerprint = Fingerprint(files);
  absl::StatusOr<std::string> what = Check(files, absl::Now());
  if (!what.ok()) return what.status();
  const unsigned interval = static_cast<unsigned>(
      std::max<std::int64_t>(1, absl::ToInt64Seconds(files.reload_interval)));
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          files.key_file, files.cert_file, files.client_ca_file, interval);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files.client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  std::unique_ptr<ServerTls> tls(new ServerTls(std::move(files), fingerprint));
  tls->credentials_ = grpc::experimental::TlsServerCredentials(options);
  if (tls->credentials_ == nullptr) {
    return absl::InternalError("gRPC could not make TLS server credentials");
  }
  {
    absl::MutexLock lock(&tls->mu_);
    tls->next_poll_ = absl::Now() + tls->files_.reload_interval;
  }
  spdlog::info("TLS: serving {}; the files are read again every {}", *what,
               absl::FormatDuration(tls->files_.reload_interval));
  return tls;
}

void ServerTls::Poll(absl::Time now) {
  {
    absl::MutexLock lock(&mu_);
    if (now < next_poll_) return;
    next_poll_ = now + files_.reload_interval;
    std::string fingerprint = Fingerprint(files_);
    if (fingerprint == fingerprint_) return;
    fingerprint_ = std::move(fingerprint);
  }
  const absl::StatusOr<std::string> what = Check(files_, now);
  if (what.ok()) {
    spdlog::info(
        "TLS: the files changed; new connections get {} (open ones keep "
        "theirs)",
        *what);
  } else {
    spdlog::error(
        "TLS: the files changed and cannot be used: {}. New TLS handshakes "
        "fail until they are fixed; open connections keep working",
        std::string(what.status().message()));
  }
}

}  // namespace weightd::service
