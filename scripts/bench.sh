#!/usr/bin/env bash
# The benchmark suites: builds Release, then runs one suite, its scenarios
# and its baselines in one run on this machine, prints a Markdown table and
# writes a summary.json.
# Usage: scripts/bench.sh [--smoke] [--only N,...]
#          every process on this host, over 127.0.0.1 (bench/run_bench.py);
#          build/bench/summary.json
#        scripts/bench.sh --net [--smoke] [--only N,...] [--rate 1gbit]
#          every daemon and worker on a host of its own, network namespaces
#          on shaped links (bench/net_bench.py; root);
#          build/bench/net/summary.json
# --smoke: tiny sizes and a few rounds, to check the harness (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
suite=bench/run_bench.py
out=build/bench
if [[ ${1:-} == --net ]]; then
  shift
  suite=bench/net_bench.py
  out=build/bench/net
fi
scripts/install_deps.sh
scripts/build.sh build/release -DWEIGHTD_BUILD_PYTHON=ON
exec /usr/bin/python3 "$suite" --build build/release --out "$out" "$@"
