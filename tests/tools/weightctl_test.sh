#!/usr/bin/env bash
# weightctl against a real daemon and real workers (the demo's MLP):
#  1. barriers: a worker waiting at the start barrier is named, 1 of 2;
#     workers: member for, idle, peer; no lease id anywhere, --json too;
#  2. tensors: a worker stopped (SIGSTOP) mid-job is who the open rounds
#     wait for; its lease expires and history records that round as
#     closed on lease_expiry, the stopped worker dropped;
#  3. history: records with the contributions' sequences and weights (the
#     workers' sample counts), --json, --last;
#  4. drop: refused (FAILED_PRECONDITION, nothing changed) while workers
#     share the tensor; with --force the tensor is gone, the daemon says so,
#     and the workers end with NOT_FOUND saying it was dropped;
#  5. snapshot, restart: the history is restored;
#  6. every command's --help, and usage errors exit 2.
# Usage: weightctl_test.sh BUILD_DIR
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: weightctl_test.sh BUILD_DIR}" weightctl

ctl() { "$weightctl" --server="$address" --timeout=5s "$@"; }
# json_get FILE PYTHON-EXPRESSION-OVER-d: prints the expression's value.
json_get() {
  /usr/bin/python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))' "$1" "$2"
}
# until_output SECONDS REGEX CMD...: runs CMD every 0.1 s until its output
# matches REGEX; the output is in $work/out.
until_output() {
  local deadline=$((SECONDS + $1)) regex=$2
  shift 2
  until "$@" >"$work/out" 2>&1 && grep -qE "$regex" "$work/out"; do
    ((SECONDS < deadline)) ||
      fail "'$*' printed no line matching '$regex' within the time: $(cat "$work/out")"
    sleep 0.1
  done
}

start_weightd "$work/weightd.log" 127.0.0.1:0 --insecure \
  --snapshot_dir="$work/snaps" --lease_timeout=5s --history_per_tensor=1000

echo "--- 1. barriers and workers"
worker_pids=()
"$worker" --server="$address" --workers=2 --rank=0 --rounds=400 \
  --local_steps=5 >"$work/worker.0" 2>&1 &
worker_pids[0]=$!
pids+=($!)
until_output 20 '^start +1 of 2 +0 +fashion10-0$' ctl barriers
echo "ok: barriers: $(tail -n 1 "$work/out")"
ctl workers >"$work/workers.out" || fail "weightctl workers failed"
grep -qE '^fashion10-0 +[0-9.]+m?s +[0-9.]+m?s +ipv4:127\.0\.0\.1:[0-9]+ ' \
  "$work/workers.out" || fail "weightctl workers: $(cat "$work/workers.out")"
echo "ok: workers: $(tail -n 1 "$work/workers.out")"
cp "$work/out" "$work/barriers.out"
ctl status --json >"$work/status.json" || fail "weightctl status --json failed"
ctl status >"$work/status.out" || fail "weightctl status failed"
ctl tensors >"$work/tensors.out" || fail "weightctl tensors failed"
ctl workers --json >"$work/workers.json" || fail "weightctl workers --json failed"
for out in "$work"/{workers,barriers,status,tensors}.out "$work"/{status,workers}.json; do
  # Lease ids are random 64-bit numbers: 12 digits or more.
  ! grep -qiE 'lease_?id|[0-9]{12,}' "$out" ||
    fail "a lease id is printed: $(cat "$out")"
done
[[ $(json_get "$work/status.json" 'd[0]["workers"][0]["worker_id"]') == fashion10-0 ]] ||
  fail "status --json: $(cat "$work/status.json")"
echo "ok: no lease id in status, tensors, workers, barriers (tables and --json)"

echo "--- 2. tensors: who a round waits for; a lease expiry"
"$worker" --server="$address" --workers=2 --rank=1 --rounds=400 \
  --local_steps=5 >"$work/worker.1" 2>&1 &
worker_pids[1]=$!
pids+=($!)
wait_for_line "$work/weightd.log" 'round closed tensor=hidden/w round=5 ' 60
kill -STOP "${worker_pids[1]}"
until_output 5 '^hidden/w +\[784,128\] +[0-9]+ +2 +1 +sync/plain/mean +fashion10-1$' ctl tensors
echo "ok: tensors: $(grep '^hidden/w' "$work/out")"
wait_for_line "$work/weightd.log" 'worker fashion10-1 dropped: no call for' 20
kill -CONT "${worker_pids[1]}"
ctl history hidden/w --last=0 --json >"$work/history.json" ||
  fail "weightctl history --json failed"
expired=$(json_get "$work/history.json" \
  '[r for r in d if r["closed_on"] == "lease_expiry"][0]["dropped"]')
[[ $expired == "['fashion10-1']" ]] ||
  fail "no lease_expiry record dropping fashion10-1: $(cat "$work/history.json")"
echo "ok: history: a round closed on lease_expiry, dropped $expired"

echo "--- 3. history"
wait_for_line "$work/weightd.log" 'round closed tensor=hidden/w round=30 ' 60
ctl history hidden/w --last=3 >"$work/history.out" ||
  fail "weightctl history failed"
! grep -qiE 'lease_?id|[0-9]{12,}' "$work/history.out" "$work/history.json" ||
  fail "history prints a lease id"
