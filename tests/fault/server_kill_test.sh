#!/usr/bin/env bash
# Fault scenario 1: kill -9 the server during a 4-worker sync training run,
# restart it on the same port from its snapshot directory. The run must
# complete, every worker must finish, the final accuracy must be within 0.01
# of an uninterrupted run with the same seeds, and no round may have counted
# a worker twice (a round of the shared layer closes with at most 4
# contributions, once per server life).
# Over TLS, dialling localhost (a name: gRPC tries ::1, then 127.0.0.1),
# as deployments do. (tests/container/container_test.sh restarts a server
# whose workers are a snapshot ahead of it, the case in which workers once
# never reconnected.)
# Usage: server_kill_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: server_kill_test.sh BUILD_DIR}" fault1
"$(dirname "$0")/../testing/make_certs.sh" "$work/certs" >/dev/null 2>&1 ||
  fail "openssl could not make the test certificates"
server_flags=(--snapshot_dir="$work/snaps" --snapshot_every=1 --lease_timeout=30s
  --tls_cert="$work/certs/server.crt" --tls_key="$work/certs/server.key")

# Runs the 4 workers against $address in the background; logs $1.RANK.
start_workers() {
  worker_pids=()
  for rank in 0 1 2 3; do
    local eval=()
    [[ $rank -eq 0 ]] && eval=(--eval)
    "$worker" --server="localhost:${address##*:}" --tls_ca="$work/certs/ca.crt" \
      --rank=$rank --workers=4 --rounds=14 \
      --local_steps=100 --check_counts "${eval[@]}" >"$1.$rank" 2>&1 &
    worker_pids+=($!)
    pids+=($!)
  done
}



# 1. The uninterrupted run.
start_weightd "$work/baseline-server.log" 127.0.0.1:0 "${server_flags[@]}"
start_workers "$work/baseline"
wait_workers "$work/baseline"
stop_weightd
baseline=$(accuracy "$work/baseline")
echo "uninterrupted: final test accuracy $baseline"
rm -rf "$work/snaps"

# 2. The same run, with the server killed mid-way and restarted.
start_weightd "$work/server-1.log" 127.0.0.1:0 "${server_flags[@]}"
port=${address##*:}
start_workers "$work/killed"
wait_for_line "$work/server-1.log" 'round closed tensor=hidden/w round=5 ' 60
kill -KILL "$server_pid"
wait "$server_pid" 2>/dev/null || true
echo "killed weightd (kill -9) after round 5 of hidden/w closed"
start_weightd "$work/server-2.log" "127.0.0.1:$port" "${server_flags[@]}"
grep -m1 'restored from' "$work/server-2.log" ||
  fail "the restarted server did not restore a snapshot"
wait_workers "$work/killed"
stop_weightd
interrupted=$(accuracy "$work/killed")
echo "killed and restarted: final test accuracy $interrupted"

expect_close_accuracy "$baseline" "$interrupted"
expect_no_double_count "$work/server-1.log" "$work/server-2.log"
echo "PASS: accuracy $interrupted vs $baseline uninterrupted; every worker finished; no round counted a worker twice"
