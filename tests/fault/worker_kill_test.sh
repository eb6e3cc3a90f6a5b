#!/usr/bin/env bash
# Fault scenario 2: kill -9 one of 4 workers mid-run. Its lease expires and
# the round it was holding up closes within lease timeout + 1 s of the kill;
# the other workers finish; the killed worker, started again, re-joins the
# running job and finishes too.
# Usage: worker_kill_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: worker_kill_test.sh BUILD_DIR}" fault2
lease_s=3
start_weightd "$work/server.log" 127.0.0.1:0 --lease_timeout=${lease_s}s

flags=(--server="$address" --workers=4 --rounds=40 --local_steps=100 --check_counts)
declare -A worker_pid
for rank in 0 1 2 3; do
  "$worker" "${flags[@]}" --rank=$rank >"$work/worker-$rank.log" 2>&1 &
  worker_pid[$rank]=$!
  pids+=($!)
done
wait_for_line "$work/server.log" 'round closed tensor=hidden/w round=3 ' 60

killed_at=$(date +%s.%N)
kill -KILL "${worker_pid[3]}"
wait "${worker_pid[3]}" 2>/dev/null || true
echo "killed worker 3 (kill -9)"

# The drop is logged, then a round of hidden/w closes with 3 workers.
closed_re='round closed tensor=hidden/w .*contributors=3 '
wait_for_line "$work/server.log" "$closed_re" 15
grep -q 'worker fashion10-3 dropped' "$work/server.log" ||
  fail "the server did not log dropping worker 3"
stamp=$(grep -m1 -E "$closed_re" "$work/server.log" | sed -E 's/^\[([^]]+)\].*/\1/')
closed_at=$(date -d "$stamp" +%s.%N)
delay=$(awk -v a="$killed_at" -v b="$closed_at" 'BEGIN { printf "%.2f", b - a }')
echo "the round closed ${delay}s after the kill (lease timeout ${lease_s}s)"
awk -v d="$delay" -v l="$lease_s" 'BEGIN { exit !(d <= l + 1) }' ||
  fail "the round took ${delay}s, more than lease timeout + 1 s"

# Worker 3 comes back: it re-joins the running job and finishes.
"$worker" "${flags[@]}" --rank=3 --rounds=5 >"$work/worker-3b.log" 2>&1 &
restarted=$!
pids+=($restarted)
for rank in 0 1 2; do
  timeout 300 tail --pid="${worker_pid[$rank]}" -f /dev/null ||
    fail "worker $rank did not finish"
  wait "${worker_pid[$rank]}" || fail "worker $rank failed"
done
timeout 300 tail --pid="$restarted" -f /dev/null || fail "restarted worker did not finish"
wait "$restarted" || fail "the restarted worker failed"
stop_weightd
rejoined=$(grep -c 'round closed tensor=hidden/w .*contributors=4 ' "$work/server.log")
echo "PASS: round closed ${delay}s after the kill; workers 0-2 finished; worker 3 re-joined and finished ($rejoined rounds with 4 contributors in all)"
