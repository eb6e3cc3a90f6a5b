#!/usr/bin/env bash
# The mistakes a new user makes must end in a clear message or in training,
# never in a silent hang (real daemon, real workers, 127.0.0.1 only):
#   1. more workers than --workers: all of them train and finish;
#   2. two workers with one id: the second is refused, naming the holder,
#      and the first trains on; workers started alike get distinct ids;
#   3. a second daemon on a port in use fails at start;
#   4. SIGINT stops a worker within 2 s while it connects, waits at the
#      barrier, waits for a round, or retries a dead server;
#   5. a restart from an older snapshot is logged by the daemon, and the
#      workers report the rounds lost.
# Usage: no_hang_test.sh BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: no_hang_test.sh BUILD_DIR}" nohang

# sigint_stops NAME PID LOG: SIGINT must end the worker within 2 s, exit 0.
sigint_stops() {
  kill -INT "$2"
  exits_within "$2" 2 || fail "$1: the worker did not stop within 2 s of SIGINT"
  wait "$2" || fail "$1: the worker exited with an error after SIGINT"
  grep -q 'stopping on a signal' "$3" || fail "$1: the worker did not say it stopped"
  echo "ok: $1: stopped within 2 s of SIGINT"
}

short=(--rounds=3 --local_steps=20)

# 1 and 2: six workers started alike for a job of four.
start_weightd "$work/server1.log" 127.0.0.1:0
six=()
for i in 1 2 3 4 5 6; do
  "$worker" --server="$address" --workers=4 "${short[@]}" \
    >"$work/six-$i.log" 2>&1 &
  six+=($!)
  pids+=($!)
done
for i in "${!six[@]}"; do
  exits_within "${six[$i]}" 90 || fail "1: worker $((i + 1)) of 6 (job of 4) still runs after 90 s"
  wait "${six[$i]}" || fail "1: worker $((i + 1)) of 6 failed"
done
ids=$(sed -n 's/^weightd_worker \([^:]*\): connected.*/\1/p' "$work"/six-*.log | sort -u | wc -l)
((ids == 6)) || fail "2: six workers started alike got $ids distinct ids"
shards=$(sed -n 's/.*training on data shard \([0-9]*\) of 4/\1/p' "$work"/six-*.log | sort | uniq | wc -l)
((shards == 4)) || fail "1: the six workers trained on $shards distinct data shards, not all 4"
echo "ok: 1: six workers started alike for a job of four all finished, on all 4 data shards"

# 2: a second process with the same id is refused; the first trains on.
"$worker" --server="$address" --worker_id=dup --workers=1 --rounds=1000000 \
  --local_steps=20 >"$work/dup-first.log" 2>&1 &
first=$!
pids+=($first)
wait_for_line "$work/dup-first.log" 'training on data shard' 30
"$worker" --server="$address" --worker_id=dup --workers=1 "${short[@]}" \
  >"$work/dup-second.log" 2>&1 &
second=$!
pids+=($second)
exits_within "$second" 60 || fail "2: the second worker with id dup still runs after 60 s"
if wait "$second"; then fail "2: the second worker with id dup exited 0"; fi
grep -q 'worker id dup is held by another live process (ipv4:127.0.0.1:' \
  "$work/dup-second.log" || fail "2: the refusal does not name the holder"
kill -0 "$first" 2>/dev/null || fail "2: the first worker with id dup died"
grep -q 'refused Join from .*worker id dup is held' "$work/server1.log" ||
  fail "2: the daemon did not log the refused Join"
kill -INT "$first"
exits_within "$first" 5 || fail "2: the first worker did not stop"
echo "ok: 2: a second worker with id dup was refused, naming the holder; the first trained on"

