#include "client/cancellation.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace weightd {

void Cancellation::Cancel() {
  // Called under the lock: a Registration's destructor (its call is over)
  // waits for it, so `fn` never touches a call that is gone.
  absl::MutexLock lock(&mu_);
  if (cancelled_) return;
  cancelled_ = true;
  for (auto& [id, fn] : calls_) fn();
  calls_.clear();
}

bool Cancellation::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool Cancellation::SleepFor(absl::Duration duration) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&cancelled_), duration);
  return !cancelled_;
}

Cancellation::Registration::Registration(Cancellation* cancellation,
                                         std::function<void()> on_cancel)
    : cancellation_(cancellation) {
  if (cancellation_ == nullptr) return;
  {
    absl::MutexLock lock(&cancellation_->mu_);
    if (!cancellation_->cancelled_) {
      id_ = cancellation_->next_id_++;
      cancellation_->calls_.emplace(id_, std::move(on_cancel));
      return;
    }
  }
  on_cancel();
}

Cancellation::Registration::~Registration() {
  if (cancellation_ == nullptr || id_ == 0) return;
  absl::MutexLock lock(&cancellation_->mu_);
  cancellation_->calls_.erase(id_);
}

absl::Status Cancellation::Status(absl::string_view what) {
  return absl::CancelledError(absl::StrCat(what, ": cancelled by the caller"));
}

}  // namespace weightd
