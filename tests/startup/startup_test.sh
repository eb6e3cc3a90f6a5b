#!/usr/bin/env bash
# Start-up checks of the three binaries: a configuration that
# cannot work stops the program at start with exit 2 and one line on stderr
# that names the flag (or environment variable); --help lists each
# binary's own flags; --version prints the project's version and build
# type. Also checks that good configurations still start (the variables of
# the other binaries, as the Dockerfile sets them, are not taken for
# misspellings; a missing --snapshot_dir is created and the probe leaves
# nothing behind).
# Every command runs with a clean environment (env -i) and a deadline, so a
# bad configuration that is accepted shows as a failure, not a hang.
# Usage: startup_test.sh BUILD_DIR
set -uo pipefail
build=$(cd "${1:?usage: startup_test.sh BUILD_DIR}" && pwd)
weightd=$build/server/weightd
worker=$build/examples/weightd_worker
weightctl=$build/tools/weightctl
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-startup.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

# run ENV... -- CMD...: runs CMD with only PATH and ENV, at most 5 s;
# sets code, out (stdout) and err (stderr).
run() {
  local vars=()
  while [[ $1 != -- ]]; do vars+=("$1"); shift; done
  shift
  env -i PATH="$PATH" "${vars[@]}" timeout -k 2 5 "$@" \
    >"$work/out" 2>"$work/err" </dev/null
  code=$?
  out=$(cat "$work/out")
  err=$(cat "$work/err")
}

# refused WHAT NEEDLE... -- [ENV...] -- CMD...: CMD must exit 2 with exactly
# one stderr line that contains every NEEDLE.
refused() {
  local what=$1 needles=()
  shift
  while [[ $1 != -- ]]; do needles+=("$1"); shift; done
  shift
  run "$@"
  local lines
  lines=$(wc -l <"$work/err")
  if ((code != 2)); then
    fail "$what: exit $code, expected 2 (stderr: $(head -c 300 "$work/err"))"
    return
  fi
  if ((lines != 1)); then
    fail "$what: $lines stderr lines, expected 1: $(head -c 300 "$work/err")"
    return
  fi
  for needle in "${needles[@]}"; do
    if [[ $err != *"$needle"* ]]; then
      fail "$what: stderr does not name '$needle': $err"
      return
    fi
  done
  pass "$what: $err"
}

# --- weightd: flags whose value cannot work ---------------------------------
refused "listen without a port" --listen= 'port' -- -- "$weightd" --listen=127.0.0.1
refused "listen on port 99999" --listen= '99999' -- -- "$weightd" --listen=127.0.0.1:99999
refused "listen on IPv6 without brackets" --listen= -- -- "$weightd" --listen=::1:7070
refused "listen on an empty unix path" --listen= -- -- "$weightd" --listen=unix:
refused "negative shutdown grace" --shutdown_grace -- -- "$weightd" --shutdown_grace=-1s
refused "duration without a unit" '--lease_timeout=5' 'needs a unit' 'e.g. 5s' -- -- \
  "$weightd" --lease_timeout=5
refused "duration without a unit, spaced" '--lease_timeout' 'needs a unit' -- -- \
  "$weightd" --lease_timeout 5
refused "zero lease timeout" lease_timeout -- -- "$weightd" --lease_timeout=0s
refused "negative round timeout" --round_timeout -- -- "$weightd" --round_timeout=-2s
refused "chunk size not a multiple of 4" chunk_bytes -- -- "$weightd" --chunk_bytes=5002
refused "chunk size too large" chunk_bytes -- -- "$weightd" --chunk_bytes=1073741824
refused "async mix above 1" async_mix -- -- "$weightd" --async_mix=2
refused "server_lr not finite" server_lr -- -- "$weightd" --server_lr=inf
refused "not a number" --max_workers -- -- "$weightd" --max_workers=many
refused "shard index past the count" shard -- -- "$weightd" --shard_index=2 --shard_count=2
refused "zero shards" shard_count -- -- "$weightd" --shard_count=0
refused "misspelt flag" --lisen --listen -- -- "$weightd" --lisen=127.0.0.1:0
refused "positional argument" '"serve"' -- -- "$weightd" serve
refused "unknown log level" --log_level -- -- "$weightd" --log_level=loud
refused "unknown crash point" --crash_at=snapshot_mid_wirte 'unknown crash point' \
  snapshot_mid_write snapshot_after_rename -- -- "$weightd" --crash_at=snapshot_mid_wirte
