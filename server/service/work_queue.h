// WorkQueue: a few threads that run posted work, so that work a gRPC
// thread would otherwise do in series for many calls (writing each
// waiting call's result into its worker's segment when a round closes)
// runs in parallel and off that thread.
#ifndef WEIGHTD_SERVER_SERVICE_WORK_QUEUE_H_
#define WEIGHTD_SERVER_SERVICE_WORK_QUEUE_H_

#include <deque>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace weightd::service {

class WorkQueue {
 public:
  explicit WorkQueue(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  // Runs what was posted, then joins the threads.
  ~WorkQueue() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Runs `work` on one of the threads, in posting order.
  void Post(std::function<void()> work) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(work));
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> work;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WorkQueue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu_) {
              return q->stop_ || !q->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // Stopped, and nothing left.
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      work();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace weightd::service

#endif  // WEIGHTD_SERVER_SERVICE_WORK_QUEUE_H_