# 3: a second daemon on the port in use fails at start.
port=${address##*:}
"$weightd" --listen="127.0.0.1:$port" >"$work/second-daemon.log" 2>&1 &
dup_daemon=$!
pids+=($dup_daemon)
exits_within "$dup_daemon" 10 || fail "3: a second weightd on port $port is still running"
if wait "$dup_daemon"; then fail "3: a second weightd on port $port exited 0"; fi
grep -q "cannot listen on 127.0.0.1:$port" "$work/second-daemon.log" ||
  fail "3: the second daemon did not say why it failed"
echo "ok: 3: a second weightd on port $port failed at start: $(tail -n 1 "$work/second-daemon.log")"

# 4: SIGINT in every state.
#   Connecting: nothing listens on a port the first daemon released.
stop_weightd
"$worker" --server="127.0.0.1:$port" --workers=1 --connect_timeout=60s \
  >"$work/connecting.log" 2>&1 &
w=$!
pids+=($w)
wait_for_line "$work/connecting.log" 'waiting for weightd at' 10
sigint_stops "4 connecting" "$w" "$work/connecting.log"
#   At the barrier: one worker of a job of three.
start_weightd "$work/server2.log" 127.0.0.1:0
"$worker" --server="$address" --workers=3 >"$work/barrier.log" 2>&1 &
w=$!
pids+=($w)
wait_for_line "$work/barrier.log" 'waiting at barrier start' 30
sleep 1
sigint_stops "4 barrier" "$w" "$work/barrier.log"
#   Waiting for a round: the other worker of the job is frozen.
"$worker" --server="$address" --workers=2 --rank=0 --rounds=1000000 --local_steps=10 \
  >"$work/round-a.log" 2>&1 &
a=$!
"$worker" --server="$address" --workers=2 --rank=1 --rounds=1000000 --local_steps=10 \
  >"$work/round-b.log" 2>&1 &
b=$!
pids+=($a $b)
wait_for_line "$work/server2.log" 'round closed tensor=hidden/w round=2 ' 60
kill -STOP "$b"
sleep 2  # a pushes its next round and waits for b's.
sigint_stops "4 round wait" "$a" "$work/round-a.log"
kill -KILL "$b"
#   Retrying: the server is gone while the worker trains.
"$worker" --server="$address" --workers=1 --rounds=1000000 --local_steps=10 \
  >"$work/retry.log" 2>&1 &
w=$!
pids+=($w)
wait_for_line "$work/retry.log" 'training on data shard' 30
sleep 1
kill -KILL "$server_pid"
wait_for_line "$work/retry.log" 'retrying for up to' 30
sigint_stops "4 retrying" "$w" "$work/retry.log"

# 5: kill -9 three rounds after a snapshot, restart: the rollback is logged
# on both sides. (The cadence is off; the snapshot is taken on request.)
snaps="$work/snaps"
start_weightd "$work/server3.log" 127.0.0.1:0 --snapshot_dir="$snaps" \
  --snapshot_every=1000000
port=${address##*:}
"$worker" --server="$address" --workers=1 --rounds=1000000 --local_steps=10 \
  >"$work/rollback.log" 2>&1 &
w=$!
pids+=($w)
wait_for_line "$work/server3.log" 'round closed tensor=hidden/w round=2 ' 60
"$weightctl" snapshot --server="$address" >/dev/null || fail "5: weightctl snapshot failed"
closed=$(grep -c 'round closed tensor=hidden/w ' "$work/server3.log")
for _ in $(seq 300); do
  (($(grep -c 'round closed tensor=hidden/w ' "$work/server3.log") >= closed + 3)) && break
  sleep 0.1
done
(($(grep -c 'round closed tensor=hidden/w ' "$work/server3.log") >= closed + 3)) ||
  fail "5: no 3 rounds closed after the snapshot within 30 s"
kill -KILL "$server_pid"
start_weightd "$work/server4.log" "127.0.0.1:$port" --snapshot_dir="$snaps"
grep -qE 'restored from .*: [0-9]+ tensor\(s\) at version' "$work/server4.log" ||
  fail "5: the daemon did not say what it restored"
wait_for_line "$work/rollback.log" 'restored version [0-9]+ < [0-9]+ of tensor .*round\(s\) lost' 30
sigint_stops "5 after the restart" "$w" "$work/rollback.log"
echo "ok: 5: $(grep -m1 -o 'restored version.*lost' "$work/rollback.log")"
echo "PASS: no hang: extra workers trained, a duplicate id and a busy port were refused, SIGINT stopped every wait within 2 s, a rollback was reported"
