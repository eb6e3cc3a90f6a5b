// The credential flags of weightd's client programs (weightd_worker,
// weightctl, bench_worker): --tls_ca, --tls_cert, --tls_key,
// --tls_server_name and --token_file, also set as WEIGHTD_TLS_CA, ...,
// WEIGHTD_TOKEN_FILE (common/startup.h). For main() only: name
// kCredentialFlagsFile in Program::library_flag_files so that --help lists
// them.
#ifndef WEIGHTD_CLIENT_CREDENTIAL_FLAGS_H_
#define WEIGHTD_CLIENT_CREDENTIAL_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "client/types.h"

namespace weightd {

inline constexpr char kCredentialFlagsFile[] = "client/credential_flags.cc";

// The TLS flags' values.
TlsOptions TlsOptionsFromFlags();

// The bearer token in --token_file ("" without one), its surrounding
// whitespace (a trailing newline) stripped. INVALID_ARGUMENT if the file
// cannot be read or holds no token.
absl::StatusOr<std::string> TokenFromFlags();

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_CREDENTIAL_FLAGS_H_
