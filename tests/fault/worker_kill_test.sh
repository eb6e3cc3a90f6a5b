#!/usr/bin/env bash
# Fault scenario 2: kill -9 one of 4 workers mid-run. Its lease expires and
# the round it was holding up closes within lease timeout + 1 s of the kill;
# the other workers finish; the killed worker, started again, re-joins the
# running job and finishes too.
# Usage: worker_kill_test.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: worker_kill_test.sh BUILD_DIR}
weightd=$build/server/weightd
worker=$build/examples/weightd_worker
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-fault2.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  tail -n 20 "$work/server.log"
  exit 1
}

lease_s=3
"$weightd" --listen=127.0.0.1:0 --ready_file="$work/ready" \
  --lease_timeout=${lease_s}s >"$work/server.log" 2>&1 &
server_pid=$!
pids+=($server_pid)
for _ in $(seq 100); do [[ -s $work/ready ]] && break; sleep 0.1; done
[[ -s $work/ready ]] || fail "weightd did not start"
address=$(cat "$work/ready")

flags=(--server="$address" --workers=4 --rounds=40 --local_steps=100)
declare -A worker_pid
for rank in 0 1 2 3; do
  "$worker" "${flags[@]}" --rank=$rank >"$work/worker-$rank.log" 2>&1 &
  worker_pid[$rank]=$!
  pids+=($!)
done
for _ in $(seq 600); do
  grep -q 'round closed tensor=hidden/w round=3 ' "$work/server.log" && break
  sleep 0.05
done
grep -q 'round closed tensor=hidden/w round=3 ' "$work/server.log" ||
  fail "the run never reached round 3"

killed_at=$(date +%s.%N)
kill -KILL "${worker_pid[3]}"
wait "${worker_pid[3]}" 2>/dev/null || true
echo "killed worker 3 (kill -9)"

# The drop is logged, then a round of hidden/w closes with 3 workers.
for _ in $(seq 200); do
  grep -q 'round closed tensor=hidden/w .*contributors=3 ' "$work/server.log" && break
  sleep 0.05
done
line=$(grep -m1 'round closed tensor=hidden/w .*contributors=3 ' "$work/server.log") ||
  fail "no round closed without the killed worker"
grep -q 'worker fashion10-3 dropped' "$work/server.log" ||
  fail "the server did not log dropping worker 3"
stamp=$(sed -E 's/^\[([^]]+)\].*/\1/' <<<"$line")
closed_at=$(date -d "$stamp" +%s.%N)
delay=$(awk -v a="$killed_at" -v b="$closed_at" 'BEGIN { printf "%.2f", b - a }')
echo "the round closed ${delay}s after the kill (lease timeout ${lease_s}s)"
awk -v d="$delay" -v l="$lease_s" 'BEGIN { exit !(d <= l + 1) }' ||
  fail "the round took ${delay}s, more than lease timeout + 1 s"

# Worker 3 comes back: it re-joins the running job and finishes.
"$worker" "${flags[@]}" --rank=3 --rounds=5 >"$work/worker-3b.log" 2>&1 &
pids+=($!)
restarted=$!
for rank in 0 1 2; do
  timeout 300 tail --pid="${worker_pid[$rank]}" -f /dev/null ||
    fail "worker $rank did not finish"
  wait "${worker_pid[$rank]}" || { cat "$work/worker-$rank.log"; fail "worker $rank failed"; }
done
timeout 300 tail --pid="$restarted" -f /dev/null || fail "restarted worker did not finish"
wait "$restarted" || { cat "$work/worker-3b.log"; fail "the restarted worker failed"; }
kill -TERM "$server_pid"
wait "$server_pid" || fail "weightd did not stop cleanly"
rejoined=$(grep -c 'round closed tensor=hidden/w .*contributors=4 ' "$work/server.log")
echo "PASS: round closed ${delay}s after the kill; workers 0-2 finished; worker 3 re-joined and finished ($rejoined rounds with 4 contributors in all)"
