#!/usr/bin/env bash
# Fault scenario 1: kill -9 the server during a 4-worker sync training run,
# restart it on the same port from its snapshot directory. The run must
# complete, every worker must finish, the final accuracy must be within 0.01
# of an uninterrupted run with the same seeds, and no round may have counted
# a worker twice (a round of the shared layer closes with at most 4
# contributions, once per server life).
# Usage: server_kill_test.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: server_kill_test.sh BUILD_DIR}
weightd=$build/server/weightd
worker=$build/examples/weightd_worker
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-fault1.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

rounds=14
worker_flags=(--workers=4 --rounds=$rounds --local_steps=100)

# Starts weightd on $1 (an address, port 0 allowed) with log $2; sets
# server_pid and address.
start_server() {
  rm -f "$work/ready"
  "$weightd" --listen="$1" --ready_file="$work/ready" \
    --snapshot_dir="$work/snaps" --snapshot_every=1 --lease_timeout=30s \
    >"$2" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  for _ in $(seq 100); do
    [[ -s $work/ready ]] && break
    sleep 0.1
  done
  [[ -s $work/ready ]] || { cat "$2"; echo "FAIL: weightd did not start"; exit 1; }
  address=$(cat "$work/ready")
}

# Runs the 4 workers against $address in the background; worker 0 logs
# to $1.
start_workers() {
  worker_pids=()
  for rank in 0 1 2 3; do
    local eval=()
    [[ $rank -eq 0 ]] && eval=(--eval)
    "$worker" --server="$address" --rank=$rank "${worker_flags[@]}" \
      "${eval[@]}" >"$1.$rank" 2>&1 &
    worker_pids+=($!)
    pids+=($!)
  done
}

wait_workers() {
  for i in "${!worker_pids[@]}"; do
    if ! timeout 300 tail --pid="${worker_pids[$i]}" -f /dev/null; then
      echo "FAIL: worker $i did not finish"
      exit 1
    fi
    wait "${worker_pids[$i]}" || {
      cat "$1.$i"
      echo "FAIL: worker $i exited with an error"
      exit 1
    }
  done
}

accuracy() { sed -n 's/^final test accuracy: //p' "$1.0"; }

# 1. The uninterrupted run.
start_server 127.0.0.1:0 "$work/baseline-server.log"
start_workers "$work/baseline"
wait_workers "$work/baseline"
kill -TERM "$server_pid"
wait "$server_pid" || true
baseline=$(accuracy "$work/baseline")
echo "uninterrupted: final test accuracy $baseline"
rm -rf "$work/snaps"

# 2. The same run, with the server killed mid-way and restarted.
start_server 127.0.0.1:0 "$work/server-1.log"
port=${address##*:}
start_workers "$work/killed"
for _ in $(seq 600); do
  grep -q 'round closed tensor=hidden/w round=5 ' "$work/server-1.log" && break
  sleep 0.05
done
grep -q 'round closed tensor=hidden/w round=5 ' "$work/server-1.log" ||
  { echo "FAIL: the run never reached round 5"; exit 1; }
kill -KILL "$server_pid"
wait "$server_pid" 2>/dev/null || true
echo "killed weightd (kill -9) after round 5 of hidden/w closed"
start_server "127.0.0.1:$port" "$work/server-2.log"
grep -m1 'restored from' "$work/server-2.log" ||
  { echo "FAIL: the restarted server did not restore a snapshot"; exit 1; }
wait_workers "$work/killed"
kill -TERM "$server_pid"
wait "$server_pid" || true
interrupted=$(accuracy "$work/killed")
echo "killed and restarted: final test accuracy $interrupted"

awk -v a="$baseline" -v b="$interrupted" \
  'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.01) }' || {
  echo "FAIL: accuracy $interrupted is not within 0.01 of $baseline"
  exit 1
}
for log in "$work/server-1.log" "$work/server-2.log"; do
  over=$(grep -E 'round closed tensor=hidden/w .*contributors=([5-9]|[1-9][0-9])' "$log" || true)
  [[ -z $over ]] || { echo "FAIL: a round counted a worker twice: $over"; exit 1; }
  dup=$(grep -o 'round closed tensor=hidden/w round=[0-9]* ' "$log" | sort | uniq -d)
  [[ -z $dup ]] || { echo "FAIL: a round closed twice in $log: $dup"; exit 1; }
done
echo "PASS: accuracy $interrupted vs $baseline uninterrupted; every worker finished; no round counted a worker twice"
