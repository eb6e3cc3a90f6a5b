#!/usr/bin/env bash
# Limits that hold under abuse, with real processes over TLS and tokens
# (docs/security.md, "Limits"). 4 real workers train the demo twice: once
# alone, and once while a hostile principal (a worker role of its own
# tensors) holds 1,000 idle TLS connections open through the whole
# training and, once the first round closed, opens 200 pushes that send
# their header and then nothing. Under the abuse:
#  - training completes, its accuracy within 0.01 of the run alone;
#  - every stalled push is cut after --stall_timeout with
#    DEADLINE_EXCEEDED naming the flag, counted (weightctl status) and
#    logged by the daemon;
#  - the daemon's peak RSS stays within BOUND_MIB of the run alone's.
# Usage: abuse_test.sh BUILD_DIR
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: abuse_test.sh BUILD_DIR}" abuse
here=$(cd "$(dirname "$0")" && pwd)
# On failure, the workers' and the abusing client's last lines too.
eval "lib_$(declare -f fail)"
fail() {
  local out
  for out in "$work"/*.worker.* "$work"/*.out "$work"/*.err; do
    [[ -f $out ]] || continue
    echo "--- last lines of $(basename "$out")"
    tail -n 5 "$out"
  done
  lib_fail "$@"
}
abuser=$build/tests/abuse_client
certs=$work/certs
"$here/../testing/make_certs.sh" "$certs" >/dev/null 2>&1 ||
  fail "openssl could not make the test certificates"
# 1,000 connections need their descriptors, here and in weightd (which
# raises its own soft limit to the hard one).
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= 2048)) || fail "open files limited to $(ulimit -n) here; the test needs 2048"

idle=1000
stalled=200
stall=3
rounds=30
BOUND_MIB=160  # Measured: 28 MiB alone, 104 MiB under the abuse (2026-12-02).

sha() { printf %s "$1" | sha256sum | cut -c1-64; }
cat >"$work/policy.json" <<EOF
{"principals": [
  {"name": "ops", "role": "ADMIN", "token_sha256": ["$(sha ops-token)"]},
  {"name": "trainers", "role": "WORKER", "tensors": ["*"],
   "worker_ids": ["fashion10-*"], "token_sha256": ["$(sha trainer-token)"]},
  {"name": "mallory", "role": "WORKER", "tensors": ["abuse/*"],
   "worker_ids": ["abuse-*"], "token_sha256": ["$(sha mallory-token)"]}
]}
EOF
printf %s trainer-token >"$work/trainer.token"
printf %s ops-token >"$work/ops.token"
tls=(--tls_ca="$certs/ca.crt")
daemon_flags=(--tls_cert="$certs/server.crt" --tls_key="$certs/server.key"
  --auth_policy="$work/policy.json" --stall_timeout=${stall}s)

# start_workers NAME: 4 workers start training (worker_pids, NAME.worker.I).
start_workers() {
  worker_pids=()
  for rank in 0 1 2 3; do
    "$worker" --server="$address" "${tls[@]}" --token_file="$work/trainer.token" \
      --workers=4 --rank=$rank --rounds=$rounds --local_steps=60 \
      $( ((rank == 0)) && echo --eval) >"$work/$1.worker.$rank" 2>&1 &
    worker_pids[$rank]=$!
    pids+=($!)
  done
}

peak_rss_mib() { awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$server_pid/status"; }

echo "--- 1. the demo alone"
start_weightd "$work/alone.log" 127.0.0.1:0 "${daemon_flags[@]}"
start_workers alone
wait_workers "$work/alone.worker"
alone=$(accuracy "$work/alone.worker")
alone_rss=$(peak_rss_mib)
stop_weightd
echo "alone: accuracy $alone, daemon peak RSS $alone_rss MiB"

echo "--- 2. the demo under abuse"
start_weightd "$work/abused.log" 127.0.0.1:0 "${daemon_flags[@]}"
port=${address##*:}
# The idle connections first, held through the whole training.
"$abuser" --server="$address" "${tls[@]}" --token=mallory-token \
  --idle=$idle --stalled=0 >"$work/idle.out" 2>"$work/idle.err" &
idle_pid=$!
pids+=($idle_pid)
wait_for_line "$work/idle.out" "^idle: $idle connected" 180
open_connections() { ss -Htn state established "( sport = :$port )" | wc -l; }
start_workers abused
wait_for_line "$work/abused.log" 'round closed tensor=hidden/w round=1 ' 120
# Then the stalled pushes, while the workers train.
timeout 180 "$abuser" --server="$address" "${tls[@]}" --token=mallory-token \
  --idle=0 --stalled=$stalled --wait=60s --hold=0s \
  >"$work/stalled.out" 2>"$work/stalled.err" &
stalled_pid=$!
pids+=($stalled_pid)
wait_for_line "$work/stalled.out" "^stalled: $stalled pushes open" 120
during=$(open_connections)
for pid in "${worker_pids[@]}"; do
  kill -0 "$pid" 2>/dev/null ||
    fail "a worker ended before the stalled pushes were open: make --rounds larger"
done
echo "abuse in place: $during connections open to weightd," \
  "$stalled pushes stalled after their header, 4 workers training"
((during >= idle + 4)) || fail "only $during connections open to weightd, not $idle idle + 4 more"
wait "$stalled_pid" || fail "the stalling client failed: $(cat "$work/stalled.err")"
cat "$work/stalled.out"
cut=$(sed -En "s/^stalled: ([0-9]+) ended with DEADLINE_EXCEEDED after ([0-9.]+)\.\.([0-9.]+) s: .*--stall_timeout.*/\1 \2 \3/p" \
  "$work/stalled.out")
read -r count earliest latest <<<"${cut:-0 0 0}"
[[ $count -eq $stalled ]] ||
  fail "$count of $stalled stalled pushes were cut with DEADLINE_EXCEEDED naming --stall_timeout"
awk -v a="$earliest" -v b="$latest" -v s=$stall \
  'BEGIN { exit !(a >= s - 0.1 && b <= s + 5) }' ||
  fail "stalled pushes cut after ${earliest}..${latest} s, not within [$stall, $stall + 5] s"
"$weightctl" --server="$address" "${tls[@]}" --token_file="$work/ops.token" \
  status >"$work/status.out" 2>&1 || fail "weightctl status: $(cat "$work/status.out")"
grep -q "stalled_calls_cut $stalled\b" "$work/status.out" ||
  fail "the daemon did not count $stalled cut calls: $(grep stalled "$work/status.out")"
grep -q 'refused Push from .*DEADLINE_EXCEEDED: Push sent nothing for .*--stall_timeout' \
  "$work/abused.log" || fail "the daemon did not log the cut pushes"
wait_workers "$work/abused.worker"
after=$(open_connections)
kill -0 "$idle_pid" 2>/dev/null || fail "the idle connections' client died: $(cat "$work/idle.err")"
abused=$(accuracy "$work/abused.worker")
abused_rss=$(peak_rss_mib)
kill "$idle_pid"
stop_weightd
echo "abused: accuracy $abused, daemon peak RSS $abused_rss MiB;" \
  "$count stalled pushes cut after ${earliest}..${latest} s (--stall_timeout=${stall}s);" \
  "$after connections still open when training ended"
expect_close_accuracy "$alone" "$abused"
((abused_rss <= alone_rss + BOUND_MIB)) ||
  fail "daemon peak RSS $abused_rss MiB under abuse, over $alone_rss + $BOUND_MIB MiB"
echo "PASS: accuracy $alone alone, $abused under abuse; peak RSS $alone_rss -> $abused_rss MiB (bound +$BOUND_MIB)"
