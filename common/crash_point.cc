#include "common/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>

namespace weightd {

void DieAtCrashPoint(absl::string_view name) {
  std::fprintf(stderr, "crash point %.*s reached\n",
               static_cast<int>(name.size()), name.data());
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
  // SIGKILL cannot be caught; another thread may take it an instant later.
  for (;;) ::pause();
}

}  // namespace weightd
