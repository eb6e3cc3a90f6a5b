#!/usr/bin/env bash
# Fault scenario 7: a corrupted or truncated snapshot is detected by its
# checksum and the previous one is used; with no usable snapshot left the
# daemon stays up with health NOT_SERVING and a clear error.
# Usage: corrupt_snapshot_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: corrupt_snapshot_test.sh BUILD_DIR}" fault7
snaps=$work/snaps

# A short job leaves a few snapshots behind.
start_weightd "$work/server-1.log" 127.0.0.1:0 --snapshot_dir="$snaps" --snapshot_every=1
for rank in 0 1; do
  "$worker" --server="$address" --workers=2 --rank=$rank --rounds=3 \
    --local_steps=20 >"$work/worker-$rank.log" 2>&1 &
  pids+=($!)
  worker_pids+=($!)
done
for pid in "${worker_pids[@]}"; do
  wait "$pid" || fail "a worker failed"
done
stop_weightd
mapfile -t files < <(ls "$snaps"/snapshot-*.wds | sort)
[[ ${#files[@]} -eq 2 ]] || fail "expected the newest 2 snapshots, found ${#files[@]}"
newest=${files[1]}
previous=${files[0]}

# 1. Truncate the newest: the previous one is used and the skip logged.
truncate -s $(($(stat -c %s "$newest") / 2)) "$newest"
start_weightd "$work/server-2.log" 127.0.0.1:0 --snapshot_dir="$snaps" --snapshot_every=1000
grep -q "snapshot $newest skipped: DATA_LOSS" "$work/server-2.log" ||
  fail "the truncated snapshot was not reported"
grep -q "restored from $previous" "$work/server-2.log" ||
  fail "the previous snapshot was not used"
"$weightctl" health --server="$address" >"$work/health-2.txt" ||
  fail "health is not SERVING after falling back: $(cat "$work/health-2.txt")"
"$weightctl" status --server="$address" | grep -q 'hidden/w \[784,128\] version' ||
  fail "the restored server does not hold hidden/w"
stop_weightd
echo "truncated newest snapshot: skipped, previous one restored, SERVING"

# 2. Flip one byte in the middle of every snapshot: nothing usable is left.
for f in "$snaps"/snapshot-*.wds; do
  size=$(stat -c %s "$f")
  printf '\xff' | dd of="$f" bs=1 seek=$((size / 2)) conv=notrunc status=none
done
start_weightd "$work/server-3.log" 127.0.0.1:0 --snapshot_dir="$snaps"
grep -q 'no usable snapshot' "$work/server-3.log" || fail "no clear error logged"
grep -q 'checksum mismatch' "$work/server-3.log" || fail "the checksum did not catch the flipped byte"
if "$weightctl" health --server="$address" >"$work/health-3.txt"; then
  fail "health is SERVING with no usable snapshot"
fi
grep -q NOT_SERVING "$work/health-3.txt" || fail "health says $(cat "$work/health-3.txt")"
kill -0 "$server_pid" || fail "the daemon did not stay up"
stop_weightd
echo "PASS: truncated snapshot skipped for the previous one; with every snapshot corrupt the daemon reports NOT_SERVING and a clear error"
