#include "server/service/push_pacer.h"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace weightd::service {

PushPacer::PushPacer(std::uint64_t lead_bytes, absl::Duration stall,
                     std::function<absl::Time()> now)
    : lead_bytes_(lead_bytes), stall_(stall), now_(std::move(now)) {}

PushPacer::Id PushPacer::Add(std::string group) {
  const absl::Time now = now_();
  absl::MutexLock lock(&mu_);
  const Id id = next_id_++;
  groups_[group].push_back(id);
  Stream& s = streams_[id];
  s.group = std::move(group);
  s.last_message = now;
  return id;
}

bool PushPacer::Received(Id id, std::uint64_t bytes, Resume resume) {
  if (lead_bytes_ == 0) return true;
  const absl::Time now = now_();
  std::vector<Resume> resumes;
  bool read_on = true;
  {
    absl::MutexLock lock(&mu_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return true;
    Stream& s = it->second;
    s.received += bytes;
    s.last_message = now;
    // This stream may have been the slowest: others may read on now.
    const std::uint64_t slowest = ReleaseLocked(s.group, now, &resumes);
    if (Ahead(s, slowest)) {
      s.resume = std::move(resume);
      ++parked_;
      ++parks_;
      read_on = false;
    }
  }
  for (Resume& r : resumes) std::move(r)();
  return read_on;
}

PushPacer::Resume PushPacer::Remove(Id id) {
  const absl::Time now = now_();
  Resume own;
  std::vector<Resume> resumes;
  {
    absl::MutexLock lock(&mu_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return nullptr;
    const std::string group = std::move(it->second.group);
    if (it->second.resume) {
      own = std::move(it->second.resume);
      --parked_;
    }
    streams_.erase(it);
    std::vector<Id>& ids = groups_[group];
    ids.erase(std::find(ids.begin(), ids.end(), id));
    if (ids.empty()) {
      groups_.erase(group);
    } else {
      ReleaseLocked(group, now, &resumes);
    }
  }
  for (Resume& r : resumes) std::move(r)();
  return own;
}

void PushPacer::Tick() {
  const absl::Time now = now_();
  std::vector<Resume> resumes;
  {
    absl::MutexLock lock(&mu_);
    if (parked_ == 0) return;
    for (const auto& [group, ids] : groups_) {
      ReleaseLocked(group, now, &resumes);
    }
  }
  for (Resume& r : resumes) std::move(r)();
}

int PushPacer::parked() const {
  absl::MutexLock lock(&mu_);
  return parked_;
}

std::uint64_t PushPacer::parks() const {
  absl::MutexLock lock(&mu_);
  return parks_;
}

std::uint64_t PushPacer::SlowestLocked(const std::string& group,
                                       absl::Time now) const {
  std::uint64_t slowest = UINT64_MAX;
  for (Id id : groups_.at(group)) {
    const Stream& s = streams_.at(id);
    if (now - s.last_message < stall_) slowest = std::min(slowest, s.received);
  }
  return slowest;
}

bool PushPacer::Ahead(const Stream& s, std::uint64_t slowest) const {
  return slowest != UINT64_MAX && s.received > slowest + lead_bytes_;
}

std::uint64_t PushPacer::ReleaseLocked(const std::string& group, absl::Time now,
                                       std::vector<Resume>* out) {
  const std::uint64_t slowest = SlowestLocked(group, now);
  for (Id id : groups_.at(group)) {
    Stream& s = streams_.at(id);
    if (s.resume && !Ahead(s, slowest)) {
      out->push_back(std::move(s.resume));
      s.resume = nullptr;
      --parked_;
    }
  }
  return slowest;
}

}  // namespace weightd::service
