#include "common/duration.h"

namespace weightd {

std::string HumanDuration(absl::Duration d) {
  if (d < absl::ZeroDuration()) return "-" + HumanDuration(-d);
  if (d < absl::Milliseconds(1)) return "0s";
  const absl::Duration unit =
      d < absl::Seconds(1) ? absl::Milliseconds(1) : absl::Seconds(1);
  return absl::FormatDuration(absl::Trunc(d, unit));
}

}  // namespace weightd
