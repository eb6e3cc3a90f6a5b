#include "client/shard_plan.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace weightd {

std::uint64_t StableNameHash(absl::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::vector<Placement> PlaceTensor(absl::string_view name,
                                   const std::vector<std::int64_t>& shape,
                                   std::uint32_t shards,
                                   std::uint64_t split_bytes) {
  std::uint64_t elements = 1;
  bool valid = true;  // Else the shard refuses the shape (INVALID_ARGUMENT).
  for (std::int64_t d : shape) {
    valid = valid && d >= 1;
    elements *= valid ? static_cast<std::uint64_t>(d) : 0;
  }
  const std::uint32_t owner =
      shards <= 1 ? 0
                  : static_cast<std::uint32_t>(StableNameHash(name) % shards);
  const std::uint64_t rows =
      shape.empty() || !valid ? 1 : static_cast<std::uint64_t>(shape[0]);
  if (shards <= 1 || elements * 4 <= split_bytes || rows < 2) {
    return {Placement{owner, 0, elements, shape}};
  }
  const std::uint64_t parts = std::min<std::uint64_t>(shards, rows);
  const std::uint64_t row_elements = elements / rows;
  std::vector<Placement> placements;
  for (std::uint64_t k = 0; k < parts; ++k) {
    const std::uint64_t begin = k * rows / parts;
    const std::uint64_t end = (k + 1) * rows / parts;
    Placement p;
    // Rotated by the owner so that tensors split over fewer shards than
    // there are spread their parts.
    p.shard = static_cast<std::uint32_t>((owner + k) % shards);
    p.first = begin * row_elements;
    p.elements = (end - begin) * row_elements;
    p.shape = shape;
    p.shape[0] = static_cast<std::int64_t>(end - begin);
    placements.push_back(std::move(p));
  }
  return placements;
}

absl::StatusOr<std::vector<std::string>> SplitTargets(
    absl::string_view address) {
  std::vector<std::string> targets;
  for (absl::string_view t : absl::StrSplit(address, ',')) {
    t = absl::StripAsciiWhitespace(t);
    if (t.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "server address \"", address,
          "\" has an empty entry; give "
          "host:port, or a comma-separated list of every shard's host:port"));
    }
    targets.emplace_back(t);
  }
  return targets;
}

absl::StatusOr<std::vector<std::size_t>> OrderShards(
    const std::vector<std::string>& targets,
    const std::vector<ShardLayout>& layouts) {
  const std::size_t n = targets.size();
  std::vector<std::size_t> order(n, n);
  for (std::size_t i = 0; i < n; ++i) {
    const ShardLayout& l = layouts[i];
    if (l.count != n || l.index >= n) {
      return absl::FailedPreconditionError(
          absl::StrCat("weightd at ", targets[i], " is shard ", l.index, " of ",
                       l.count, ", but this worker was given ", n,
                       " server(s) (", absl::StrJoin(targets, ","),
                       "): give every shard's address, and "
                       "start every shard with --shard_count=",
                       n));
    }
    if (order[l.index] != n) {
      return absl::FailedPreconditionError(
          absl::StrCat("weightd at ", targets[order[l.index]], " and at ",
                       targets[i], " both say they are shard ", l.index, " of ",
                       n, ": give each shard its own --shard_index"));
    }
    order[l.index] = i;
  }
  return order;
}

}  // namespace weightd
