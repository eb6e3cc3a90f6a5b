#include "server/service/call_limits.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace weightd::service {

CallCounter::Slot& CallCounter::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    if (counter_ != nullptr) {
      counter_->in_flight_.fetch_sub(1, std::memory_order_relaxed);
    }
    counter_ = other.counter_;
    other.counter_ = nullptr;
  }
  return *this;
}

CallCounter::Slot::~Slot() {
  if (counter_ != nullptr) {
    counter_->in_flight_.fetch_sub(1, std::memory_order_relaxed);
  }
}

absl::StatusOr<CallCounter::Slot> CallCounter::Acquire() {
  const std::uint32_t before =
      in_flight_.fetch_add(1, std::memory_order_relaxed);
  if (max_ > 0 && before >= max_) {
    in_flight_.fetch_sub(1, std::memory_order_relaxed);
    refused_.fetch_add(1, std::memory_order_relaxed);
    return absl::UnavailableError(
        absl::StrCat("weightd is serving ", max_,
                     " calls at once, its limit (--max_calls); retry shortly"));
  }
  return Slot(this);
}

StallWatch::Reader::~Reader() {
  absl::MutexLock lock(&watch_->mu_);
  watch_->readers_.erase(this);
}

// Neither overwrites kCut: a cut call stays cut.
void StallWatch::Reader::Reading() {
  std::int64_t was = since_.load();
  while (was != kCut &&
         !since_.compare_exchange_weak(was, absl::ToUnixNanos(absl::Now()))) {
  }
}

void StallWatch::Reader::Idle() {
  std::int64_t was = since_.load();
  while (was != kCut && !since_.compare_exchange_weak(was, kIdle)) {
  }
}

std::unique_ptr<StallWatch::Reader> StallWatch::Watch(Cut cut) {
  if (timeout_ == absl::InfiniteDuration()) return nullptr;
  std::unique_ptr<Reader> reader(new Reader(this, std::move(cut)));
  absl::MutexLock lock(&mu_);
  readers_.insert(reader.get());
  return reader;
}

void StallWatch::Check(absl::Time now) {
  std::vector<std::pair<std::shared_ptr<const Cut>, absl::Duration>> due;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Reader*> stalled;
    for (Reader* reader : readers_) {
      std::int64_t since = reader->since_.load();
      if (since == Reader::kIdle || since == Reader::kCut) continue;
      const absl::Duration waited = now - absl::FromUnixNanos(since);
      if (waited <= timeout_) continue;
      // Marked cut unless its read completed (or restarted) meanwhile.
      if (!reader->since_.compare_exchange_strong(since, Reader::kCut)) {
        continue;
      }
      stalled.push_back(reader);
      due.emplace_back(reader->cut_, waited);
    }
    for (Reader* reader : stalled) readers_.erase(reader);
  }
  // Counted before any call hears of its cut: its client may ask GetStatus
  // as soon as its call ends.
  cut_.fetch_add(due.size(), std::memory_order_relaxed);
  // Without the lock: cutting a call may end it on this thread, and its
  // reactor's end destroys its Reader, which takes the lock.
  for (const auto& [cut, waited] : due) (*cut)(waited);
}

}  // namespace weightd::service
