// ClientOptions for tests that run real clients against in-process
// servers. Such a client is on the daemon's host, so it moves its values
// through shared memory (docs/protocol.md, "Shared memory") unless the
// test runs with WD_TEST_DATA_PATH=stream: ctest runs those tests both
// ways (the *_stream tests), so that both data paths pass them.
#ifndef WEIGHTD_TESTS_TESTING_CLIENT_OPTIONS_H_
#define WEIGHTD_TESTS_TESTING_CLIENT_OPTIONS_H_

#include <cstdlib>
#include <cstring>

#include "client/types.h"

namespace weightd::testing {

inline ClientOptions TestClientOptions() {
  ClientOptions options;
  const char* path = std::getenv("WD_TEST_DATA_PATH");
  options.shared_memory = path == nullptr || std::strcmp(path, "stream") != 0;
  return options;
}

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_CLIENT_OPTIONS_H_
