# Shared helpers of the fault-injection scripts (sourced, not run).
# Every process a script starts through these is killed on exit, and its
# scratch directory removed.
set -euo pipefail

# fault_init BUILD_DIR NAME: sets weightd, worker, weightctl and work.
fault_init() {
  build=$1
  weightd=$build/server/weightd
  worker=$build/examples/weightd_worker
  weightctl=$build/tools/weightctl
  work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-$2.XXXXXX")
  pids=()
  trap fault_cleanup EXIT
}

fault_cleanup() {
  [[ -n ${KEEP_WORK:-} ]] && echo "kept $work"
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  [[ -n ${KEEP_WORK:-} ]] || rm -rf "$work"
}

fail() {
  echo "FAIL: $*"
  for log in "$work"/*.log; do
    [[ -f $log ]] || continue
    echo "--- last lines of $(basename "$log")"
    tail -n 8 "$log"
  done
  exit 1
}

source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/daemon.sh"

# start_weightd LOG ADDRESS [FLAGS...]: starts the daemon and waits (10 s at
# most) until it serves; sets server_pid and address.
start_weightd() {
  local log=$1 listen=$2
  shift 2
  start_daemon "$work/ready" 10 "$log" "$weightd" --listen="$listen" \
    --ready_file="$work/ready" --log_level=debug "$@"
}

# exits_within PID SECONDS: true if PID exits within SECONDS (polled every
# 0.1 s, unlike tail --pid's whole seconds).
exits_within() {
  local pid=$1 tenths=$(($2 * 10)) t
  for ((t = 0; t < tenths; t++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$pid" 2>/dev/null
}

# stop_weightd: SIGTERM, and the daemon must exit 0 within 15 s.
stop_weightd() {
  kill -TERM "$server_pid"
  timeout 15 tail --pid="$server_pid" -f /dev/null || fail "weightd did not stop"
  wait "$server_pid" || fail "weightd exited with an error after SIGTERM"
}

# wait_for_line FILE REGEX SECONDS: waits until FILE has a matching line.
wait_for_line() {
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "no line matching '$2' in $(basename "$1") within $3 s"
    sleep 0.05
  done
}

# wait_workers LOGPREFIX: waits (300 s at most each) for the pids in
# worker_pids, which must exit 0; prints LOGPREFIX.I of a failed one.
wait_workers() {
  for i in "${!worker_pids[@]}"; do
    timeout 300 tail --pid="${worker_pids[$i]}" -f /dev/null ||
      fail "worker $i did not finish"
    wait "${worker_pids[$i]}" || { cat "$1.$i"; fail "worker $i exited with an error"; }
  done
}

# accuracy LOGPREFIX: the final test accuracy rank 0 printed.
accuracy() { sed -n 's/^final test accuracy: //p' "$1.0"; }

# expect_close_accuracy BASELINE INTERRUPTED: both printed, within 0.01.
expect_close_accuracy() {
  [[ -n $1 && -n $2 ]] || fail "a run printed no final accuracy"
  awk -v a="$1" -v b="$2" \
    'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.01) }' ||
    fail "accuracy $2 is not within 0.01 of $1"
}

# expect_no_double_count LOG...: in each server log, no round of the shared
# layer closed with more than 4 contributions (4 workers), or twice. The
# values are checked by the workers themselves: run with --check_counts, a
# worker fails (and so the test) if a round's average of checks/counts is
# not that of distinct workers, or lacks its own push (train_worker.cc).
expect_no_double_count() {
  local log over dup
  for log in "$@"; do
    over=$(grep -E 'round closed tensor=hidden/w .*contributors=([5-9]|[1-9][0-9])' "$log" || true)
    [[ -z $over ]] || fail "a round counted a worker twice: $over"
    dup=$(grep -o 'round closed tensor=hidden/w round=[0-9]* ' "$log" | sort | uniq -d)
    [[ -z $dup ]] || fail "a round closed twice in $log: $dup"
  done
}
