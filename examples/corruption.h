// A bad worker for the robust-aggregation experiment of issue 17
// (bench/experiments.py, attack): what it pushes instead of its weights.
//
// Thread-compatible: the functions touch only their arguments.
#ifndef WEIGHTD_EXAMPLES_CORRUPTION_H_
#define WEIGHTD_EXAMPLES_CORRUPTION_H_

#include <random>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace weightd::examples {

enum class Corruption {
  kNone,      // Pushes its weights.
  kSignFlip,  // Pushes its weights times -scale.
  kNoise,     // Pushes i.i.d. normal values, mean 0, standard deviation scale.
};

// "none", "signflip" or "noise"; false for anything else.
bool ParseCorruption(absl::string_view text, Corruption* corruption);

// Replaces `values` (a tensor's weights, about to be pushed) as `corruption`
// says. `scale` > 0; `rng` seeds the noise.
void Corrupt(Corruption corruption, float scale, std::mt19937_64* rng,
             absl::Span<float> values);

}  // namespace weightd::examples

#endif  // WEIGHTD_EXAMPLES_CORRUPTION_H_
