#!/usr/bin/env bash
# Fault scenario 6: the daemon dies while writing a snapshot. First at each
# step of the write (crash points: mid-write, before fsync, after fsync,
# after rename), then 50 kill -9 at random moments of a run that snapshots
# after every round. Every restart must load a complete snapshot, the old
# or the new one, never a torn one (a skipped file would be logged), and
# leave no temporary file behind.
# Usage: snapshot_crash_test.sh BUILD_DIR [KILLS]
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: snapshot_crash_test.sh BUILD_DIR [KILLS]}" fault6
kills=${2:-50}
snaps=$work/snaps
flags=(--snapshot_dir="$snaps" --snapshot_every=1 --lease_timeout=30s)

# run_worker LOG ROUNDS: one worker training ROUNDS short rounds, detached.
run_worker() {
  "$worker" --server="$address" --workers=1 --rounds="$2" --local_steps=5 \
    --train_limit=500 >"$1" 2>&1 &
  worker_pid=$!
  pids+=($!)
}

# restored_number LOG: the number of the snapshot the daemon restored.
restored_number() {
  sed -nE 's/.*restored from .*snapshot-0*([0-9]+)\.wds:.*/\1/p' "$1"
}

check_restart() {  # LOG: restored a complete snapshot, skipped nothing.
  grep -q 'restored from' "$1" || fail "no snapshot restored ($1)"
  ! grep -q 'skipped' "$1" || fail "a torn snapshot was seen: $(grep skipped "$1")"
}

# 1. A crash at each step of the write.
for point in snapshot_mid_write snapshot_before_fsync snapshot_after_fsync \
  snapshot_after_rename; do
  rm -rf "$snaps"
  start_weightd "$work/$point-0.log" 127.0.0.1:0 "${flags[@]}"
  run_worker "$work/$point-worker-0.log" 2
  timeout 120 tail --pid="$worker_pid" -f /dev/null || fail "worker did not finish"
  stop_weightd  # Its final snapshot is the old one.
  old=$(ls "$snaps" | tail -n 1)
  old_number=$(sed -E 's/snapshot-0*([0-9]+)\.wds/\1/' <<<"$old")

  WEIGHTD_CRASH_AT=$point start_weightd "$work/$point-1.log" 127.0.0.1:0 "${flags[@]}"
  run_worker "$work/$point-worker-1.log" 2
  timeout 60 tail --pid="$server_pid" -f /dev/null || fail "$point: no crash"
  grep -q "crash point $point reached" "$work/$point-1.log" ||
    fail "$point: the daemon died elsewhere"
  kill -KILL "$worker_pid" 2>/dev/null || true

  torn=$(find "$snaps" -name '*.tmp' -size +0 | wc -l)
  if [[ $point != snapshot_after_rename ]]; then
    ((torn == 1)) || fail "$point: expected one partly written file, found: $(ls -l "$snaps")"
  fi
  start_weightd "$work/$point-2.log" 127.0.0.1:0 "${flags[@]}"
  check_restart "$work/$point-2.log"
  ! ls "$snaps"/*.tmp >/dev/null 2>&1 || fail "$point: temporary file left: $(ls "$snaps")"
  got=$(restored_number "$work/$point-2.log")
  if [[ $point == snapshot_after_rename ]]; then
    ((got > old_number)) || fail "$point: restored $got, expected the new snapshot"
  else
    ((got == old_number)) || fail "$point: restored $got, expected the old $old_number"
  fi
  stop_weightd
  echo "$point: restarted from complete snapshot $got (old was $old_number;" \
    "$torn temporary file(s) removed)"
done

# 2. Random kills while two workers train and every round is snapshotted.
rm -rf "$snaps"
start_weightd "$work/life-0.log" 127.0.0.1:0 "${flags[@]}"
port=${address##*:}
for rank in 0 1; do
  "$worker" --server="$address" --workers=2 --rank=$rank --rounds=1000000 \
    --local_steps=1 --train_limit=200 >"$work/random-worker-$rank.log" 2>&1 &
  pids+=($!)
done
last=0
mid_write=0
for life in $(seq "$kills"); do
  log=$work/life-$((life - 1)).log
  wait_for_line "$log" 'snapshot written' 60
  sleep "$(printf '0.%03d' $((RANDOM % 300)))"
  kill -KILL "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  ls "$snaps"/*.tmp >/dev/null 2>&1 && mid_write=$((mid_write + 1))
  start_weightd "$work/life-$life.log" "127.0.0.1:$port" "${flags[@]}"
  check_restart "$work/life-$life.log"
  got=$(restored_number "$work/life-$life.log")
  ((got >= last)) || fail "life $life restored snapshot $got, older than $last"
  last=$got
done
stop_weightd
echo "PASS: a crash at each of 4 write steps and $kills random kill -9:" \
  "every restart loaded a complete snapshot (last: number $last), none torn;" \
  "$mid_write of the random kills left a partly written file"
