#include "server/storage/snapshotter.h"

#include <algorithm>
#include <utility>

namespace weightd::storage {

Snapshotter::Snapshotter(core::TensorStore* store, SnapshotDir* dir,
                         SnapshotterOptions options, Attempted on_attempt)
    : store_(store),
      dir_(dir),
      options_(std::move(options)),
      on_attempt_(std::move(on_attempt)) {
  std::uint64_t version = 0;
  for (const core::TensorInfo& t : store_->Status().tensors) {
    version = std::max(version, t.version);
  }
  {
    absl::MutexLock lock(&mu_);
    version_ = version;
    last_ = options_.now();
  }
  thread_ = std::thread([this] { Loop(); });
}

Snapshotter::~Snapshotter() { (void)Stop(); }  // Reported by on_written.

bool Snapshotter::FinalWrittenLocked() const { return final_.has_value(); }

void Snapshotter::OnRoundClosed(const core::RoundClosed& closed) {
  absl::MutexLock lock(&mu_);
  // Counts the rounds of the job, not of each tensor: a model of 161
  // tensors closes 161 tensor rounds per job round.
  const std::uint64_t version = closed.round + 1;
  if (version > version_) {
    rounds_since_ += version - version_;
    version_ = version;
  }
}

void Snapshotter::Request(Done done) {
  {
    absl::MutexLock lock(&mu_);
    if (!stop_) {
      requests_.push_back(std::move(done));
      return;
    }
  }
  done(absl::UnavailableError(
      "the server is shutting down; it writes a final snapshot itself"));
}

bool Snapshotter::DueLocked() const {
  return stop_ || !requests_.empty() ||
         (options_.every_rounds > 0 &&
          rounds_since_ >= options_.every_rounds) ||
         IntervalDueLocked();
}

bool Snapshotter::IntervalDueLocked() const {
  return options_.every > absl::ZeroDuration() && rounds_since_ > 0 &&
         options_.now() >= last_ + options_.every;
}

absl::StatusOr<std::string> Snapshotter::WriteOnce() {
  absl::MutexLock lock(&write_mu_);
  const absl::Time start = absl::Now();
  SnapshotAttempt attempt{dir_->Write(store_->Save()), absl::Now() - start};
  if (attempt.file.ok()) {
    ++written_;
    attempt.bytes = dir_->FileSize(*attempt.file).value_or(0);
  } else {
    ++failed_;
  }
  if (on_attempt_) on_attempt_(attempt);
  return attempt.file;
}

void Snapshotter::Loop() {
  for (;;) {
    std::vector<Done> requests;
    {
      absl::MutexLock lock(&mu_);
      // Wakes for a request, for enough rounds, or for the interval. The
      // condition is looked at whenever the state changes; the timeout only
      // makes sure the clock is looked at once the interval has passed.
      // Once it has passed with no round closed, the round that closes
      // next is the wake-up: wait up to another interval, not a busy loop.
      while (!DueLocked()) {
        absl::Duration wait = absl::InfiniteDuration();
        if (options_.every > absl::ZeroDuration()) {
          wait = last_ + options_.every - options_.now();
          if (wait <= absl::ZeroDuration()) wait = options_.every;
        }
        mu_.AwaitWithTimeout(absl::Condition(this, &Snapshotter::DueLocked),
                             wait);
      }
      if (stop_) return;
      requests.swap(requests_);
      rounds_since_ = 0;
      last_ = options_.now();
    }
    absl::StatusOr<std::string> written = WriteOnce();
    for (Done& done : requests) done(written);
  }
}

absl::StatusOr<std::string> Snapshotter::Stop() {
  std::vector<Done> requests;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) {
      mu_.Await(absl::Condition(this, &Snapshotter::FinalWrittenLocked));
      return *final_;
    }
    stop_ = true;
  }
  thread_.join();
  absl::StatusOr<std::string> written = WriteOnce();
  {
    absl::MutexLock lock(&mu_);
    requests.swap(requests_);
    final_ = written;
  }
  for (Done& done : requests) done(written);
  return written;
}

}  // namespace weightd::storage
