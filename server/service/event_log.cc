#include "server/service/event_log.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

namespace weightd::service {
namespace {

const char* TakeoverText(core::Takeover takeover) {
  switch (takeover) {
    case core::Takeover::kNone:
      return "joined";
    case core::Takeover::kSameProcess:
      return "re-joined (same process; its previous lease is void)";
    case core::Takeover::kRestored:
      return "re-joined, taking back its membership restored from the "
             "snapshot";
    case core::Takeover::kLapsed:
      return "joined again after its membership had ended";
  }
  return "joined";
}

}  // namespace

EventLog::EventLog(absl::Duration window, std::function<absl::Time()> now)
    : window_(window), now_(std::move(now)), window_start_(now_()) {}

void EventLog::Joined(absl::string_view worker, absl::string_view peer,
                      const core::JoinResult& result) {
  std::size_t created = 0;
  std::uint64_t max_version = 0;
  for (const core::JoinedTensor& t : result.tensors) {
    created += t.created ? 1 : 0;
    max_version = std::max(max_version, t.info.version);
  }
  spdlog::info(
      "worker {} {} from {}: {} tensor(s), {} created by it, {} "
      "already shared (newest at version {})",
      std::string(worker), TakeoverText(result.takeover), std::string(peer),
      result.tensors.size(), created, result.tensors.size() - created,
      max_version);
  // The policies it created tensors with: one line per distinct policy.
  std::map<std::string, std::pair<std::size_t, std::string>> policies;
  for (const core::JoinedTensor& t : result.tensors) {
    if (!t.created) continue;
    auto& [count, first] = policies[core::PolicyText(t.info.policy)];
    if (count++ == 0) first = t.info.name;
  }
  for (const auto& [policy, created_with] : policies) {
    spdlog::info("worker {} created {} tensor(s) ({}{}) with policy \"{}\"",
                 std::string(worker), created_with.first, created_with.second,
                 created_with.first > 1 ? ", ..." : "", policy);
  }
}

void EventLog::Left(absl::string_view worker) {
  spdlog::info("worker {} left", std::string(worker));
}

void EventLog::Dropped(absl::string_view tensor, absl::string_view peer,
                       const core::DropResult& dropped) {
  if (dropped.removed_workers.empty()) {
    spdlog::info("tensor {} dropped by {}: {} bytes freed", std::string(tensor),
                 std::string(peer), dropped.freed_bytes);
    return;
  }
  spdlog::warn(
      "tensor {} dropped by {} with force: {} bytes freed; workers {} left its "
      "group, and their calls naming it now get NOT_FOUND",
      std::string(tensor), std::string(peer), dropped.freed_bytes,
      absl::StrJoin(dropped.removed_workers, ", "));
}

void EventLog::SegmentAttached(std::uint64_t lease_id, absl::string_view peer,
                               std::uint32_t pid, std::uint64_t bytes) {
  spdlog::info(
      "lease {} ({}, pid {}) moves its tensors through shared memory: a "
      "segment of {:.1f} MiB",
      lease_id, std::string(peer), pid, bytes / 1048576.0);
}

void EventLog::Expired(const core::WorkerExpired& e) {
  spdlog::warn(
      "worker {} dropped: no call for {} (its lease expired); open "
      "rounds of its {} tensor(s) stop waiting for it. It comes back "
      "by joining again",
      e.worker_id, absl::FormatDuration(e.silent_for), e.tensors.size());
}

void EventLog::Refused(absl::string_view call, absl::string_view peer,
                       const absl::Status& status) {
  if (status.ok() || absl::IsCancelled(status)) return;
  if (absl::IsUnauthenticated(status)) {
    unauthenticated_.fetch_add(1, std::memory_order_relaxed);
  } else if (absl::IsPermissionDenied(status)) {
    permission_denied_.fetch_add(1, std::memory_order_relaxed);
  }
  {
    absl::MutexLock lock(&mu_);
    if (refusals_logged_ >= kRefusalsPerWindow) {
      ++refusals_dropped_;
      return;
    }
    ++refusals_logged_;
  }
  spdlog::warn("refused {} from {}: {}", std::string(call), std::string(peer),
               status.ToString());
}

void EventLog::RoundClosed(const core::RoundClosed& c) {
  // One line per tensor and round: for --log_level=debug (tests read it).
  spdlog::debug(
      "round closed tensor={} round={} contributors={} bytes={} "
      "ms={:.1f} missing={}",
      c.tensor, c.round, c.contributors, c.bytes,
      absl::ToDoubleMilliseconds(c.duration), c.missing);
  absl::MutexLock lock(&mu_);
  if (rounds_ == 0) {
    min_contributors_ = max_contributors_ = c.contributors;
    first_round_ = last_round_ = c.round;
    example_tensor_ = c.tensor;
  }
  ++rounds_;
  min_contributors_ = std::min(min_contributors_, c.contributors);
  max_contributors_ = std::max(max_contributors_, c.contributors);
  first_round_ = std::min(first_round_, c.round);
  last_round_ = std::max(last_round_, c.round);
  bytes_ += c.bytes;
  if (c.missing > 0) ++quorum_rounds_;
  overflow_chunks_ += c.non_finite_chunks;
  if (tensors_.size() < 100000) tensors_.insert(c.tensor);
}

void EventLog::Flush(bool force) {
  std::uint64_t rounds, quorum, overflow, bytes, dropped, first, last;
  std::uint32_t min_c, max_c;
  std::size_t tensors;
  absl::Duration span;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = now_();
    if (!force && now - window_start_ < window_) return;
    span = now - window_start_;
    window_start_ = now;
    rounds = rounds_;
    quorum = quorum_rounds_;
    overflow = overflow_chunks_;
    bytes = bytes_;
    dropped = refusals_dropped_;
    first = first_round_;
    last = last_round_;
    min_c = min_contributors_;
    max_c = max_contributors_;
    tensors = tensors_.size();
    rounds_ = quorum_rounds_ = overflow_chunks_ = bytes_ = 0;
    refusals_dropped_ = 0;
    refusals_logged_ = 0;
    tensors_.clear();
  }
  const std::string over =
      absl::FormatDuration(absl::Trunc(span, absl::Milliseconds(100)));
  if (dropped > 0) {
    spdlog::warn("{} more refused call(s) in the last {} not logged one by one",
                 dropped, over);
  }
  if (rounds == 0) return;
  const std::string contributors =
      min_c == max_c ? absl::StrCat(min_c) : absl::StrCat(min_c, "-", max_c);
  spdlog::info(
      "rounds {}..{} closed in the last {}: {} round(s) of {} "
      "tensor(s), {} contributor(s) each, {:.1f} MB averaged",
      first, last, over, rounds, tensors, contributors,
      static_cast<double>(bytes) / 1e6);
  if (quorum > 0) {
    spdlog::warn(
        "{} of those round(s) closed on their quorum, without "
        "every participant (--round_quorum, --round_timeout)",
        quorum);
  }
  if (overflow > 0) {
    spdlog::warn(
        "the mean of {} chunk(s) overflowed float32 in those rounds; "
        "they kept their old value",
        overflow);
  }
}

}  // namespace weightd::service
