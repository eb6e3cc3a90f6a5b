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

}  // namespace
}  // namespace weightd
