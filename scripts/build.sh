#!/usr/bin/env bash
# Configures and builds weightd. Usage: scripts/build.sh [BUILD_DIR] [cmake args...]
# Default BUILD_DIR is build/release (CMAKE_BUILD_TYPE=Release). Idempotent:
# an up-to-date tree rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/release}
shift || true
if [[ ! -f "$dir/build.ninja" ]]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
elif (($# > 0)); then
  cmake -S . -B "$dir" "$@" >/dev/null  # Options may have changed.
fi
echo "build: $dir"
# Two compile jobs by default: the reference machine has 2 cores. Progress
# lines are dropped; warnings and errors are shown.
start=$SECONDS
cmake --build "$dir" -j "${WEIGHTD_BUILD_JOBS:-2}" |
  { grep -vE '^\[[0-9]+/[0-9]+\] (Building|Linking|Generating|Running)' || true; }
echo "build: $dir took $((SECONDS - start)) s"
