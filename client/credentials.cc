#include "client/credentials.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/client_interceptor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/tls.h"

namespace weightd {
namespace {

// How often a client reads its TLS files again (a renewed client
// certificate, a CA bundle that gained the servers' next CA).
constexpr unsigned kReloadSeconds = 10;

absl::Status CheckTls(const TlsOptions& tls) {
  if (!UsesTls(tls)) {
    if (!tls.cert_file.empty() || !tls.key_file.empty() ||
        !tls.server_name.empty()) {
      return absl::InvalidArgumentError(
          "a TLS client certificate, key or server name needs the CA too "
          "(--tls_ca / WEIGHTD_TLS_CA: the CA that signed the servers' "
          "certificates)");
    }
    return absl::OkStatus();
  }
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "a TLS client certificate needs its key, and a key its certificate "
        "(--tls_cert and --tls_key / WEIGHTD_TLS_CERT and WEIGHTD_TLS_KEY)");
  }
  const absl::StatusOr<std::vector<CertificateSummary>> cas =
      ReadCertificates(tls.ca_file);
  if (!cas.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS CA file: ", cas.status().message()));
  }
  if (!tls.cert_file.empty()) {
    const absl::StatusOr<CertificateSummary> own =
        CheckKeyPair(tls.cert_file, tls.key_file, absl::Now());
    if (!own.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS client certificate: ", own.status().message()));
    }
  }
  return absl::OkStatus();
}

// Whether gRPC's reason for a failed connection is a TLS handshake that
// failed, for whatever reason.
bool IsTlsFailure(absl::string_view why) {
  // "Tls handshake failed: SSL_ERROR_SSL: ...certificate verify failed",
  // "Handshake read failed", ...
  for (absl::string_view word : {"andshake", "SSL_ERROR", "ertificate"}) {
    if (absl::StrContains(why, word)) return true;
  }
  return false;
}

// Whether `why` is a server certificate that did not verify on this side.
bool IsCertificateFailure(absl::string_view why) {
  // "...CERTIFICATE_VERIFY_FAILED: certificate verify failed" (another CA,
  // expired), "Custom verification check failed with error:
  // UNAUTHENTICATED: Hostname Verification Check failed." (another name).
  return absl::StrContains(why, "ertificate") ||
         absl::StrContains(why, "erification check failed");
}

// Whether `why` is a server that answered the TLS hello with something that
// is not TLS ("SSL_ERROR_SSL: ...:wrong version number"): plaintext.
bool IsNotTls(absl::string_view why) {
  return absl::StrContains(why, "wrong version number");
}

}  // namespace

bool IsLastingTlsFailure(absl::string_view why) {
  return IsCertificateFailure(why) || IsNotTls(why);
}

std::string ConnectHint(const TlsOptions& tls, absl::string_view why) {
  if (UsesTls(tls) && IsCertificateFailure(why)) {
    return "check that --tls_ca (WEIGHTD_TLS_CA) holds the CA that signed "
           "the server's certificate, that the certificate names the host "
           "dialled (else set --tls_server_name) and has not expired";
  }
  if (UsesTls(tls) && IsNotTls(why)) {
    return "the server does not speak TLS on this port: if it serves "
           "plaintext, leave out --tls_ca (WEIGHTD_TLS_CA)";
  }
  if (UsesTls(tls) && IsTlsFailure(why)) {
    return "the TLS handshake did not complete: the server or the link may "
           "be overloaded";
  }
  // Under TLS 1.3 a server that refuses the client's certificate (or its
  // absence) closes the connection after the client's side of the
  // handshake: the client sees a closed socket.
  const bool closed = absl::StrContains(why, "Socket closed") ||
                      absl::StrContains(why, "reset by peer");
  if (UsesTls(tls) && closed) {
    return "the server closed the connection at the TLS handshake: if it "
           "requires client certificates, give --tls_cert and --tls_key "
           "(WEIGHTD_TLS_CERT, WEIGHTD_TLS_KEY) signed by a CA of its "
           "--tls_client_ca; if it serves plaintext, leave out --tls_ca";
  }
  if (closed || IsTlsFailure(why)) {
    return "the server closed the connection: if it serves TLS, give "
           "--tls_ca (WEIGHTD_TLS_CA) and, if it asks for one, a client "
           "certificate (--tls_cert, --tls_key)";
  }
  return "is it running, and is its port open?";
}

namespace {

// Adds the bearer token to every call's initial metadata.
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::
                PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::string* const header_;
};

class TokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const std::string& token)
      : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new TokenInterceptor(&header_);
  }

 private:
  const std::string header_;  // Outlives the channel's interceptors.
};

// A target whose traffic stays on this host: a Unix socket or loopback.
bool IsLocal(absl::string_view target) {
  absl::ConsumePrefix(&target, "dns:///");
  absl::ConsumePrefix(&target, "ipv4:");
  absl::ConsumePrefix(&target, "ipv6:");
  for (absl::string_view local :
       {"unix:", "unix-abstract:", "127.", "localhost:", "[::1]:"}) {
    if (absl::StartsWith(target, local)) return true;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const TlsOptions& tls, absl::string_view target,
    grpc::ChannelArguments& args) {
  if (absl::Status s = CheckTls(tls); !s.ok()) return s;
  if (!UsesTls(tls) || absl::StartsWith(target, "unix:") ||
      absl::StartsWith(target, "unix-abstract:")) {
    return grpc::InsecureChannelCredentials();
  }
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (tls.cert_file.empty()) {
    provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            tls.ca_file, kReloadSeconds);
  } else {
    provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            tls.key_file, tls.cert_file, tls.ca_file, kReloadSeconds);
  }
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  if (!tls.cert_file.empty()) options.watch_identity_key_cert_pairs();
  if (!tls.server_name.empty()) {
    args.SetSslTargetNameOverride(tls.server_name);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::experimental::TlsCredentials(options);
  if (credentials == nullptr) {
    return absl::InternalError("gRPC could not make TLS channel credentials");
  }
  return credentials;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(
    const TlsOptions& tls, const std::string& token, const std::string& target,
    grpc::ChannelArguments args) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      ChannelCredentials(tls, target, args);
  if (!credentials.ok()) return credentials.status();
  if (token.empty()) {
    return grpc::CreateCustomChannel(target, *credentials, args);
  }
  if (token.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "the bearer token holds a line break; give the token alone");
  }
  if (!UsesTls(tls) && !IsLocal(target)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a bearer token would travel in clear to ", target,
        ": give --tls_ca (WEIGHTD_TLS_CA) for TLS, or dial a Unix socket or "
        "this host's loopback address"));
  }
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<TokenInterceptorFactory>(token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, *credentials, args, std::move(interceptors));
}

}  // namespace weightd
