// The TLS files weightd's programs are given (PEM certificates and keys),
// read and checked before gRPC is handed their paths, and described for the
// log: a configuration that cannot work stops the program at start with
// what is wrong, instead of every handshake failing later. No gRPC here
// (OpenSSL's libcrypto only); the servers' and clients' credentials are
// built in server/service/ and client/.
#ifndef WEIGHTD_COMMON_TLS_H_
#define WEIGHTD_COMMON_TLS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace weightd {

// One certificate, as a log line shows it.
struct CertificateSummary {
  std::string subject;  // "CN=weightd"
  std::string names;    // subjectAltName, "DNS:localhost, IP:127.0.0.1"
  std::string issuer;   // "CN=weightd dev CA"
  absl::Time not_before;
  absl::Time not_after;
  std::string sha256;  // Of the DER encoding, hex, "ab:cd:..."
};

// "CN=weightd (DNS:localhost, IP:127.0.0.1), issued by CN=weightd dev CA,
// valid until 2027-12-01 10:00:00 UTC, sha256 ab:cd:..".
std::string Describe(const CertificateSummary& certificate);

// Reads every certificate of a PEM file (a chain, or a CA bundle), in file
// order. INVALID_ARGUMENT naming the file if it cannot be read or holds no
// certificate.
absl::StatusOr<std::vector<CertificateSummary>> ReadCertificates(
    const std::string& file);

// The certificate a program presents: `cert_file`'s first certificate, if
// `key_file` holds its private key and it is valid at `now`.
// INVALID_ARGUMENT naming the file and what is wrong (unreadable, not PEM,
// key of another certificate, expired, not yet valid).
absl::StatusOr<CertificateSummary> CheckKeyPair(const std::string& cert_file,
                                                const std::string& key_file,
                                                absl::Time now);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_TLS_H_
