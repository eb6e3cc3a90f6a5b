#ifndef WEIGHTD_COMMON_UPDATE_KIND_H_
#define WEIGHTD_COMMON_UPDATE_KIND_H_

namespace weightd {

// What a push carries, for the client and the core alike (on the wire:
// v1::UpdateKind).
enum class UpdateKind {
  kWeights,  // The worker's weights: averaged (sync) or mixed in (async).
  kDelta,    // A change: value += server_lr * mean (or each) delta.
};

}  // namespace weightd

#endif  // WEIGHTD_COMMON_UPDATE_KIND_H_
