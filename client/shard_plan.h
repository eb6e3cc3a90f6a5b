// Where tensors live in a sharded deployment: the pure part of the client's
// sharding (no I/O), shared by every worker so that all of them split the
// same way.
//
// A tensor of at most `split_bytes` lives whole on one shard, chosen by a
// stable hash of its name. A larger one with at least two rows (first
// dimension) is split into contiguous row ranges over min(shards, rows)
// shards, so that one big tensor uses every server's bandwidth. Each part is
// declared to its shard under the tensor's own name, with its rows as the
// first dimension and the whole tensor's shape beside it
// (TensorDeclaration.whole_shape), so a worker declaring another shape is
// refused (ALREADY_EXISTS) as a single server would refuse it.
#ifndef WEIGHTD_CLIENT_SHARD_PLAN_H_
#define WEIGHTD_CLIENT_SHARD_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weightd {

// A server's place among the shards (v1::ShardInfo).
struct ShardLayout {
  std::uint32_t index = 0;
  std::uint32_t count = 1;
  bool operator==(const ShardLayout& o) const {
    return index == o.index && count == o.count;
  }
};

// One tensor's values on one shard.
struct Placement {
  std::uint32_t shard = 0;
  std::uint64_t first = 0;  // First element (row-major) held there.
  std::uint64_t elements = 0;
  std::vector<std::int64_t> shape;  // Of the part, as declared to the shard.
};

// FNV-1a (64 bit) of the name: the same in every process, build and language.
std::uint64_t StableNameHash(absl::string_view name);

// The parts of a tensor of `shape` over `shards` shards, in row order.
std::vector<Placement> PlaceTensor(absl::string_view name,
                                   const std::vector<std::int64_t>& shape,
                                   std::uint32_t shards,
                                   std::uint64_t split_bytes);

// The comma-separated targets of a ClientOptions::address, trimmed.
// INVALID_ARGUMENT for an empty address or an empty entry.
absl::StatusOr<std::vector<std::string>> SplitTargets(
    absl::string_view address);

// Given the layout each target reported, the targets' positions in shard
// order. FAILED_PRECONDITION, naming the servers, unless they form exactly
// one layout: every count equal to the number of targets and every index
// reported once.
absl::StatusOr<std::vector<std::size_t>> OrderShards(
    const std::vector<std::string>& targets,
    const std::vector<ShardLayout>& layouts);

}  // namespace weightd

#endif  // WEIGHTD_CLIENT_SHARD_PLAN_H_
