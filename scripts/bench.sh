#!/usr/bin/env bash
# The benchmark suite: builds Release, runs every scenario and its
# baselines in one run on this machine, prints a Markdown table and writes
# build/bench/summary.json. Usage: scripts/bench.sh [--smoke]
# --smoke: tiny sizes and a few rounds, to check the harness (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh build/release -DWEIGHTD_BUILD_PYTHON=ON
exec /usr/bin/python3 bench/run_bench.py --build build/release --out build/bench "$@"
