#!/usr/bin/env bash
# End-to-end: the real weightd binary and 4 real worker processes train a
# short Fashion-MNIST run over gRPC on 127.0.0.1; the averaged model must be
# far above chance (0.10), every worker must finish, and the daemon must have
# logged the rounds it closed.
# Usage: training_test.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: training_test.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
logs=$(mktemp -d "${TMPDIR:-/tmp}/weightd-e2e.XXXXXX")
trap 'rm -rf "$logs"' EXIT

rounds=6
WEIGHTD_LOG_LEVEL=debug timeout 600 "$root/scripts/local_job.sh" --bin "$build" --logs "$logs" \
  --workers 4 -- --rounds=$rounds --local_steps=60 >"$logs/out.txt" 2>&1 || {
  cat "$logs/out.txt"
  echo "FAIL: the job failed"
  exit 1
}
cat "$logs/out.txt"

last=$(tail -n 1 "$logs/out.txt")
[[ $last =~ ^final\ test\ accuracy:\ (0\.[0-9]{4})$ ]] || {
  echo "FAIL: last line is '$last', not 'final test accuracy: 0.XXXX'"
  exit 1
}
accuracy=${BASH_REMATCH[1]}
awk -v a="$accuracy" 'BEGIN { exit !(a >= 0.60) }' || {
  echo "FAIL: final accuracy $accuracy is not well above chance (need >= 0.60)"
  exit 1
}
lines=$(grep -c '^round ' "$logs/out.txt" || true)
[[ $lines -eq $rounds ]] || {
  echo "FAIL: expected $rounds round lines, got $lines"
  exit 1
}
# Every round of the shared hidden layer closed with all 4 workers in it.
closed=$(grep -c 'round closed tensor=hidden/w .*contributors=4 ' "$logs/weightd.log" || true)
[[ $closed -eq $rounds ]] || {
  echo "FAIL: weightd logged $closed closed rounds of hidden/w with 4 contributors, expected $rounds"
  exit 1
}
echo "PASS: final accuracy $accuracy after $rounds rounds; $closed rounds closed with 4 workers"
