#!/usr/bin/env bash
# Fault scenario: the same-host data path (docs/protocol.md section 11) with
# real processes and real failures. The demo worker uses shared memory by
# default, so every job here runs on it unless the daemon cannot map.
#  1. Which path, logged: 3 workers and the daemon each say that the worker
#     moves its tensors through shared memory; the job finishes
#     (--check_counts, no round counted twice).
#  2. Fallback: the same job against a daemon in a pid namespace of its own
#     (unshare --pid --fork --mount-proc), which cannot see /proc/<worker>:
#     every worker says it uses the stream path and why, the daemon refused
#     each AttachSegment, and the job ends with the accuracy of part 1
#     (within 0.01: only the data path differs). Where unshare cannot
#     create the namespace, part 2 is left out, the others still run, and
#     the script ends with SKIP (77) rather than PASS.
#  3-5. One daemon (short lease, snapshots), 4 workers; its
#     /proc/<pid>/maps holds one "memfd:weightd-segment" line per segment:
#  5. a worker that finishes and leaves: the count drops to 3 within 2 s
#     and the daemon keeps running (Leave unmaps before it answers; the
#     housekeeping sweep would within 250 ms too, so this does not tell
#     the two apart);
#  3. a worker killed with -9: the count drops to 2 within lease timeout +
#     1 s of the kill (its lease expires, the housekeeping sweep unmaps);
#  4. the daemon killed with -9 while the last 2 workers train: restarted
#     from its snapshots on the same port, it has no segments; both workers
#     attach again (it maps 2 and says so; they never take the stream
#     path), finish, and nothing is left behind:
#     /dev/shm lists what it did before this script (a memfd has no name),
#     and neither daemon process exists. The /dev/shm comparison is of the
#     whole directory, so another program creating a file there while this
#     runs would fail it too (the failure names the file).
# Usage: shm_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: shm_test.sh BUILD_DIR}" fault_shm
shm_before=$(ls -A /dev/shm)
lease_s=2
moved_re='moves its tensors through shared memory'

# segments PID: the worker segments PID has mapped (0 once it is gone).
segments() {
  local n
  n=$(grep -c 'memfd:weightd-segment' "/proc/$1/maps" 2>/dev/null) || true
  echo "${n:-0}"
}

# wait_segments PID COUNT SECONDS: waits until PID maps COUNT segments.
wait_segments() {
  local deadline=$((SECONDS + $3))
  until [[ $(segments "$1") == "$2" ]]; do
    ((SECONDS < deadline)) ||
      fail "weightd maps $(segments "$1") segments, not $2, after $3 s"
    sleep 0.05
  done
}

# run_job LOGPREFIX: 3 workers against $address, to the end; logs $1.RANK.
run_job() {
  worker_pids=()
  for rank in 0 1 2; do
    local eval=()
    [[ $rank -eq 0 ]] && eval=(--eval)
    "$worker" --server="$address" --rank=$rank --workers=3 --rounds=10 \
      --local_steps=100 --check_counts "${eval[@]}" >"$1.$rank" 2>&1 &
    worker_pids+=($!)
    pids+=($!)
  done
  wait_workers "$1"
}

# expect_lines COUNT REGEX FILE...: the FILEs together have COUNT lines
# matching REGEX.
expect_lines() {
  local want=$1 re=$2 n
  shift 2
  n=$(cat "$@" | grep -cE "$re" || true)
  [[ $n -eq $want ]] || fail "$n lines match '$re' in $*, not $want"
}

# 1. Which path, logged.
start_weightd "$work/shm-server.log" 127.0.0.1:0
run_job "$work/shm"
stop_weightd
for rank in 0 1 2; do
  grep -qE "worker fashion10-$rank $moved_re with $address \(a segment of [0-9.]+ MiB\)" \
    "$work/shm.$rank" || fail "worker $rank did not log that it uses shared memory"
done
expect_lines 0 'uses the stream path' "$work"/shm.?
expect_lines 3 "lease [0-9]+ \(.*, pid [0-9]+\) $moved_re: a segment of" "$work/shm-server.log"
expect_no_double_count "$work/shm-server.log"
shm_accuracy=$(accuracy "$work/shm")
echo "1. shared memory: 3 workers and the daemon say so; accuracy $shm_accuracy"

# 2. Fallback: the daemon is pid 1 of a namespace of its own, with its own
# /proc. unshare stays its parent (server_pid) and ignores SIGTERM, so the
# daemon itself is signalled; --kill-child ends it if unshare is killed.
if ! unshare --pid --fork --mount-proc --kill-child true 2>"$work/unshare.err"; then
  skipped="cannot create a pid namespace here: $(cat "$work/unshare.err")"
  echo "2. left out: $skipped"
