#ifndef WEIGHTD_TESTS_TESTING_BYTE_BUFFER_H_
#define WEIGHTD_TESTS_TESTING_BYTE_BUFFER_H_

// gRPC messages as the tests inspect them.

#include <grpcpp/support/byte_buffer.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace weightd::testing {

// The bytes of `buffer`, its slices joined.
inline std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_BYTE_BUFFER_H_
