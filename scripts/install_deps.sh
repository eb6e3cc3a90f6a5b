#!/usr/bin/env bash
# Installs the Debian 12 packages weightd needs, one line per package group.
# Idempotent: a group whose packages are all installed is only reported.
# Usage: scripts/install_deps.sh [group ...]   (default: every group)
set -euo pipefail

declare -A GROUPS_=(
  # libjemalloc-dev: the daemon's allocator (server/CMakeLists.txt).
  # libssl-dev: common/tls.cc reads and checks the TLS files with OpenSSL,
  # the library Debian's gRPC does TLS with.
  [build]="cmake ninja-build g++ pkg-config libjemalloc-dev libssl-dev"
  # prometheus-cpp-dev: the daemon's /metrics (server/service/metrics.h).
  # nlohmann-json3-dev, libzip-dev: weightctl's --json output and its
  # safetensors (a JSON header) and .npz (a zip archive) files.
  [grpc]="libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev libspdlog-dev prometheus-cpp-dev nlohmann-json3-dev libzip-dev"
  # python3-dev, -venv, -setuptools, -wheel: the Python package's native
  # build and its offline `pip install ./python` test.
  # python3-grpcio: a gRPC client that is not weightd's, for the TLS tests
  # (tests/security/grpc_probe.py). openssl: their certificates.
  # prometheus: promtool checks the metrics and alert rules, and a real
  # Prometheus scrapes a daemon (tests/metrics/).
  [test]="prometheus openssl python3-grpcio googletest libgtest-dev libgmock-dev pybind11-dev python3-dev python3-numpy python3-pytest python3-venv python3-setuptools python3-wheel clang libclang-rt-14-dev llvm-14 dpkg-dev iproute2 procps util-linux docker-compose python3-yaml systemd"
  # python3-matplotlib: the demo's per-round chart (scripts/plot_rounds.py).
  [demo]="libeigen3-dev zlib1g-dev dataset-fashion-mnist python3-matplotlib"
  # The Python package and its examples (examples/python/, demo.sh --torch
  # and --cnn-rnn, ctest label python).
  [torch]="python3-torch python3-numpy pybind11-dev"
  # The container test (tests/container/): podman with runc, its network
  # stack with container DNS, and debootstrap for the base images.
  [container]="podman podman-compose runc netavark aardvark-dns iptables debootstrap debian-archive-keyring"
)
ORDER=(build grpc test demo torch container)
[[ $# -gt 0 ]] && ORDER=("$@")

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install_deps: need root or sudo" >&2; exit 1; }
  SUDO="sudo"
fi

# Packages are installed, never started: without this, installing
# `prometheus` on a machine running systemd would start a Prometheus server
# on port 9090 (the tests start their own). policy-rc.d answers "not
# allowed" to every service start during the install, and is removed after.
policy=/usr/sbin/policy-rc.d
made_policy=0
no_service_starts() {
  [[ -e $policy ]] && return 0
  printf '#!/bin/sh\n# scripts/install_deps.sh: no service starts.\nexit 101\n' |
    $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  made_policy=1
  trap '[[ $made_policy -eq 1 ]] && $SUDO rm -f "$policy"' EXIT
}

updated=0
for group in "${ORDER[@]}"; do
  pkgs=${GROUPS_[$group]:?unknown group $group}
  missing=()
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps: $group: installed"
    continue
  fi
  echo "deps: $group: installing ${missing[*]}"
  if [[ $updated -eq 0 ]]; then
    $SUDO apt-get update -qq >/dev/null
    updated=1
  fi
  no_service_starts
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
