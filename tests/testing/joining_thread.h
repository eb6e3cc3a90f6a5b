#ifndef WEIGHTD_TESTS_TESTING_JOINING_THREAD_H_
#define WEIGHTD_TESTS_TESTING_JOINING_THREAD_H_

// A thread a test joins however it ends. A std::thread still joinable when
// a failed ASSERT returns from the test calls std::terminate, which loses
// the failure's message (stdout to a pipe is not flushed); this one waits
// for its function instead, whose calls the test bounds by deadlines.

#include <thread>
#include <utility>

namespace weightd::testing {

class JoiningThread {
 public:
  template <typename F>
  explicit JoiningThread(F&& f) : thread_(std::forward<F>(f)) {}
  JoiningThread(const JoiningThread&) = delete;
  JoiningThread& operator=(const JoiningThread&) = delete;
  ~JoiningThread() { join(); }

  // Waits for the function to return; at most once, later calls return.
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
};

}  // namespace weightd::testing

#endif  // WEIGHTD_TESTS_TESTING_JOINING_THREAD_H_
