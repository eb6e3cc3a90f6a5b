#!/usr/bin/env bash
# Randomized no-hang test: short jobs in which workers are extra, share an
# id, are killed (and restarted, as a supervisor would), are stopped with
# SIGTERM, are frozen past their lease, and the daemon is killed and
# restarted from its snapshots. Every process must end within a stated
# bound: finish, or exit with a message that says why. Nothing may hang.
# Real daemon and workers on 127.0.0.1.
# Usage: chaos_test.sh BUILD_DIR [SCENARIOS]   (CHAOS_SEED=N to replay)
set -euo pipefail
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: chaos_test.sh BUILD_DIR [SCENARIOS]}" chaos
scenarios=${2:-8}
seed=${CHAOS_SEED:-$(date +%s)}
RANDOM=$seed
echo "chaos: seed $seed (replay with CHAOS_SEED=$seed), $scenarios scenarios"
bound=150  # Seconds a scenario may take, every process included.

for ((s = 1; s <= scenarios; s++)); do
  dir="$work/s$s"
  mkdir -p "$dir"
  start=$SECONDS
  start_weightd "$dir/server.log" 127.0.0.1:0 --lease_timeout=2s \
    --snapshot_dir="$dir/snaps" --snapshot_every=2
  port=${address##*:}
  workers=$((2 + RANDOM % 3))          # 2..4 processes
  expected=$((1 + RANDOM % workers))   # the job's --workers: some are extra
  rounds=$((6 + RANDOM % 10))
  dup=$((RANDOM % 3 == 0))             # two processes share one id
  plan="workers=$workers job=$expected rounds=$rounds dup_id=$dup"
  declare -A wpid=() wid=()
  launch() {  # launch N: starts worker N (again) under its id.
    "$worker" --server="$address" --worker_id="${wid[$1]}" \
      --workers="$expected" --rounds="$rounds" --local_steps=30 \
      --connect_timeout=30s --barrier_timeout=30s >>"$dir/worker-$1.log" 2>&1 &
    wpid[$1]=$!
    pids+=($!)
  }
  for ((w = 0; w < workers; w++)); do
    wid[$w]="chaos-$s-$w"
    ((dup && w == workers - 1 && w > 0)) && wid[$w]="chaos-$s-0"
    launch "$w"
  done
  # Events only once the job is under way (past its start barrier), or
  # none if every worker ended before (e.g. refused, or alone at the
  # barrier: they must have said why, checked below).
  under_way=0
  for _ in $(seq 600); do
    grep -q 'round closed tensor=hidden/w round=1 ' "$dir/server.log" &&
      { under_way=1; break; }
    alive=0
    for ((w = 0; w < workers; w++)); do
      kill -0 "${wpid[$w]}" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  events=$((under_way ? 1 + RANDOM % 3 : 0))
  for ((e = 0; e < events; e++)); do
    w=$((RANDOM % workers))
    case $((RANDOM % 4)) in
      0) plan+=" kill9+restart:$w"
         kill -KILL "${wpid[$w]}" 2>/dev/null || true
         wait "${wpid[$w]}" 2>/dev/null || true
         launch "$w" ;;
      1) plan+=" sigterm:$w"
         kill -TERM "${wpid[$w]}" 2>/dev/null || true ;;
      2) plan+=" freeze3s:$w"
         kill -STOP "${wpid[$w]}" 2>/dev/null || true
         sleep 3
         kill -CONT "${wpid[$w]}" 2>/dev/null || true ;;
      3) plan+=" daemon-kill9+restart"
         kill -KILL "$server_pid"
         wait "$server_pid" 2>/dev/null || true
         start_weightd "$dir/server-again.log" "127.0.0.1:$port" \
           --lease_timeout=2s --snapshot_dir="$dir/snaps" --snapshot_every=2 ;;
    esac
    sleep $((RANDOM % 3))
  done
  echo "scenario $s: $plan"
  for ((w = 0; w < workers; w++)); do
    left=$((bound - (SECONDS - start)))
    ((left > 0)) || left=1
    exits_within "${wpid[$w]}" "$left" ||
      fail "scenario $s ($plan): worker $w still runs after ${bound}s"
    if ! wait "${wpid[$w]}"; then
      last=$(tail -n 1 "$dir/worker-$w.log")
      [[ $last == weightd_worker* ]] ||
        fail "scenario $s ($plan): worker $w failed without a message: '$last'"
      echo "  worker $w exited with: $last"
    fi
  done
  kill -0 "$server_pid" 2>/dev/null || fail "scenario $s ($plan): the daemon died"
  stop_weightd
  echo "  ended in $((SECONDS - start)) s"
done
echo "PASS: $scenarios random scenarios (seed $seed) each ended within ${bound}s; every failure said why"