[[ $(grep -cE '^[0-9]+ +all +fashion10-0 #[0-9]+ w=[0-9]+, fashion10-1 #[0-9]+ w=[0-9]+ ' \
  "$work/history.out") == 3 ]] ||
  fail "history --last=3 is not 3 rounds of both workers: $(cat "$work/history.out")"
echo "ok: history --last=3:"
cat "$work/history.out"
ctl history hidden/w --last=0 --json >"$work/history.json"
# The C++ worker weighs its push by the samples it trained on: 5 steps.
json_get "$work/history.json" '"\n".join(
  "%d %s %d %g %s" % (r["version"], c["worker_id"], c["sequence"], c["weight"], c["kind"])
  for r in d for c in r["contributions"])' >"$work/contributions"
awk '$4 <= 0 || $5 != "UPDATE_KIND_WEIGHTS" { bad = 1 } END { exit bad }' \
  "$work/contributions" || fail "contributions: $(head "$work/contributions")"
versions=$(json_get "$work/history.json" 'len(d)')
((versions >= 30)) || fail "only $versions records"
echo "ok: history --json: $versions records, $(wc -l <"$work/contributions") contributions"
snapshot=$(ctl snapshot) || fail "weightctl snapshot failed"
[[ -f $snapshot ]] || fail "weightctl snapshot printed $snapshot, which is no file"
cp "$snapshot" "$work/kept.wds"  # The daemon keeps only its latest few.
echo "ok: snapshot $snapshot"

echo "--- 4. drop"
before=$(ctl tensors | grep -c .)
if ctl drop hidden/w >"$work/drop.out" 2>&1; then
  fail "drop of a shared tensor went through: $(cat "$work/drop.out")"
fi
grep -q 'drop hidden/w: FAILED_PRECONDITION: tensor hidden/w is shared by 2 worker(s) (fashion10-0, fashion10-1)' \
  "$work/drop.out" || fail "drop without --force: $(cat "$work/drop.out")"
[[ $(ctl tensors | grep -c '^hidden/w ') == 1 && $(ctl tensors | grep -c .) == "$before" ]] ||
  fail "a refused drop changed the tensors"
echo "ok: refused: $(cat "$work/drop.out")"
ctl drop hidden/w --force >"$work/drop.out" 2>&1 ||
  fail "drop --force: $(cat "$work/drop.out")"
grep -qE '^dropped hidden/w: [0-9]+ bytes freed; left its group: fashion10-0,fashion10-1$' \
  "$work/drop.out" || fail "drop --force printed: $(cat "$work/drop.out")"
echo "ok: $(cat "$work/drop.out")"
! ctl tensors | grep -q '^hidden/w ' || fail "hidden/w is still listed"
grep -q 'tensor hidden/w dropped by .* with force: .*workers fashion10-0, fashion10-1 left its group' \
  "$work/weightd.log" || fail "the daemon did not log the drop"
for rank in 0 1; do
  timeout 60 tail --pid="${worker_pids[$rank]}" -f /dev/null ||
    fail "worker $rank still runs 60 s after its tensor was dropped"
  if wait "${worker_pids[$rank]}"; then
    fail "worker $rank exited 0 after its tensor was dropped"
  fi
  grep -q 'NOT_FOUND.*hidden/w.*dropped by an admin\|hidden/w.*was dropped by an admin' \
    "$work/worker.$rank" || fail "worker $rank did not say why: $(tail -n 3 "$work/worker.$rank")"
done
echo "ok: both workers ended: $(tail -n 1 "$work/worker.0")"
if ctl history hidden/w >"$work/out" 2>&1; then fail "history of a dropped tensor"; fi
grep -q 'NOT_FOUND: tensor "hidden/w" was dropped by an admin' "$work/out" ||
  fail "history after drop: $(cat "$work/out")"

echo "--- 5. a restart restores the history"
stop_weightd
start_weightd "$work/weightd-2.log" 127.0.0.1:0 --insecure --restore="$work/kept.wds" \
  --history_per_tensor=1000
ctl history hidden/w --last=0 --json >"$work/restored.json" ||
  fail "history after the restart failed"
restored=$(json_get "$work/restored.json" 'len(d)')
((restored >= versions)) || fail "$restored records restored, $versions before"
[[ $(json_get "$work/restored.json" \
  '[r for r in d if r["closed_on"] == "lease_expiry"][0]["dropped"]') == "['fashion10-1']" ]] ||
  fail "the lease_expiry record was not restored"
echo "ok: $restored records after the restart, the lease expiry among them"

echo "--- 6. --help and usage"
for command in health status tensors workers barriers history snapshot drop export import; do
  "$weightctl" "$command" --help >"$work/help" 2>&1 || fail "$command --help failed"
  grep -q "^weightctl $command" "$work/help" || fail "$command --help: $(cat "$work/help")"
done
for args in "history" "drop" "history a b" "nope" ""; do
  status=0
  # shellcheck disable=SC2086
  "$weightctl" --server="$address" $args >"$work/out" 2>&1 || status=$?
  [[ $status == 2 ]] || fail "'weightctl $args' exited $status: $(cat "$work/out")"
done
status=0
"$weightctl" status --server=127.0.0.1:1 --timeout=2s >"$work/out" 2>&1 || status=$?
[[ $status == 2 ]] && grep -q 'UNAVAILABLE' "$work/out" ||
  fail "an unreachable server: exit $status: $(cat "$work/out")"
echo "ok: 10 commands have --help; usage errors and an unreachable server exit 2"
echo "PASS: weightctl_test"
