#!/usr/bin/env bash
# Runs a weightd training job on this machine: one daemon and its workers, all
# on 127.0.0.1, from an existing build. Stops every process it started, on
# success, failure or Ctrl-C.
#
# Usage: scripts/local_job.sh [--sharing [--labels N]] [--workers N]
#                             [--bin DIR] [--logs DIR] [-- WORKER_FLAGS...]
#   (default)  N workers (4) train the 10-class model, each on 1/N of the
#              data; worker 0 prints a line per round and ends with
#              "final test accuracy: 0.XXXX".
#   --sharing  3 workers train the 10-class model on 3/4 of the data and one
#              trains a 2-class model on N labels (--labels, default 300); the
#              two models share only the hidden layer. Then the 2-class model
#              trains alone on the same labels, and the three accuracies are
#              printed.
#   WORKER_FLAGS go to every worker (e.g. --rounds=5 --local_steps=50).
set -euo pipefail

bin=build/release
workers=4
sharing=0
labels=300
logs=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sharing) sharing=1 ;;
    --labels) labels=$2; shift ;;
    --labels=*) labels=${1#*=} ;;
    --workers) workers=$2; shift ;;
    --workers=*) workers=${1#*=} ;;
    --bin) bin=$2; shift ;;
    --bin=*) bin=${1#*=} ;;
    --logs) logs=$2; shift ;;
    --logs=*) logs=${1#*=} ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "local_job: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

weightd=$bin/server/weightd
worker=$bin/examples/weightd_worker
for b in "$weightd" "$worker"; do
  [[ -x $b ]] || { echo "local_job: $b is missing; build first" >&2; exit 2; }
done
logs=${logs:-$(mktemp -d "${TMPDIR:-/tmp}/weightd-job.XXXXXX")}
mkdir -p "$logs"

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Bounded: whatever has not exited 5 s after SIGTERM is killed.
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "local_job: $*" >&2
  for f in "$logs"/*.log; do
    [[ -f $f ]] || continue
    echo "--- last lines of $f" >&2
    tail -n 5 "$f" >&2
  done
  exit 1
}

source "$(dirname "$0")/daemon.sh"
start_daemon "$logs/ready" 30 "$logs/weightd.log" \
  "$weightd" --listen=127.0.0.1:0 --ready_file="$logs/ready"

# Starts a worker in the background with its output in $logs/NAME.log.
start_worker() {
  local name=$1
  shift
  "$worker" --server="$address" "$@" "${extra[@]}" >"$logs/$name.log" 2>&1 &
  pids+=($!)
  worker_pids+=($!)
}

# Waits (bounded) for the background workers; fails if one failed.
wait_workers() {
  for pid in "${worker_pids[@]}"; do
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
      ((waited++ < 1200)) || fail "a worker did not finish within 120 s of the first"
      sleep 0.1
    done
    wait "$pid" || fail "a worker failed"
  done
}

final_accuracy() {
  sed -n 's/^final test accuracy: //p' "$1" | tail -n 1
}

worker_pids=()
if [[ $sharing -eq 0 ]]; then
  for ((rank = 1; rank < workers; rank++)); do
    start_worker "worker-$rank" --workers="$workers" --rank="$rank"
  done
  # Worker 0 in the foreground: its lines are the job's output.
  "$worker" --server="$address" --workers="$workers" --rank=0 --eval \
    "${extra[@]}" 2>&1 | tee -i "$logs/worker-0.log"
  wait_workers
else
  for rank in 1 2; do
    start_worker "fashion10-$rank" --workers=4 --rank="$rank"
  done
  start_worker "upper2-3" --workers=4 --rank=3 --task=upper2 \
    --train_limit="$labels" --eval
  "$worker" --server="$address" --workers=4 --rank=0 --eval \
    "${extra[@]}" 2>&1 | tee -i "$logs/fashion10-0.log"
  wait_workers
  echo "2-class model trained alone on the same $labels labels..."
  "$worker" --standalone --workers=4 --rank=3 --task=upper2 \
    --train_limit="$labels" "${extra[@]}" >"$logs/upper2-alone.log" 2>&1 ||
    fail "the standalone 2-class worker failed"
  printf '%-62s test accuracy %s\n' \
    "10-class head, hidden layer shared (3 workers, 45000 labels):" \
    "$(final_accuracy "$logs/fashion10-0.log")" \
    "2-class head, hidden layer shared (1 worker, $labels labels):" \
    "$(final_accuracy "$logs/upper2-3.log")" \
    "2-class model alone (same $labels labels, nothing shared):" \
    "$(final_accuracy "$logs/upper2-alone.log")"
fi
