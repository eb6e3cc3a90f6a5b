#!/usr/bin/env bash
# Fault scenario 9: SIGTERM while a worker waits for a round. The daemon
# drains within its shutdown grace and exits 0, the waiting call ends, and a
# final snapshot holds every closed round.
# Usage: sigterm_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: sigterm_test.sh BUILD_DIR}" fault9
snaps=$work/snaps
grace=3

start_weightd "$work/server.log" 127.0.0.1:0 --snapshot_dir="$snaps" \
  --snapshot_every=1000 --lease_timeout=60s --shutdown_grace=${grace}s
for rank in 0 1; do
  "$worker" --server="$address" --workers=2 --rank=$rank --rounds=50 \
    --local_steps=20 >"$work/worker-$rank.log" 2>&1 &
  worker_pid[$rank]=$!
  pids+=($!)
done
wait_for_line "$work/server.log" 'round closed tensor=hidden/w round=2 ' 60
kill -STOP "${worker_pid[1]}"  # Worker 0 is left waiting for its round.
for _ in $(seq 200); do
  "$weightctl" status --server="$address" | grep -qE 'hidden/w .* contributed 1$' && break
  sleep 0.05
done
"$weightctl" status --server="$address" >"$work/status.txt"
grep -qE 'hidden/w .* contributed 1$' "$work/status.txt" ||
  fail "worker 0 is not waiting in a round: $(grep hidden/w "$work/status.txt")"
closed=$(grep -c 'round closed tensor=hidden/w ' "$work/server.log")

start=$SECONDS
kill -TERM "$server_pid"
timeout $((grace + 5)) tail --pid="$server_pid" -f /dev/null ||
  fail "weightd still running $((grace + 5)) s after SIGTERM"
wait "$server_pid" || fail "weightd exited with an error after SIGTERM"
took=$((SECONDS - start))
grep -q 'received SIGTERM' "$work/server.log" || fail "SIGTERM not logged"
final=$(sed -n 's/.*snapshot written ([^)]*): //p' "$work/server.log" | tail -n 1)
[[ -n $final ]] || fail "no final snapshot"
kill -CONT "${worker_pid[1]}"

# The final snapshot holds every round closed before the stop.
start_weightd "$work/server-2.log" 127.0.0.1:0 --snapshot_dir="$snaps"
grep -q "restored from $final" "$work/server-2.log" || fail "the final snapshot was not restored"
version=$("$weightctl" status --server="$address" | sed -nE 's/^  hidden\/w .* version ([0-9]+) .*/\1/p')
[[ $version -eq $closed ]] || fail "restored hidden/w at version $version, expected $closed"
stop_weightd
echo "PASS: exit 0 ${took}s after SIGTERM (grace ${grace}s) with a worker waiting; final snapshot restored at version $version"
