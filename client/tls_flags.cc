#include "client/tls_flags.h"

#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, tls_ca, "",
          "PEM bundle of the CA(s) that signed the servers' certificates: "
          "connect with TLS. Empty: plaintext.");
ABSL_FLAG(std::string, tls_cert, "",
          "With --tls_ca: this client's PEM certificate, for servers that "
          "require client certificates (mutual TLS).");
ABSL_FLAG(std::string, tls_key, "",
          "The private key of --tls_cert (PEM, unencrypted).");
ABSL_FLAG(std::string, tls_server_name, "",
          "With --tls_ca: the name the servers' certificates must carry, if "
          "not the host of the address dialled (e.g. an IP address).");

namespace weightd {

TlsOptions TlsOptionsFromFlags() {
  TlsOptions tls;
  tls.ca_file = absl::GetFlag(FLAGS_tls_ca);
  tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  tls.key_file = absl::GetFlag(FLAGS_tls_key);
  tls.server_name = absl::GetFlag(FLAGS_tls_server_name);
  return tls;
}

}  // namespace weightd
