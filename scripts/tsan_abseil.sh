#!/usr/bin/env bash
# Builds Debian's own Abseil (the source of the installed libabsl-dev, with
# Debian's patches) with ThreadSanitizer into PREFIX, for the TSan test
# tree. Debian's binary libabsl is not instrumented, so TSan cannot see its
# Mutex hand-offs and would report every guarded access as a race.
# Idempotent: an existing PREFIX/.done is kept.
# Usage: scripts/tsan_abseil.sh PREFIX
set -euo pipefail
prefix=$(realpath -m "${1:?usage: tsan_abseil.sh PREFIX}")
[[ -f $prefix/.done ]] && { echo "tsan-abseil: $prefix is built"; exit 0; }
version=$(dpkg-query -W -f='${source:Version}' libabsl-dev)
work=$prefix.src
rm -rf "$work" && mkdir -p "$work"
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
echo "tsan-abseil: fetching abseil $version source from Debian"
apt-get "${apt_opts[@]}" update -qq
(cd "$work" && apt-get "${apt_opts[@]}" source -qq --download-only "abseil=$version")
(cd "$work" && dpkg-source -x --no-check ./*.dsc src >/dev/null)
echo "tsan-abseil: building with -fsanitize=thread (a few minutes)"
cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_STANDARD=17 -DABSL_PROPAGATE_CXX_STD=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread" -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
cmake --build "$work/build" -j "${WEIGHTD_BUILD_JOBS:-2}" >/dev/null
cmake --install "$work/build" >/dev/null
rm -rf "$work"
touch "$prefix/.done"
echo "tsan-abseil: installed in $prefix"
