#include "client/credential_flags.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

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
ABSL_FLAG(std::string, token_file, "",
          "A file holding this client's bearer token (the servers' "
          "--auth_policy names its SHA-256), sent with every call. Use it "
          "over TLS or the Unix socket only.");

namespace weightd {

TlsOptions TlsOptionsFromFlags() {
  TlsOptions tls;
  tls.ca_file = absl::GetFlag(FLAGS_tls_ca);
  tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  tls.key_file = absl::GetFlag(FLAGS_tls_key);
  tls.server_name = absl::GetFlag(FLAGS_tls_server_name);
  return tls;
}

absl::StatusOr<std::string> TokenFromFlags() {
  const std::string path = absl::GetFlag(FLAGS_token_file);
  if (path.empty()) return std::string();
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--token_file=", path, ": cannot be read: ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(text.str()));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--token_file=", path, ": the file is empty"));
  }
  return token;
}

}  // namespace weightd
