// The TLS flags of weightd's client programs (weightd_worker, weightctl,
// bench_worker): --tls_ca, --tls_cert, --tls_key, --tls_server_name, also
// set as WEIGHTD_TLS_CA, ... (common/startup.h). For main() only: name
// kTlsFlagsFile in Program::library_flag_files so that --help lists them.
#ifndef WEIGHTD_CLIENT_TLS_FLAGS_H_
#define WEIGHTD_CLIENT_TLS_FLAGS_H_

#include "client/types.h"

namespace weightd {

inline constexpr char kTlsFlagsFile[] = "client/tls_flags.cc";

// The flags' values.
TlsOptions TlsOptionsFromFlags();

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_TLS_FLAGS_H_
