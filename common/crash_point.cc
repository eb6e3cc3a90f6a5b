#include "common/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>

namespace weightd {

void CrashPoint(absl::string_view armed, absl::string_view name) {
  if (armed.empty() || armed != name) return;
  std::fprintf(stderr, "crash point %.*s reached\n",
               static_cast<int>(name.size()), name.data());
  std::fflush(stderr);
  ::kill(::getpid(), SIGKILL);
}

}  // namespace weightd
