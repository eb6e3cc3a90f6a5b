#!/usr/bin/env bash
# Fault scenario 3: SIGSTOP a worker for longer than its lease, then SIGCONT.
# The rounds go on without it; its late update is not mixed into a later
# round (the client sees the round moved on and pulls the shared value
# instead), and it finishes the run with the others.
# Usage: sigstop_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: sigstop_test.sh BUILD_DIR}" fault3
lease_s=2
start_weightd "$work/server.log" 127.0.0.1:0 --lease_timeout=${lease_s}s

declare -A worker_pid
for rank in 0 1 2 3; do
  "$worker" --server="$address" --workers=4 --rank=$rank --rounds=30 \
    --local_steps=100 --check_counts >"$work/worker-$rank.log" 2>&1 &
  worker_pid[$rank]=$!
  pids+=($!)
done
wait_for_line "$work/server.log" 'round closed tensor=hidden/w round=3 ' 60
kill -STOP "${worker_pid[3]}"
echo "stopped worker 3 (SIGSTOP) for $((lease_s * 2)) s, twice its lease"
wait_for_line "$work/server.log" 'worker fashion10-3 dropped' $((lease_s * 2))
wait_for_line "$work/server.log" 'round closed tensor=hidden/w .*contributors=3 ' 10
sleep $lease_s
kill -CONT "${worker_pid[3]}"

for rank in 0 1 2 3; do
  timeout 300 tail --pid="${worker_pid[$rank]}" -f /dev/null ||
    fail "worker $rank did not finish"
  wait "${worker_pid[$rank]}" || fail "worker $rank failed"
done
stop_weightd
grep -q 'round(s) moved on without this worker' "$work/worker-3.log" ||
  fail "worker 3 did not notice that the rounds moved on"
over=$(grep -E 'round closed tensor=hidden/w .*contributors=([5-9]|[1-9][0-9])' "$work/server.log" || true)
[[ -z $over ]] || fail "a round counted a worker twice: $over"
without=$(grep -c 'round closed tensor=hidden/w .*contributors=3 ' "$work/server.log")
missed=$(sed -n 's/.*: \([0-9]*\) round(s) moved on.*/\1/p' "$work/worker-3.log")
echo "PASS: $without round(s) closed without the stopped worker; it missed $missed, pulled the shared value and finished"
