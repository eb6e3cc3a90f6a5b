#ifndef WEIGHTD_TESTS_TESTING_BYTES_H_
#define WEIGHTD_TESTS_TESTING_BYTES_H_

// Byte views the tests build payloads from.

#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"

namespace weightd::testing {

// `length` bytes of `v`'s storage from byte `offset` (a chunk's payload).
inline absl::string_view FloatBytes(const std::vector<float>& v,
                                    std::uint64_t offset,
                                    std::uint64_t length) {
  return absl::string_view(reinterpret_cast<const char*>(v.data()) + offset,
                           length);
}

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_BYTES_H_