else
  printf '#!/bin/sh\nexec unshare --pid --fork --mount-proc --kill-child %s "$@"\n' \
    "$weightd" >"$work/weightd-in-pidns"
  chmod +x "$work/weightd-in-pidns"
  plain_weightd=$weightd
  weightd=$work/weightd-in-pidns
  start_weightd "$work/stream-server.log" 127.0.0.1:0
  weightd=$plain_weightd
  inner_pid=$(pgrep -P "$server_pid" -x weightd) || fail "no weightd under unshare"
  run_job "$work/stream"
  kill -TERM "$inner_pid"
  timeout 15 tail --pid="$server_pid" -f /dev/null || fail "weightd did not stop"
  wait "$server_pid" || fail "weightd exited with an error after SIGTERM"
  why="AttachSegment: cannot see the worker's segment /proc/[0-9]+/fd/[0-9]+: No such file or directory"
  for rank in 0 1 2; do
    grep -qE "worker fashion10-$rank uses the stream path to $address: $why" \
      "$work/stream.$rank" || fail "worker $rank did not log the stream path and why"
  done
  expect_lines 0 "$moved_re" "$work"/stream.? "$work/stream-server.log"
  expect_lines 3 'refused AttachSegment .*cannot see the worker' "$work/stream-server.log"
  expect_no_double_count "$work/stream-server.log"
  stream_accuracy=$(accuracy "$work/stream")
  expect_close_accuracy "$shm_accuracy" "$stream_accuracy"
  echo "2. stream path: 3 workers say why; accuracy $stream_accuracy (shared memory: $shm_accuracy)"
fi

# 3-5. One daemon, 4 workers: 3 leaves after 5 rounds, 2 is killed, 0 and 1
# train through a kill -9 of the daemon.
server_flags=(--lease_timeout=${lease_s}s --snapshot_dir="$work/snaps" --snapshot_every=1)
start_weightd "$work/server-1.log" 127.0.0.1:0 "${server_flags[@]}"
port=${address##*:}
first_pid=$server_pid
declare -A worker_pid
for rank in 0 1 2 3; do
  rounds=80
  [[ $rank -eq 3 ]] && rounds=5
  "$worker" --server="$address" --rank=$rank --workers=4 --rounds=$rounds \
    --local_steps=100 --check_counts >"$work/worker.$rank" 2>&1 &
  worker_pid[$rank]=$!
  pids+=($!)
done
wait_segments "$server_pid" 4 30
echo "3-5. weightd maps 4 segments"

# 5. Worker 3 leaves.
timeout 60 tail --pid="${worker_pid[3]}" -f /dev/null || fail "worker 3 did not finish"
wait "${worker_pid[3]}" || fail "worker 3 failed"
left_at=$(date +%s.%N)
wait_segments "$server_pid" 3 2
after=$(awk -v a="$left_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
grep -q 'worker fashion10-3 left' "$work/server-1.log" || fail "the daemon did not log worker 3 leaving"
kill -0 "$server_pid" || fail "weightd stopped"
echo "5. worker 3 left: weightd maps 3 segments ${after} s after it exited, and runs on"

# 3. Worker 2 killed.
kill -KILL "${worker_pid[2]}"
killed_at=$(date +%s.%N)
wait "${worker_pid[2]}" 2>/dev/null || true
wait_segments "$server_pid" 2 $((lease_s + 2))
delay=$(awk -v a="$killed_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
awk -v d="$delay" -v l="$lease_s" 'BEGIN { exit !(d <= l + 1) }' ||
  fail "the segment was unmapped ${delay} s after the kill, more than lease timeout + 1 s"
grep -q 'worker fashion10-2 dropped' "$work/server-1.log" ||
  fail "the daemon did not log dropping worker 2"
echo "3. worker 2 killed: weightd maps 2 segments ${delay} s later (lease timeout ${lease_s} s)"

# 4. The daemon killed, restarted from its snapshots.
for rank in 0 1; do
  kill -0 "${worker_pid[$rank]}" 2>/dev/null ||
    fail "worker $rank finished before the daemon could be killed (more --rounds?)"
done
kill -KILL "$server_pid"
wait "$server_pid" 2>/dev/null || true
start_weightd "$work/server-2.log" "127.0.0.1:$port" "${server_flags[@]}"
grep -q 'restored from' "$work/server-2.log" || fail "the restarted daemon restored no snapshot"
# It kept the leases but has no segments: each worker's next segment call
# is refused, and the worker attaches its segment again.
wait_segments "$server_pid" 2 15
worker_pids=("${worker_pid[0]}" "${worker_pid[1]}")
wait_workers "$work/worker"
expect_lines 2 "$moved_re" "$work/server-2.log"
expect_lines 0 'uses the stream path' "$work/worker.0" "$work/worker.1"
stop_weightd
expect_no_double_count "$work/server-1.log" "$work/server-2.log"
for pid in "$first_pid" "$server_pid"; do
  ! kill -0 "$pid" 2>/dev/null || fail "weightd $pid still runs"
done
shm_after=$(ls -A /dev/shm)
[[ $shm_after == "$shm_before" ]] ||
  fail "/dev/shm changed: $(diff <(echo "$shm_before") <(echo "$shm_after") | grep '^[<>]')"
echo "4. weightd killed and restarted: workers 0 and 1 attached again and finished; /dev/shm unchanged ($(echo "$shm_after" | grep -c . || true) entries)"
if [[ -n ${skipped:-} ]]; then
  echo "SKIP: parts 1, 3, 4 and 5 passed; part 2 (the stream fallback) $skipped"
  exit 77
fi
echo "PASS: shared memory logged and used; stream fallback in another pid namespace; segments unmapped on leave and on lease expiry; nothing left after kill -9"
