#!/usr/bin/env bash
# Runs every weightd test: installs what is missing, builds, then ctest.
# Usage: scripts/test.sh [ctest args...]   e.g. scripts/test.sh -L unit
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh

# The Release tree the tests (and the demo) run from.
scripts/build.sh build/release

# clang's -Wthread-safety checks the lock annotations (g++ ignores them).
CXX=clang++ scripts/build.sh build/thread-safety \
  -DCMAKE_BUILD_TYPE=Debug -DWEIGHTD_THREAD_SAFETY=ON \
  -DWEIGHTD_BUILD_TESTS=OFF -DWEIGHTD_BUILD_EXAMPLES=OFF

echo "test: ctest in build/release"
ctest --test-dir build/release --output-on-failure -j 2 --timeout 900 "$@"
