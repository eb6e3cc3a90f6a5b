#include "common/tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace weightd {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Certificate = std::unique_ptr<X509, X509Free>;
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;

// OpenSSL's reason for the last failure on this thread, and clears the
// queue ("" if it holds none).
std::string OpenSslError() {
  std::string reason;
  while (unsigned long e = ERR_get_error()) {  // The first is the cause.
    if (reason.empty()) {
      const char* r = ERR_reason_error_string(e);
      reason = r != nullptr ? r : absl::StrCat("OpenSSL error ", e);
    }
  }
  return reason;
}

absl::Status FileError(const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::StatusOr<Bio> Open(const std::string& file) {
  errno = 0;
  Bio bio(BIO_new_file(file.c_str(), "r"));
  if (bio == nullptr) {
    const int error = errno;
    const std::string reason = OpenSslError();
    return FileError(
        file, absl::StrCat("cannot be read: ",
                           error != 0 ? std::strerror(error) : reason.c_str()));
  }
  return bio;
}

std::string NameText(const X509_NAME* name) {
  Bio bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, size > 0 ? size : 0);
}

std::string AltNames(X509* certificate) {
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return "";
  std::vector<std::string> out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type == GEN_DNS || n->type == GEN_URI || n->type == GEN_EMAIL) {
      const ASN1_IA5STRING* s = n->d.ia5;
      out.push_back(
          absl::StrCat(n->type == GEN_DNS   ? "DNS:"
                       : n->type == GEN_URI ? "URI:"
                                            : "email:",
                       absl::string_view(reinterpret_cast<const char*>(s->data),
                                         s->length)));
    } else if (n->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* ip = n->d.iPAddress;
      char text[INET6_ADDRSTRLEN] = {};
      const int family = ip->length == 4 ? AF_INET : AF_INET6;
      if ((ip->length == 4 || ip->length == 16) &&
          inet_ntop(family, ip->data, text, sizeof(text)) != nullptr) {
        out.push_back(absl::StrCat("IP:", text));
      }
    }
  }
  GENERAL_NAMES_free(names);
  return absl::StrJoin(out, ", ");
}

absl::Time TimeOf(const ASN1_TIME* t) {
  std::tm tm = {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return absl::InfinitePast();
  return absl::FromTimeT(timegm(&tm));
}

CertificateSummary Summarize(X509* certificate) {
  CertificateSummary s;
  s.subject = NameText(X509_get_subject_name(certificate));
  s.issuer = NameText(X509_get_issuer_name(certificate));
  s.names = AltNames(certificate);
  s.not_before = TimeOf(X509_get0_notBefore(certificate));
  s.not_after = TimeOf(X509_get0_notAfter(certificate));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (X509_digest(certificate, EVP_sha256(), digest, &length) == 1) {
    std::vector<std::string> bytes;
    for (unsigned int i = 0; i < length; ++i) {
      bytes.push_back(absl::StrCat(absl::Hex(digest[i], absl::kZeroPad2)));
    }
    s.sha256 = absl::StrJoin(bytes, ":");
  }
  return s;
}

std::string TimeText(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone());
}

// A passphrase prompt would block a daemon at start: refuse instead.
int NoPassphrase(char*, int, int, void*) { return -1; }

}  // namespace

std::string Describe(const CertificateSummary& c) {
  return absl::StrCat(c.subject.empty() ? "(no subject)" : c.subject,
                      c.names.empty() ? "" : absl::StrCat(" (", c.names, ")"),
                      ", issued by ", c.issuer, ", valid until ",
                      TimeText(c.not_after), ", sha256 ", c.sha256);
}

absl::StatusOr<std::vector<CertificateSummary>> ReadCertificates(
    const std::string& file) {
  absl::StatusOr<Bio> bio = Open(file);
  if (!bio.ok()) return bio.status();
  std::vector<CertificateSummary> out;
  while (Certificate c{
      PEM_read_bio_X509(bio->get(), nullptr, NoPassphrase, nullptr)}) {
    out.push_back(Summarize(c.get()));
  }
  ERR_clear_error();  // The end of the file reads as an error.
  if (out.empty()) {
    return FileError(file,
                     "holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
  }
  return out;
}

absl::StatusOr<CertificateSummary> CheckKeyPair(const std::string& cert_file,
                                                const std::string& key_file,
                                                absl::Time now) {
  absl::StatusOr<Bio> cert_bio = Open(cert_file);
  if (!cert_bio.ok()) return cert_bio.status();
  Certificate certificate(
      PEM_read_bio_X509(cert_bio->get(), nullptr, NoPassphrase, nullptr));
  if (certificate == nullptr) {
    ERR_clear_error();
    return FileError(cert_file,
                     "holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
  }
  absl::StatusOr<Bio> key_bio = Open(key_file);
  if (!key_bio.ok()) return key_bio.status();
  Key key(
      PEM_read_bio_PrivateKey(key_bio->get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr) {
    const std::string reason = OpenSslError();
    return FileError(key_file,
                     absl::StrCat("holds no usable PEM private key (", reason,
                                  "); an encrypted key is not supported: "
                                  "protect it by file permissions"));
  }
  if (X509_check_private_key(certificate.get(), key.get()) != 1) {
    ERR_clear_error();
    return FileError(key_file, absl::StrCat("is not the private key of the "
                                            "certificate in ",
                                            cert_file));
  }
  CertificateSummary summary = Summarize(certificate.get());
  if (now > summary.not_after) {
    return FileError(cert_file, absl::StrCat("the certificate expired at ",
                                             TimeText(summary.not_after), ": ",
                                             Describe(summary)));
  }
  if (now < summary.not_before) {
    return FileError(
        cert_file,
        absl::StrCat("the certificate is not valid before ",
                     TimeText(summary.not_before),
                     " (is this host's clock right?): ", Describe(summary)));
  }
  return summary;
}

}  // namespace weightd
