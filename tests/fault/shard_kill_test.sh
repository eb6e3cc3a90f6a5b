#!/usr/bin/env bash
# Fault scenario 1 with two shards: a 4-worker sync training run against two
# weightd shards (the shared layer split by rows over both), shard 1 killed
# with kill -9 mid-way and restarted on its port from its own snapshot
# directory. The run must complete, every worker must finish, the final
# accuracy must be within 0.01 of an uninterrupted 2-shard run with the same
# seeds, and no round on either shard may have counted a worker twice.
# Usage: shard_kill_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: shard_kill_test.sh BUILD_DIR}" shardkill

# shard_flags I: the flags of shard I of 2, each with its own snapshots.
shard_flags() {
  echo --shard_index="$1" --shard_count=2 --snapshot_dir="$work/snaps$1" \
    --snapshot_every=1 --lease_timeout=30s
}

# start_shards LOGPREFIX: starts shards 0 and 1 on free ports.
start_shards() {
  # shellcheck disable=SC2046
  start_weightd "$1-0.log" 127.0.0.1:0 $(shard_flags 0)
  pid0=$server_pid addr0=$address
  # shellcheck disable=SC2046
  start_weightd "$1-1.log" 127.0.0.1:0 $(shard_flags 1)
  pid1=$server_pid addr1=$address
}

start_workers() {
  worker_pids=()
  for rank in 0 1 2 3; do
    local eval=()
    [[ $rank -eq 0 ]] && eval=(--eval)
    # Shard 1 listed first: the client orders the shards itself. 64 KiB:
    # the 401 KB shared layer is split over both shards.
    "$worker" --server="$addr1,$addr0" --split_bytes=65536 --rank=$rank \
      --workers=4 --rounds=14 --local_steps=100 --check_counts "${eval[@]}" \
      >"$1.$rank" 2>&1 &
    worker_pids+=($!)
    pids+=($!)
  done
}


stop_shards() {
  server_pid=$pid0; stop_weightd
  server_pid=$pid1; stop_weightd
}


# 1. The uninterrupted run.
start_shards "$work/baseline-server"
start_workers "$work/baseline"
wait_workers "$work/baseline"
for i in 0 1; do
  grep -q 'round closed tensor=hidden/w round=13 ' "$work/baseline-server-$i.log" ||
    fail "shard $i did not hold a part of hidden/w through 14 rounds"
done
stop_shards
baseline=$(accuracy "$work/baseline")
echo "uninterrupted, 2 shards: final test accuracy $baseline"
rm -rf "$work/snaps0" "$work/snaps1"

# 2. The same run, with shard 1 killed mid-way and restarted.
start_shards "$work/server-1"
port1=${addr1##*:}
start_workers "$work/killed"
wait_for_line "$work/server-1-1.log" 'round closed tensor=hidden/w round=5 ' 60
kill -KILL "$pid1"
wait "$pid1" 2>/dev/null || true
echo "killed shard 1 (kill -9) after its round 5 of hidden/w closed"
# shellcheck disable=SC2046
start_weightd "$work/server-2-1.log" "127.0.0.1:$port1" $(shard_flags 1)
pid1=$server_pid
grep -m1 'restored from' "$work/server-2-1.log" ||
  fail "the restarted shard did not restore its snapshot"
wait_workers "$work/killed"
stop_shards
interrupted=$(accuracy "$work/killed")
echo "shard 1 killed and restarted: final test accuracy $interrupted"

expect_close_accuracy "$baseline" "$interrupted"
expect_no_double_count "$work/server-1-0.log" "$work/server-1-1.log" "$work/server-2-1.log"
echo "PASS: accuracy $interrupted vs $baseline uninterrupted (2 shards, shard 1 killed); every worker finished; no round counted a worker twice"
