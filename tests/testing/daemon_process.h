// The real weightd binary as a child process of a test: on 127.0.0.1 with a
// free port, in a scratch directory of its own (its output, the log, in
// daemon.log there), stopped with SIGTERM (and the directory removed) when the
// object goes.
#ifndef WEIGHTD_TESTS_TESTING_DAEMON_PROCESS_H_
#define WEIGHTD_TESTS_TESTING_DAEMON_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace weightd::testing {

class DaemonProcess {
 public:
  // Starts `weightd` with `flags` (besides --listen and --ready_file) and
  // waits up to 10 s for it to serve; address() is empty if it did not.
  // `name` names its scratch directory, /tmp/weightd-NAME.XXXXXX (dir()).
  DaemonProcess(const std::string& weightd, const std::string& name,
                const std::vector<std::string>& flags) {
    std::string dir = "/tmp/weightd-" + name + ".XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr) return;
    dir_ = dir;
    Start(weightd, flags);
  }
  ~DaemonProcess() {
    Stop();
    if (!dir_.empty()) std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  const std::string& address() const { return address_; }
  const std::string& dir() const { return dir_; }
  // What it wrote so far (its log).
  std::string log() const {
    std::ifstream in(dir_ + "/daemon.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  pid_t pid() const { return pid_; }
  // SIGTERM and wait; returns the wait status (-1 if not running).
  int Stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  void Start(const std::string& weightd,
             const std::vector<std::string>& flags) {
    const std::string ready = dir_ + "/ready";
    std::vector<std::string> args = {weightd, "--listen=127.0.0.1:0",
                                     "--ready_file=" + ready};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    const std::string log = dir_ + "/daemon.log";
    ::posix_spawn_file_actions_addopen(&actions, 1, log.c_str(),
                                       O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int spawned = ::posix_spawn(&pid_, weightd.c_str(), &actions, nullptr,
                                      argv.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      pid_ = -1;
      return;
    }
    for (int i = 0; i < 100 && address_.empty(); ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {  // Exited at start.
        pid_ = -1;
        return;
      }
      std::ifstream(ready) >> address_;
      if (address_.empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  }

  std::string dir_;
  pid_t pid_ = -1;
  std::string address_;
};

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_DAEMON_PROCESS_H_
