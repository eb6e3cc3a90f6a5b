#!/usr/bin/env bash
# Prepares the ThreadSanitizer tree's dependencies in PREFIX from Debian's
# own sources (apt-get source: the versions of the installed libabsl-dev and
# libgrpc++-dev, with Debian's patches). Debian's binary Abseil and gRPC are
# not instrumented: TSan cannot see their locks and would report every
# hand-off between threads as a race.
#   PREFIX/            Abseil built with -fsanitize=thread and installed
#                      (about a minute on 2 cores);
#   PREFIX/grpc-src/   gRPC's source, which the TSan tree builds as part of
#                      itself (WEIGHTD_GRPC_SOURCE_DIR).
# Idempotent: a finished PREFIX (PREFIX/.done) is kept.
# Usage: scripts/tsan_deps.sh PREFIX
set -euo pipefail
prefix=$(realpath -m "${1:?usage: tsan_deps.sh PREFIX}")
[[ -f $prefix/.done ]] && { echo "tsan-deps: $prefix is ready"; exit 0; }
work=$prefix.work
rm -rf "$work" "$prefix" && mkdir -p "$work" "$prefix"
# A deb-src list of our own, so the machine's apt configuration is untouched.
lists=$work/apt
mkdir -p "$lists/lists/partial"
cat >"$lists/src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_opts=(-o "Dir::Etc::sourcelist=$lists/src.sources" -o Dir::Etc::sourceparts=-
  -o "Dir::State::Lists=$lists/lists" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq

# fetch SOURCE_PACKAGE BINARY_PACKAGE DIR: Debian's source of the installed
# version, unpacked with its patches applied.
fetch() {
  local version
  version=$(dpkg-query -W -f='${source:Version}' "$2")
  echo "tsan-deps: fetching $1 $version source from Debian"
  mkdir -p "$work/$1"
  (cd "$work/$1" && apt-get "${apt_opts[@]}" source -qq --download-only "$1=$version" &&
    dpkg-source -x --no-check ./*.dsc "$3" >/dev/null)
}

fetch abseil libabsl-dev "$work/abseil-src"
echo "tsan-deps: building Abseil with -fsanitize=thread"
cmake -S "$work/abseil-src" -B "$work/abseil-build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_STANDARD=17 -DABSL_PROPAGATE_CXX_STD=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread" -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -gline-tables-only -DNDEBUG" \
  -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
cmake --build "$work/abseil-build" -j "${WEIGHTD_BUILD_JOBS:-2}" >/dev/null
cmake --install "$work/abseil-build" >/dev/null

fetch grpc libgrpc++-dev "$prefix/grpc-src"
rm -rf "$work"
touch "$prefix/.done"
echo "tsan-deps: ready in $prefix"
