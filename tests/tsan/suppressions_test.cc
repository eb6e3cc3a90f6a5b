// Proves that tests/tsan.supp hides only the Abseil false positive it is
// for: each mode of this program stages a real data race, and the ctest
// test that runs it (TSan tree only; tests/CMakeLists.txt) passes only if
// ThreadSanitizer still reports it with the suppressions loaded.
//   plain      two threads write one int, no synchronization at all
//   condition  an absl::Condition, evaluated inside Mutex::LockWhen, reads
//              an int another thread writes without the mutex (the
//              reading stack runs through Abseil's Mutex internals, whose
//              signatures name synchronization_internal:: types)
// Usage: tsan_suppressions_test plain|condition
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/synchronization/mutex.h"

namespace {

int shared_value = 0;  // Racy on purpose.
absl::Mutex mu;

bool IsOne(int* value) { return *value == 1; }

void Writer() { shared_value = 1; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s plain|condition\n", argv[0]);
    return 2;
  }
  std::thread writer(Writer);
  // Orders the accesses in time only (no happens-before), so that the
  // condition's first evaluation already sees 1 and LockWhen returns.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  if (std::strcmp(argv[1], "plain") == 0) {
    shared_value = 2;
  } else {
    mu.LockWhen(absl::Condition(IsOne, &shared_value));
    mu.Unlock();
  }
  writer.join();
  std::printf("done\n");
  return 0;
}
