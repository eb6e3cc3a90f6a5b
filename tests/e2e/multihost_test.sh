#!/usr/bin/env bash
# A multi-host job on one machine: 2 weightd shards and 4 workers, each in a
# network namespace of its own (created here, deleted on exit) with its own
# address on a private bridge (10.252.0.0/24, the bridge in a namespace of
# its own too). The real binaries run inside with `ip netns exec` and train
# Fashion-MNIST to completion, the shared layer split by rows over both
# shards. Workers 0 and 1 are given both shards' addresses; workers 2 and 3
# one name, "weightd", that their /etc/hosts (ip netns exec mounts
# /etc/netns/NS/hosts) resolves to both, as a Kubernetes headless service
# does. Checks: every worker finishes, accuracy is well above chance, and
# each shard closed every round of its part of the shared layer with all 4
# workers. The workers start first and wait for the shards. Nothing
# outside these namespaces is contacted. Skipped (exit 77)
# where network namespaces cannot be created or entered (tests/testing/
# netns_probe.sh).
# Usage: multihost_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: multihost_test.sh BUILD_DIR}" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-multihost.XXXXXX")
rounds=8
net=10.252.0
tag=weightd-mh-$$
netns=()
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for ns in "${netns[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for log in "$work"/*.log; do
    echo "--- last lines of $(basename "$log")"
    tail -n 8 "$log"
  done
  exit 1
}

# Skips (77) unless namespaces, a bridge, veth pairs, `ip netns exec` and
# its /etc/netns/NS/hosts all work here.
source "$(dirname "$0")/../testing/netns_probe.sh"
netns_probe hosts
switch=$tag-switch
ip netns add "$switch"
netns+=("$switch")
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up
# add_host NAME IP: a namespace with one interface on the bridge.
add_host() {
  local ns=$tag-$1 port=p$((${#netns[@]}))
  ip netns add "$ns"
  netns+=("$ns")
  ip -n "$ns" link set lo up
  # Created in place: no interface ever appears in the caller's namespace.
  ip link add "$port" netns "$switch" type veth peer name eth0 netns "$ns"
  ip -n "$switch" link set "$port" master br0 up
  ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
}
add_host shard0 $net.1
add_host shard1 $net.2
for rank in 0 1 2 3; do add_host worker$rank $net.$((10 + rank)); done
for rank in 2 3; do
  mkdir -p "/etc/netns/$tag-worker$rank"
  printf '127.0.0.1 localhost\n%s.1 weightd\n%s.2 weightd\n' $net $net \
    >"/etc/netns/$tag-worker$rank/hosts"
  printf 'multi on\n' >"/etc/netns/$tag-worker$rank/host.conf"
done

worker_pids=()
for rank in 0 1 2 3; do
  servers=$net.2:7070,$net.1:7070
  ((rank >= 2)) && servers=weightd:7070
  eval=()
  ((rank == 0)) && eval=(--eval)
  # 64 KiB: the 401 KB shared layer is split by rows over both shards.
  ip netns exec "$tag-worker$rank" "$build/examples/weightd_worker" \
    --server="$servers" --split_bytes=65536 --workers=4 --rank=$rank \
    --rounds=$rounds --local_steps=100 --connect_timeout=20s "${eval[@]}" \
    >"$work/worker$rank.log" 2>&1 &
  worker_pids+=($!)
  pids+=($!)
done
# The shards, started after the workers (which wait for them and retry):
# shard 0 configured by flags, shard 1 by WEIGHTD_* variables.
sleep 1
ip netns exec "$tag-shard0" "$build/server/weightd" --listen=$net.1:7070 --log_level=debug \
  --shard_index=0 --shard_count=2 --ready_file="$work/ready0" \
  >"$work/shard0.log" 2>&1 &
shard_pids=($!)
WEIGHTD_LISTEN=$net.2:7070 WEIGHTD_SHARD_INDEX=1 WEIGHTD_SHARD_COUNT=2 WEIGHTD_LOG_LEVEL=debug \
  ip netns exec "$tag-shard1" "$build/server/weightd" \
  --ready_file="$work/ready1" >"$work/shard1.log" 2>&1 &
shard_pids+=($!)
pids+=("${shard_pids[@]}")
for i in 0 1; do
  for _ in $(seq 100); do [[ -s $work/ready$i ]] && break; sleep 0.1; done
  [[ -s $work/ready$i ]] || fail "shard $i did not start within 10 s"
done
grep -q 'shard=0/2' "$work/shard0.log" || fail "shard 0 does not say shard 0/2"
grep -q 'shard=1/2' "$work/shard1.log" || fail "shard 1 does not say shard 1/2"

for rank in 0 1 2 3; do
  timeout 400 tail --pid="${worker_pids[$rank]}" -f /dev/null ||
    fail "worker $rank did not finish within 400 s"
  wait "${worker_pids[$rank]}" || fail "worker $rank exited with an error"
done
cat "$work/worker0.log"
for rank in 2 3; do  # The name resolved to both shards, in shard order.
  grep -q "connected to $net.1:7070,$net.2:7070\$" "$work/worker$rank.log" ||
    fail "worker $rank did not reach both shards through the name weightd"
done

accuracy=$(sed -n 's/^final test accuracy: //p' "$work/worker0.log")
[[ -n $accuracy ]] || fail "worker 0 printed no final accuracy"
awk -v a="$accuracy" 'BEGIN { exit !(a >= 0.60) }' ||
  fail "final accuracy $accuracy is not well above chance (need >= 0.60)"
for i in 0 1; do
  closed=$(grep -c 'round closed tensor=hidden/w .*contributors=4 ' "$work/shard$i.log" || true)
  [[ $closed -eq $rounds ]] ||
    fail "shard $i closed $closed rounds of its part of hidden/w with 4 workers, expected $rounds"
done
for i in 0 1; do
  kill -TERM "${shard_pids[$i]}"
  timeout 15 tail --pid="${shard_pids[$i]}" -f /dev/null || fail "shard $i did not stop"
  wait "${shard_pids[$i]}" || fail "shard $i exited with an error after SIGTERM"
done
echo "PASS: 2 shards and 4 workers (started first) in 6 host namespaces; final accuracy $accuracy; both shards closed all $rounds rounds of their part of hidden/w with 4 workers"
