#include "examples/corruption.h"

#include <random>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace weightd::examples {

bool ParseCorruption(absl::string_view text, Corruption* corruption) {
  if (text == "none") {
    *corruption = Corruption::kNone;
  } else if (text == "signflip") {
    *corruption = Corruption::kSignFlip;
  } else if (text == "noise") {
    *corruption = Corruption::kNoise;
  } else {
    return false;
  }
  return true;
}

void Corrupt(Corruption corruption, float scale, std::mt19937_64* rng,
             absl::Span<float> values) {
  switch (corruption) {
    case Corruption::kNone:
      return;
    case Corruption::kSignFlip:
      for (float& value : values) value *= -scale;
      return;
    case Corruption::kNoise: {
      std::normal_distribution<float> noise(0.0f, scale);
      for (float& value : values) value = noise(*rng);
      return;
    }
  }
}

}  // namespace weightd::examples
