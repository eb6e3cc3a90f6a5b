#!/usr/bin/env bash
# Fault scenario 4: a network partition. The server and 4 workers run in
# network namespaces of their own (created here, deleted on exit), each
# worker joined by a veth pair to a bridge in the server's namespace on the
# private 10.251.0.0/24. One worker's link goes down for 10 s mid-run: once
# its lease expires the rounds go on without it, nothing hangs, the worker
# resumes when the link is back and finishes, and no round is applied twice.
# Skipped (exit 77) where network namespaces cannot be created or entered
# (tests/testing/netns_probe.sh).
# Usage: partition_test.sh BUILD_DIR
source "$(dirname "$0")/lib.sh"
fault_init "${1:?usage: partition_test.sh BUILD_DIR}" fault4
lease_s=3
cut_s=10
rounds=120  # Enough that the others still train when worker 3 is back.
server_ip=10.251.0.1

# Namespaces named after this shell's pid, so parallel runs never clash.
netns=()
partition_cleanup() {
  fault_cleanup
  for ns in "${netns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap partition_cleanup EXIT
# Skips (77) unless namespaces, a bridge, veth pairs and `ip netns exec`
# all work here.
source "$(dirname "$0")/../testing/netns_probe.sh"
netns_probe
server_ns=weightd-fault4-$$-server
ip netns add "$server_ns"
netns+=("$server_ns")
ip -n "$server_ns" link set lo up
ip -n "$server_ns" link add br0 type bridge
ip -n "$server_ns" addr add "$server_ip/24" dev br0
ip -n "$server_ns" link set br0 up
for rank in 0 1 2 3; do
  ns=weightd-fault4-$$-worker$rank
  ip netns add "$ns" || fail "cannot create namespace $ns"
  netns+=("$ns")
  ip -n "$ns" link set lo up
  # Created in place: no interface ever appears in the caller's namespace.
  ip link add "port$rank" netns "$server_ns" type veth peer name eth0 netns "$ns"
  ip -n "$server_ns" link set "port$rank" master br0 up
  ip -n "$ns" addr add "10.251.0.$((10 + rank))/24" dev eth0
  ip -n "$ns" link set eth0 up
done

# The daemon runs in the server's namespace (ip netns exec execs it: same pid).
printf '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' "$server_ns" "$weightd" >"$work/weightd-in-ns"
chmod +x "$work/weightd-in-ns"
weightd=$work/weightd-in-ns
start_weightd "$work/server.log" "$server_ip:0" --lease_timeout=${lease_s}s
declare -A worker_pid
for rank in 0 1 2 3; do
  ip netns exec "weightd-fault4-$$-worker$rank" "$worker" --server="$address" \
    --workers=4 --rank=$rank --rounds=$rounds --local_steps=100 --eval --check_counts \
    >"$work/worker-$rank.log" 2>&1 &
  worker_pid[$rank]=$!
  pids+=($!)
done
wait_for_line "$work/server.log" 'round closed tensor=hidden/w round=5 ' 60

# Cut worker 3's cable (its port on the bridge) for cut_s seconds.
closed_re='round closed tensor=hidden/w '
cut_line=$(wc -l <"$work/server.log")
ip -n "$server_ns" link set port3 down
cut_at=$SECONDS
echo "link of worker 3 down for ${cut_s}s (lease timeout ${lease_s}s)"
wait_for_line "$work/server.log" 'worker fashion10-3 dropped' $((lease_s + 3))
sleep $((cut_s - (SECONDS - cut_at)))  # The wait above took lease_s + 3 s at most.
up_line=$(wc -l <"$work/server.log")
kill -0 "${worker_pid[3]}" 2>/dev/null || fail "worker 3 exited while its link was down"
printed=$(grep -c '^round ' "$work/worker-3.log" || true)
ip -n "$server_ns" link set port3 up
up_at=$(date +%s.%N)
sed -n "$((cut_line + 1)),${up_line}p" "$work/server.log" | grep "$closed_re" >"$work/during.txt" || true
during=$(wc -l <"$work/during.txt")
without=$(grep -c 'contributors=3 ' "$work/during.txt" || true)
echo "link back up; $during round(s) of hidden/w closed while it was down, $without with 3 contributors"
((without >= 3)) || fail "only $without round(s) closed without worker 3 in ${cut_s}s"

# Worker 3 resumes: its next round ends within 30 s of the link coming back
# (its round lines carry the server's round numbers, which moved on).
for _ in $(seq 300); do
  (($(grep -c '^round ' "$work/worker-3.log" || true) > printed)) && break
  sleep 0.1
done
(($(grep -c '^round ' "$work/worker-3.log" || true) > printed)) ||
  fail "worker 3 finished no round within 30 s of the link coming back"
resumed=$(awk -v a="$up_at" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
next=$(grep '^round ' "$work/worker-3.log" | sed -n "$((printed + 1))p" | cut -d' ' -f2)
echo "worker 3 resumed ${resumed}s after the link came back (round $next)"

# No hang: every worker exits 0 with its accuracy within 120 s.
deadline=$((SECONDS + 120))
for rank in 0 1 2 3; do
  timeout $((deadline - SECONDS > 0 ? deadline - SECONDS : 1)) \
    tail --pid="${worker_pid[$rank]}" -f /dev/null || fail "worker $rank hung (not done 120 s after the link came back)"
  wait "${worker_pid[$rank]}" || fail "worker $rank exited with an error"
  grep -q '^final test accuracy: ' "$work/worker-$rank.log" || fail "worker $rank printed no accuracy"
done
stop_weightd
rejoined=$(tail -n +$((up_line + 1)) "$work/server.log" | grep -c "$closed_re.*contributors=4 " || true)
((rejoined > 0)) || fail "no round closed with all 4 workers after the link came back"

# No duplicate: no round counts a worker twice, none closes twice.
over=$(grep -E "$closed_re.*contributors=([5-9]|[1-9][0-9])" "$work/server.log" || true)
[[ -z $over ]] || fail "a round counted a worker twice: $over"
dup=$(grep -o "${closed_re}round=[0-9]* " "$work/server.log" | sort | uniq -d)
[[ -z $dup ]] || fail "a round closed twice: $dup"
# Every contribution to hidden/w (784x128 floats) accumulated exactly once.
odd=$(grep "$closed_re" "$work/server.log" | sed -E 's/.*contributors=([0-9]+) bytes=([0-9]+) .*/\1 \2/' |
  awk '$2 != $1 * 784 * 128 * 4 && n++ < 3')
[[ -z $odd ]] || fail "a round of hidden/w accumulated other than 401408 bytes per contributor: $odd"
missed=$(sed -n 's/.*: \([0-9]*\) round(s) moved on.*/\1/p' "$work/worker-3.log")
accuracy=$(sed -n 's/^final test accuracy: //p' "$work/worker-3.log")
echo "PASS: $without round(s) closed without worker 3 during its ${cut_s}s partition; it resumed ${resumed}s after the link came back (missed ${missed:-0}), rejoined $rejoined round(s) with 4 and finished at accuracy $accuracy; no round applied twice"
