# netns_probe [hosts]: the skip probe of the tests that run processes in
# network namespaces (sourced, not run). Exits 77 with one SKIP line unless
# this machine can do, once, in two throwaway namespaces, what those tests
# do: `ip netns add`; `ip netns exec` (it needs / to be a mount point: in a
# chroot that is not one it fails with "mount --make-rslave /" failed:
# Invalid argument, although `ip netns add` works); a bridge in one with a
# veth port whose peer is in the other, addressed and up; and, with
# `hosts`, the /etc/netns/NS/hosts file `ip netns exec` mounts over
# /etc/hosts.
# Leaves nothing behind.
netns_probe() {
  if [[ $EUID -ne 0 ]]; then
    echo "SKIP: network namespaces need root"
    exit 77
  fi
  local ns=weightd-probe-$$ reason
  reason=$(_netns_probe_try "$ns" "$@")
  ip netns del "$ns-a" 2>/dev/null || true
  ip netns del "$ns-b" 2>/dev/null || true
  rm -rf "/etc/netns/$ns-b"
  if [[ -n $reason ]]; then
    echo "SKIP: $reason"
    exit 77
  fi
}

# _netns_probe_try NS [hosts]: prints why the probe failed, or nothing.
_netns_probe_try() {
  local ns=$1 out
  shift
  # one_line TEXT: TEXT with its lines joined by "; ".
  one_line() { tr '\n' ';' <<<"$1" | sed 's/;$//; s/;/; /g'; }
  if ! out=$(ip netns add "$ns-a" 2>&1) || ! out=$(ip netns add "$ns-b" 2>&1); then
    echo "cannot create network namespaces: 'ip netns add' failed: $(one_line "$out")"
    return
  fi
  # `ip -n NS` enters the namespace as `ip netns exec` does, so try that
  # first, for the clearer reason.
  if ! out=$(ip netns exec "$ns-b" true 2>&1); then
    echo "'ip netns exec' does not work here (is / a mount point?): $(one_line "$out")"
    return
  fi
  if ! out=$( { ip -n "$ns-a" link add br0 type bridge &&
      ip link add p0 netns "$ns-a" type veth peer name eth0 netns "$ns-b" &&
      ip -n "$ns-a" link set p0 master br0 up &&
      ip -n "$ns-a" link set br0 up &&
      ip -n "$ns-b" addr add 10.253.0.2/24 dev eth0 &&
      ip -n "$ns-b" link set eth0 up; } 2>&1); then
    echo "cannot join network namespaces with a bridge and a veth pair: $(one_line "$out")"
    return
  fi
  if [[ ${1:-} == hosts ]]; then
    mkdir -p "/etc/netns/$ns-b"
    printf '127.0.0.1 localhost\n10.253.0.1 weightd-probe-host\n' >"/etc/netns/$ns-b/hosts"
    if ! out=$(ip netns exec "$ns-b" getent hosts weightd-probe-host 2>&1) ||
        [[ $out != 10.253.0.1* ]]; then
      echo "'ip netns exec' does not mount /etc/netns/NS/hosts over /etc/hosts here: $(one_line "$out")"
      return
    fi
  fi
}
