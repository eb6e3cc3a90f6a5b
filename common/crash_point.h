// Crash points: fault injection for the crash tests (tests/fault).
//
// The daemon's --crash_at flag arms one named point of a snapshot write
// (server/storage/crash_point_file_system.h); when the write reaches it,
// DieAtCrashPoint prints "crash point <name> reached" to stderr and kills
// the process with SIGKILL, exactly as `kill -9` would: no destructor, no
// flush of anything but stderr.
#ifndef WEIGHTD_COMMON_CRASH_POINT_H_
#define WEIGHTD_COMMON_CRASH_POINT_H_

#include "absl/strings/string_view.h"

namespace weightd {

// Never returns. Thread-safe (it ends every thread).
[[noreturn]] void DieAtCrashPoint(absl::string_view name);

}  // namespace weightd

#endif  // WEIGHTD_COMMON_CRASH_POINT_H_
