#include "client/credentials.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::HasSubstr;
using ::weightd::testing::IsOk;
using ::weightd::testing::StatusIs;

// Channels connect lazily: none of these sends a byte.
TEST(CreateChannelTest, ATokenNeverTravelsInClearToAnotherHost) {
  const TlsOptions plaintext;
  EXPECT_THAT(CreateChannel(plaintext, "t0ken", "10.1.2.3:7070", {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("would travel in clear to 10.1.2.3:7070")));
  EXPECT_THAT(CreateChannel(plaintext, "t0ken", "dns:///weightd:7070", {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  for (const char* local : {"127.0.0.1:7070", "localhost:7070", "[::1]:7070",
                            "unix:/run/weightd.sock"}) {
    EXPECT_THAT(CreateChannel(plaintext, "t0ken", local, {}), IsOk()) << local;
  }
  // Without a token, plaintext anywhere is the caller's choice.
  EXPECT_THAT(CreateChannel(plaintext, "", "10.1.2.3:7070", {}), IsOk());
  EXPECT_THAT(
      CreateChannel(plaintext, "a\nb", "127.0.0.1:7070", {}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line break")));
}

TEST(CreateChannelTest, TlsFieldsWithoutACaAreRefused) {
  TlsOptions tls;
  tls.server_name = "weightd";
  EXPECT_THAT(CreateChannel(tls, "", "10.1.2.3:7070", {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("needs the CA too")));
}

// gRPC's reasons, as the client saw them (tests/security/tls_test.sh makes
// each happen for real).
TEST(ConnectHintTest, OnlyACertificateThatDidNotVerifyFailsForGood) {
  const std::string bad_ca =
      "failed to connect to all addresses; last error: UNKNOWN: "
      "ipv4:127.0.0.1:7070: Tls handshake failed (TSI_PROTOCOL_FAILURE): "
      "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
      "CERTIFICATE_VERIFY_FAILED: certificate verify failed";
  const std::string slow =
      "failed to connect to all addresses; last error: UNKNOWN: "
      "ipv4:127.0.0.1:7070: Handshake read failed";
  const std::string bad_name =
      "failed to connect to all addresses; last error: UNKNOWN: "
      "ipv4:127.0.0.1:7070: Custom verification check failed with error: "
      "UNAUTHENTICATED: Hostname Verification Check failed.";
  EXPECT_TRUE(IsLastingTlsFailure(bad_ca));
  EXPECT_TRUE(IsLastingTlsFailure(bad_name));
  const std::string plaintext =
      "failed to connect to all addresses; last error: UNKNOWN: "
      "ipv4:127.0.0.1:7070: Tls handshake failed: SSL_ERROR_SSL: "
      "error:0A00010B:SSL routines::wrong version number";
  EXPECT_TRUE(IsLastingTlsFailure(plaintext));
  EXPECT_FALSE(IsLastingTlsFailure(slow));
  TlsOptions tls;
  tls.ca_file = "ca.crt";
  EXPECT_THAT(ConnectHint(tls, bad_ca), HasSubstr("holds the CA that signed"));
  EXPECT_THAT(ConnectHint(tls, bad_name), HasSubstr("--tls_server_name"));
  EXPECT_THAT(ConnectHint(tls, plaintext),
              HasSubstr("does not speak TLS on this port"));
  EXPECT_THAT(ConnectHint(tls, slow),
              HasSubstr("the TLS handshake did not complete"));
}

}  // namespace
}  // namespace weightd
