// Channels to weightd with the client's credentials: plaintext or TLS from
// TlsOptions (client/types.h), the files checked first, and a bearer token
// on every call. For the client library and the programs that open
// channels of their own (weightctl).
#ifndef WEIGHTD_CLIENT_CREDENTIALS_H_
#define WEIGHTD_CLIENT_CREDENTIALS_H_

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/types.h"

namespace weightd {

// A channel to `target` ("HOST:PORT", "unix:PATH") with credentials from
// `tls` (a "unix:" target gets plaintext whatever `tls` says) and the
// channel arguments they need (the server name to check) added to `args`;
// with a `token`, every call carries it as "authorization: Bearer TOKEN".
// The channel connects lazily. INVALID_ARGUMENT naming the option and the
// fix: fields set without ca_file, a certificate without its key or the
// other way round, a file that cannot be read or parsed, a key of another
// certificate, an expired certificate, a token with a line break, a token
// that would travel in clear (plaintext TCP to another host).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(
    const TlsOptions& tls, const std::string& token, const std::string& target,
    grpc::ChannelArguments args);

// Whether `tls` asks for TLS at all (ca_file set).
inline bool UsesTls(const TlsOptions& tls) { return !tls.ca_file.empty(); }

// Whether gRPC's reason for a failed connection (`why`: "failed to connect
// to all addresses; last error: ...") is a TLS failure the next attempt
// will meet too: a server certificate that did not verify on this side
// (another CA, another name, expired), or a server that does not speak TLS.
// A handshake that timed out or was cut is not: the next may complete.
bool IsLastingTlsFailure(absl::string_view why);

// What a person should check when a channel made with `tls` cannot
// connect for reason `why`: the TLS options that fit the failure, or
// whether the server runs at all. One sentence, no trailing period.
std::string ConnectHint(const TlsOptions& tls, absl::string_view why);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_CREDENTIALS_H_
