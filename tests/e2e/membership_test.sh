#!/usr/bin/env bash
# Dynamic membership, as `docker compose up --scale worker=N` changes it
# mid-run: 2 workers train; a third joins mid-run (it starts from the
# shared weights and skips the start barrier); then one of the first two
# gets SIGTERM (docker stop), finishes its round, leaves and exits 0. The
# rounds of the shared layer must close with 2, then 3, then 2 workers, the
# shrink well before the lease timeout (the worker left; it did not
# expire), and every worker must finish.
# Usage: membership_test.sh BUILD_DIR
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: membership_test.sh BUILD_DIR}" membership
lease_s=30
closed='round closed tensor=hidden/w'

start_weightd "$work/server.log" 127.0.0.1:0 --lease_timeout=${lease_s}s
run_worker() {  # run_worker RANK WORKERS ROUNDS
  "$worker" --server="$address" --rank="$1" --workers="$2" --rounds="$3" \
    --local_steps=100 >"$work/worker$1.log" 2>&1 &
  pids+=($!)
}
run_worker 0 2 60
w0=$!
run_worker 1 2 400
w1=$!
wait_for_line "$work/server.log" "$closed round=5 " 60

run_worker 2 3 40
w2=$!
wait_for_line "$work/server.log" "$closed .*contributors=3 " 60
echo "a third worker joined: rounds close with 3 contributors"

line=$(wc -l <"$work/server.log")
kill -TERM "$w1"
term_at=$SECONDS
timeout 30 tail --pid="$w1" -f /dev/null || fail "worker 1 did not exit within 30 s of SIGTERM"
wait "$w1" || fail "worker 1 exited with an error after SIGTERM"
grep -q 'stopping on a signal' "$work/worker1.log" || fail "worker 1 did not stop on the signal"
grep -q 'worker fashion10-1 dropped' "$work/server.log" &&
  fail "worker 1 expired instead of leaving"
# The next rounds close with the 2 left, long before a lease could expire.
until tail -n +"$((line + 1))" "$work/server.log" | grep -q "$closed .*contributors=2 "; do
  ((SECONDS - term_at < lease_s / 2)) || fail "no round closed with 2 workers within $((lease_s / 2)) s of the leave"
  sleep 0.05
done
echo "worker 1 left on SIGTERM after $((SECONDS - term_at)) s: rounds close with 2 contributors"

for pid in "$w0" "$w2"; do
  timeout 300 tail --pid="$pid" -f /dev/null || fail "a worker did not finish"
  wait "$pid" || fail "a worker exited with an error"
done
stop_weightd
counts=$(grep -o "$closed round=[0-9]* contributors=[0-9]*" "$work/server.log" |
  sed 's/.*contributors=//' | uniq | tr '\n' ' ')
echo "contributors per round of hidden/w, runs collapsed: $counts"
[[ $counts == "2 3 2 "* ]] || fail "expected rounds of 2, then 3, then 2 workers, got: $counts"
echo "PASS: the sharing group grew to 3 and shrank to 2 at the next rounds; every worker finished"