refused "unknown crash point, from the environment" WEIGHTD_CRASH_AT 'unknown crash point' -- \
  WEIGHTD_CRASH_AT=before_fsync -- "$weightd"
refused "ready file in a missing directory" --ready_file -- -- \
  "$weightd" --listen=127.0.0.1:0 --ready_file="$work/missing/ready"

# --snapshot_dir that cannot be written. As root, permission bits do not
# stop writes, so the portable case is a path under a regular file.
: >"$work/a-file"
refused "snapshot dir under a file" --snapshot_dir -- -- \
  "$weightd" --listen=127.0.0.1:0 --snapshot_dir="$work/a-file/snaps"
# A read-only file system, where a private mount namespace can be had.
mkdir "$work/ro"
if [[ $EUID -eq 0 ]] && unshare -m --propagation private \
    mount -t tmpfs -o ro,size=1m weightd-startup-ro "$work/ro" 2>/dev/null; then
  refused "snapshot dir on a read-only file system" --snapshot_dir 'Read-only' -- -- \
    unshare -m --propagation private sh -c \
    'mount -t tmpfs -o ro,size=1m weightd-startup-ro "$1" && shift && exec "$@"' sh \
    "$work/ro" "$weightd" --listen=127.0.0.1:0 --snapshot_dir="$work/ro/snaps"
else
  echo "skipped: snapshot dir on a read-only file system (needs root and unshare -m)"
fi

# --- weightd: the environment ------------------------------------------------
refused "misspelt variable" WEIGHTD_LISTNE WEIGHTD_LISTEN -- \
  WEIGHTD_LISTNE=127.0.0.1:0 -- "$weightd" --listen=127.0.0.1:0
refused "variable without a unit" WEIGHTD_LEASE_TIMEOUT 'needs a unit' -- \
  WEIGHTD_LEASE_TIMEOUT=5 -- "$weightd"
refused "variable out of range" WEIGHTD_SHUTDOWN_GRACE -- \
  WEIGHTD_SHUTDOWN_GRACE=-3s -- "$weightd"

# Every flag --help lists can be set as WEIGHTD_<FLAG>, as the usage says
# (the table of variables in common/startup.cc is kept by hand). An empty
# value may not parse, but the variable must be known.
run -- "$weightd" --help
flags=$(sed -nE 's/^ +--([a-z_]+) \(.*/\1/p' <<<"$out$err")
unknown=()
for flag in $flags; do
  variable=WEIGHTD_${flag^^}
  run "$variable=" -- "$weightd" --version
  [[ $err == *"$variable is not a variable"* ]] && unknown+=("$variable")
done
if [[ -z $flags ]]; then
  fail "weightd --help lists no flags"
