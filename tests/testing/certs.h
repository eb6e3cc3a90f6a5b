// The test certificates of tests/testing/make_certs.sh (which lists them),
// made with openssl into a fresh directory per call.
#ifndef WEIGHTD_TESTS_TESTING_CERTS_H_
#define WEIGHTD_TESTS_TESTING_CERTS_H_

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace weightd::testing {

// Returns the directory, "" (with a test failure) if openssl failed. The
// build defines WEIGHTD_MAKE_CERTS as the script's path.
inline std::string MakeCerts() {
  std::string dir = absl::StrCat(::testing::TempDir(), "certs.XXXXXX");
  if (::mkdtemp(dir.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << dir;
    return "";
  }
  const std::string command =
      absl::StrCat(WEIGHTD_MAKE_CERTS, " ", dir, " >/dev/null 2>&1");
  if (std::system(command.c_str()) != 0) {
    ADD_FAILURE() << command << " failed";
    return "";
  }
  return dir;
}

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_CERTS_H_
