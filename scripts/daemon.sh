# Starting weightd from a shell script; sourced by scripts/local_job.sh and
# tests/fault/lib.sh, which define fail and the pids array.

# start_daemon READY SECONDS LOG COMMAND...: runs COMMAND (weightd with its
# flags, --ready_file=READY among them) in the background, its output in
# LOG, and waits up to SECONDS until READY holds the address it serves on.
# Sets server_pid and address and adds the pid to pids; calls fail with
# the reason if weightd exits or does not start in time.
start_daemon() {
  local ready=$1 seconds=$2 log=$3 i
  shift 3
  rm -f "$ready"
  "$@" >"$log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  for ((i = 0; i < seconds * 10; i++)); do
    [[ -s $ready ]] && break
    kill -0 "$server_pid" 2>/dev/null || fail "weightd exited at start"
    sleep 0.1
  done
  [[ -s $ready ]] || fail "weightd did not start within $seconds s"
  address=$(cat "$ready")
}
