#include "common/tls.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/certs.h"
#include "tests/testing/status_matchers.h"

namespace weightd {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::weightd::testing::StatusIs;

class TlsFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeCerts();
    ASSERT_FALSE(dir_.empty());
  }
  std::string File(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }
  std::string dir_;
};

TEST_F(TlsFilesTest, AValidPairIsDescribedForTheLog) {
  const absl::StatusOr<CertificateSummary> s =
      CheckKeyPair(File("server.crt"), File("server.key"), absl::Now());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->subject, "CN=weightd");
  EXPECT_EQ(s->names, "DNS:localhost, IP:127.0.0.1");
  EXPECT_EQ(s->issuer, "CN=weightd test CA");
  EXPECT_LT(s->not_before, absl::Now());
  EXPECT_GT(s->not_after, absl::Now() + absl::Hours(24 * 29));
  EXPECT_THAT(s->sha256, SizeIs(32 * 3 - 1));  // "ab:cd:...", 32 bytes.
  EXPECT_THAT(Describe(*s),
              AllOf(HasSubstr("CN=weightd (DNS:localhost, IP:127.0.0.1)"),
                    HasSubstr("issued by CN=weightd test CA"),
                    HasSubstr("valid until 20"), HasSubstr(s->sha256)));
}

TEST_F(TlsFilesTest, TheKeyOfAnotherCertificateIsRefused) {
  EXPECT_THAT(
      CheckKeyPair(File("server.crt"), File("client.key"), absl::Now()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("client.key"),
                     HasSubstr("is not the private key of the certificate in"),
                     HasSubstr("server.crt"))));
}

TEST_F(TlsFilesTest, AnExpiredCertificateIsRefused) {
  EXPECT_THAT(
      CheckKeyPair(File("server-expired.crt"), File("server.key"), absl::Now()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("server-expired.crt"),
                     HasSubstr("the certificate expired at"))));
}

TEST_F(TlsFilesTest, ACertificateNotValidYetIsRefused) {
  EXPECT_THAT(CheckKeyPair(File("server.crt"), File("server.key"),
                           absl::Now() - absl::Hours(48)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("is not valid before")));
}

TEST_F(TlsFilesTest, MissingAndMalformedFilesAreRefused) {
  EXPECT_THAT(
      CheckKeyPair(File("nope.crt"), File("server.key"), absl::Now()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("nope.crt"),
                     HasSubstr("cannot be read: No such file or directory"))));
  std::ofstream(File("garbage.pem")) << "not a certificate\n";
  EXPECT_THAT(
      CheckKeyPair(File("garbage.pem"), File("server.key"), absl::Now()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("holds no PEM certificate")));
  EXPECT_THAT(
      CheckKeyPair(File("server.crt"), File("garbage.pem"), absl::Now()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("holds no usable PEM private key")));
  EXPECT_THAT(ReadCertificates(File("garbage.pem")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("holds no PEM certificate")));
}

TEST_F(TlsFilesTest, AnEncryptedKeyIsRefusedWithoutAPrompt) {
  const std::string command =
      absl::StrCat("openssl pkey -in ", File("server.key"),
                   " -aes256 -passout pass:x -out ", File("encrypted.key"));
  ASSERT_EQ(std::system(command.c_str()), 0);
  EXPECT_THAT(
      CheckKeyPair(File("server.crt"), File("encrypted.key"), absl::Now()),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("an encrypted key is not supported")));
}

TEST_F(TlsFilesTest, ABundleIsReadInFileOrder) {
  const std::string command =
      absl::StrCat("cat ", File("ca.crt"), " ", File("other-ca.crt"), " > ",
                   File("bundle.crt"));
  ASSERT_EQ(std::system(command.c_str()), 0);
  const auto bundle = ReadCertificates(File("bundle.crt"));
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  ASSERT_THAT(*bundle, SizeIs(2));
  EXPECT_EQ((*bundle)[0].subject, "CN=weightd test CA");
  EXPECT_EQ((*bundle)[1].subject, "CN=other CA");
}

}  // namespace
}  // namespace weightd
