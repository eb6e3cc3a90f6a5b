// TLS on weightd's listener: the credentials built from the certificate,
// key and client CA files, and the watch that says in the log what the
// server presents after the files change on disk.
//
// gRPC's file-watcher provider re-reads the files every `reload_interval`
// and gives new connections what it read; connections already open keep
// the certificate they were made with. Replace the certificate and key
// together (a Kubernetes secret volume swaps its files atomically; by hand:
// write both into a new directory and rename a symlink), else one
// interval may pair the new key with the old certificate.
#ifndef WEIGHTD_SERVER_SERVICE_SERVER_TLS_H_
#define WEIGHTD_SERVER_SERVICE_SERVER_TLS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace weightd::service {

struct TlsFiles {
  // PEM certificate chain the server presents, and its private key. Empty
  // cert_file: no TLS.
  std::string cert_file;
  std::string key_file;
  // If set, a PEM bundle of CAs: every client must present a certificate
  // signed by one of them (mutual TLS), or its handshake fails.
  std::string client_ca_file;
  // How often the files are read again.
  absl::Duration reload_interval = absl::Seconds(10);
};

class ServerTls {
 public:
  // Checks the files (common/tls.h: readable, the key is the certificate's,
  // valid now; the CA file holds certificates) and logs what the server
  // will present. INVALID_ARGUMENT naming the file and the problem.
  static absl::StatusOr<std::unique_ptr<ServerTls>> Create(TlsFiles files);
  ServerTls(const ServerTls&) = delete;
  ServerTls& operator=(const ServerTls&) = delete;

  std::shared_ptr<grpc::ServerCredentials> credentials() const {
    return credentials_;
  }
  // At most once per reload interval: if a file changed since the last
  // look, logs what new connections now get, or why the new files cannot
  // be used (an error line: new handshakes fail until they are fixed).
  // Thread-safe.
  void Poll(absl::Time now);

 private:
  ServerTls(TlsFiles files, std::string fingerprint)
      : files_(std::move(files)), fingerprint_(std::move(fingerprint)) {}

  const TlsFiles files_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  absl::Mutex mu_;
  absl::Time next_poll_ ABSL_GUARDED_BY(mu_);
  std::string fingerprint_ ABSL_GUARDED_BY(mu_);  // Of the files, as seen.
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_SERVER_TLS_H_
