// What changes when a file is replaced or rewritten: for the watchers that
// read a file again when it changes on disk (server_tls.h, authorizer.h).
#ifndef WEIGHTD_SERVER_SERVICE_FILE_STAMP_H_
#define WEIGHTD_SERVER_SERVICE_FILE_STAMP_H_

#include <sys/stat.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace weightd::service {

// Inode, size and modification time of `path` (stat follows a symlink to
// the file it names now), "-" if there is none.
inline std::string FileStamp(const std::string& path) {
  struct stat st;
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return "-";
  return absl::StrCat(st.st_ino, ",", st.st_size, ",", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec);
}

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_FILE_STAMP_H_