elif ((${#unknown[@]} > 0)); then
  fail "weightd does not know ${unknown[*]}"
else
  pass "every one of weightd's $(wc -w <<<"$flags") flags can be set as WEIGHTD_<FLAG>"
fi

# --- weightd_worker and weightctl --------------------------------------------
refused "worker: duration without a unit" '--connect_timeout=5' 'needs a unit' -- -- \
  "$worker" --connect_timeout=5
refused "worker: negative duration" --connect_timeout -- -- "$worker" --connect_timeout=-5s
refused "worker: misspelt flag" --rounds -- -- "$worker" --roudns=3
refused "worker: value that cannot work" --workers -- -- "$worker" --workers=0
refused "worker: rank outside the job" --rank -- -- "$worker" --workers=2 --rank=2
refused "worker: misspelt variable" WEIGHTD_SERVRES WEIGHTD_SERVERS -- \
  WEIGHTD_SERVRES=127.0.0.1:1 -- "$worker"
refused "weightctl: duration without a unit" '--timeout=5' 'needs a unit' -- -- \
  "$weightctl" health --timeout=5
refused "weightctl: zero timeout" --timeout -- -- "$weightctl" health --timeout=0s
refused "weightctl: misspelt flag" --server -- -- "$weightctl" health --sever=127.0.0.1:1
refused "weightctl: misspelt variable" WEIGHTD_SERVRE WEIGHTD_SERVERS -- \
  WEIGHTD_SERVRE=127.0.0.1:1 -- "$weightctl" health
refused "weightctl: the old name of its variable" WEIGHTD_SERVER \
  "did you mean WEIGHTD_SERVERS?" -- WEIGHTD_SERVER=127.0.0.1:1 -- \
  "$weightctl" health

# --- --help and --version ----------------------------------------------------
# help_lists BINARY FLAG...: --help lists every FLAG of the binary.
help_lists() {
  local binary=$1
  shift
  run -- "$binary" --help
  local all="$out$err"
  if [[ $all == *"No flags matched"* ]]; then
    fail "$(basename "$binary") --help: No flags matched"
    return
  fi
  for flag in "$@"; do
    if [[ $all != *"-$flag"* ]]; then
      fail "$(basename "$binary") --help does not list --$flag"
      return
    fi
  done
  pass "$(basename "$binary") --help lists $*"
}
help_lists "$weightd" listen snapshot_dir lease_timeout shutdown_grace
help_lists "$worker" server connect_timeout rounds workers
help_lists "$weightctl" server timeout

version=$(sed -nE 's/^ *project\(weightd VERSION ([0-9.]+).*/\1/p' \
  "$(dirname "$0")/../../CMakeLists.txt")
for binary in "$weightd" "$worker" "$weightctl"; do
  run -- "$binary" --version
  name=$(basename "$binary")
  if ((code != 0)); then
    fail "$name --version: exit $code"
  elif [[ -z $version || $out != *"$name $version"* ]]; then
    fail "$name --version does not print '$name ${version:-<no project VERSION>}': $out$err"
  elif [[ $out == *"Debug build"* || $out != *" build)"* ]]; then
    fail "$name --version does not state the build type: $out"
  else
    pass "$name --version: $out"
  fi
done

# --- good configurations still start -----------------------------------------
# starts WHAT SNAPSHOT_DIR [ENV...]: weightd with these variables serves,
# then stops on SIGTERM with exit 0.
starts() {
  local what=$1 snaps=$2
  shift 2
  rm -f "$work/ready"
  env -i PATH="$PATH" "$@" "$weightd" --listen=127.0.0.1:0 \
    --ready_file="$work/ready" --snapshot_dir="$snaps" >"$work/server.log" 2>&1 &
  local pid=$! code=0
  for _ in $(seq 100); do
    [[ -s $work/ready ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s $work/ready ]]; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid"
    fail "$what: weightd did not start: $(tail -n 3 "$work/server.log")"
    return 1
  fi
  kill -TERM "$pid"
  wait "$pid" || code=$?
  if ((code != 0)); then
    fail "$what: weightd exited $code after SIGTERM"
    return 1
  fi
  pass "$what"
}
starts "the other binaries' variables are not misspellings" "$work/s1" \
  WEIGHTD_SERVERS=127.0.0.1:7070 \
  WEIGHTD_BUILD_JOBS=2 WEIGHTD_LEASE_TIMEOUT=10s
if starts "a missing snapshot dir is created" "$work/new/snaps"; then
  left=$(ls -A "$work/new/snaps" | grep -v '^snapshot-' || true)
  if [[ -n $left ]]; then
    fail "the snapshot dir probe left files behind: $left"
  else
    pass "the snapshot dir probe left nothing behind ($(ls -A "$work/new/snaps" | wc -l) snapshot file(s))"
  fi
fi

echo "$passed passed, $failed failed"
((failed == 0))
