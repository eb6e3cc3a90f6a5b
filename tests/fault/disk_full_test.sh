#!/usr/bin/env bash
# Fault scenario 8: the disk fills up before a snapshot. The snapshot
# directory is a 4 MiB tmpfs, mounted in a private mount namespace (so it
# vanishes with the test, even on kill -9). After a good snapshot the disk is
# filled: the next snapshot fails with the error logged and counted, the
# previous one stays byte-identical with no temporary file left, training
# goes on, a stop with the disk still full exits 1 and the restart restores
# the old snapshot, and once space is freed the final snapshot is written
# and restored.
# Skipped (exit 77) where a tmpfs cannot be mounted in a private mount
# namespace (probed first, exactly as the test does it: making the
# namespace private needs / to be a mount point, which a chroot may lack).
# Usage: disk_full_test.sh BUILD_DIR
# (Not WEIGHTD_-prefixed: weightd refuses WEIGHTD_* variables it does not
# know, and inherits this one.)
if [[ -z ${FAULT8_IN_PRIVATE_MOUNT_NS:-} ]]; then
  if [[ $EUID -ne 0 ]]; then
    echo "SKIP: mounting a tmpfs needs root"
    exit 77
  fi
  if ! why=$(unshare -m --propagation private sh -c \
      'd=$(mktemp -d) || exit 1
       mount -t tmpfs -o size=4m weightd-fault8-probe "$d" && umount "$d"
       code=$?; rmdir "$d"; exit $code' 2>&1); then
    echo "SKIP: cannot mount a tmpfs in a private mount namespace: $(tr '\n' ' ' <<<"$why")"
    exit 77
  fi
  FAULT8_IN_PRIVATE_MOUNT_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: disk_full_test.sh BUILD_DIR}" fault8
snaps=$work/snaps
mkdir "$snaps"
if ! mount -t tmpfs -o size=4m weightd-fault8 "$snaps" 2>/dev/null; then
  echo "SKIP: cannot mount a tmpfs"
  exit 77
fi
disk_full_cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  umount -l "$snaps" 2>/dev/null || true
  fault_cleanup
}
trap disk_full_cleanup EXIT

# run_job NAME: one worker trains 3 more rounds and must exit 0.
run_job() {
  "$worker" --server="$address" --rounds=3 --local_steps=20 >"$work/$1.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  timeout 120 tail --pid=$pid -f /dev/null || fail "the worker of $1 did not finish"
  wait $pid || fail "the worker of $1 failed"
}
version() {
  "$weightctl" status --server="$address" | sed -nE 's/^  hidden\/w .* version ([0-9]+) .*/\1/p'
}
flags=(--snapshot_dir="$snaps" --snapshot_every=1000 --lease_timeout=3s)

# 1. A good snapshot at version 3.
start_weightd "$work/server-1.log" 127.0.0.1:0 "${flags[@]}"
run_job job-1
old=$("$weightctl" snapshot --server="$address") || fail "the first snapshot failed: $old"
[[ -f $old ]] || fail "weightctl snapshot printed '$old', not a file"
cp "$old" "$work/old.copy"
echo "snapshot at version $(version): $old ($(stat -c %s "$old") bytes)"

# 2. Fill the disk, train 3 more rounds, snapshot: it must fail.
dd if=/dev/zero of="$snaps/filler" bs=64k status=none 2>/dev/null || true
free=$(df --output=avail -B1 "$snaps" | tail -n 1)
((free < $(stat -c %s "$old"))) || fail "the tmpfs still has $free bytes free"
run_job job-2
if "$weightctl" snapshot --server="$address" >"$work/snapshot-2.txt" 2>&1; then
  fail "a snapshot on a full disk succeeded: $(cat "$work/snapshot-2.txt")"
fi
grep -q 'No space left on device' "$work/snapshot-2.txt" ||
  fail "weightctl did not report ENOSPC: $(cat "$work/snapshot-2.txt")"
logged=$(grep -m1 'snapshot failed (earlier snapshots are untouched)' "$work/server-1.log") ||
  fail "the failed snapshot was not logged"
grep -q 'No space left on device' <<<"$logged" || fail "the log does not say why: $logged"
"$weightctl" status --server="$address" | grep -q 'snapshot_failures 1$' ||
  fail "status does not count the failure"
cmp -s "$old" "$work/old.copy" || fail "the previous snapshot changed"
left=$(ls "$snaps" | grep -vx -e "$(basename "$old")" -e filler || true)
[[ -z $left ]] || fail "the failed snapshot left files behind: $left"
echo "snapshot on a full disk failed: ${logged#*] }"

# 3. The daemon keeps serving and training goes on.
"$weightctl" health --server="$address" >/dev/null || fail "not SERVING after the failure"
run_job job-3
[[ $(version) -eq 9 ]] || fail "hidden/w at version $(version) after 3 jobs, expected 9"

# 4. SIGTERM with the disk still full: the final snapshot fails, and the
# daemon says so in its log and its exit status; a restart restores the old
# snapshot.
kill -TERM "$server_pid"
timeout 15 tail --pid="$server_pid" -f /dev/null || fail "weightd did not stop"
code=0
wait "$server_pid" || code=$?
((code == 1)) || fail "weightd exited $code after a failed final snapshot, expected 1"
grep -q 'stopped without its final snapshot' "$work/server-1.log" ||
  fail "the failed final snapshot was not logged"
start_weightd "$work/server-2.log" 127.0.0.1:0 "${flags[@]}"
grep -q "restored from $old" "$work/server-2.log" || fail "the old snapshot was not restored"
[[ $(version) -eq 3 ]] || fail "restored hidden/w at version $(version), expected 3"

# 5. Space freed: training goes on and the final snapshot is written.
rm "$snaps/filler"
run_job job-4
stop_weightd
final=$(sed -n 's/.*snapshot written ([^)]*): //p' "$work/server-2.log" | tail -n 1)
[[ -n $final && $final != "$old" ]] || fail "no final snapshot after freeing space"
start_weightd "$work/server-3.log" 127.0.0.1:0 "${flags[@]}"
grep -q "restored from $final" "$work/server-3.log" || fail "the final snapshot was not restored"
[[ $(version) -eq 6 ]] || fail "restored hidden/w at version $(version), expected 6"
stop_weightd
echo "PASS: snapshot on a full disk failed with ENOSPC (logged, counted, no temp file left); the previous snapshot stayed byte-identical and was restored at version 3 after a SIGTERM whose final snapshot failed (exit 1); training went on to version 9; with space freed the final snapshot was written and restored at version 6"
