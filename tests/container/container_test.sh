#!/usr/bin/env bash
# The Compose deployment for real: Debian's podman and
# podman-compose build deploy/Dockerfile and run deploy/docker-compose*.yml
# as a user would, on this machine only (containers on a podman network).
#
#  1. The base images debian:bookworm and :bookworm-slim are made here (no
#     registry can be reached): a debootstrapped Debian 12 root, imported.
#     It is cached in $WEIGHTD_CONTAINER_CACHE (default
#     /var/cache/weightd-container), keyed by the recipe, the mirror and
#     debootstrap's version, and rebuilt after 30 days; podman's own store
#     (images, build cache) lives there too, apart from the machine's.
#  2. A probe: `podman run --rm` of the base image running `true`. Where
#     podman cannot run containers, the test prints SKIP and exits 77.
#  3. `podman build --pull=never` of the Dockerfile's targets (weightd,
#     worker, and prometheus: Debian's package for the Compose files'
#     prometheus service). The runtime images take BUILD_DIR's binaries:
#     CI does not build the Dockerfile's from-source build stage (section 3
#     says how, and what still checks that stage);
#     WEIGHTD_CONTAINER_FROM_SOURCE=1 builds it. In each image, ldd finds
#     every library the binaries link.
#  4. docker-compose.yml, with the secrets scripts/dev_secrets.sh makes:
#     TLS and tokens by default (plaintext and a call without a token are
#     refused). `podman-compose up --scale worker=4` (podman-compose
#     1.0.3 ignores --scale; the file's deploy.replicas makes the 4). The
#     server container's process is killed mid-run: its restart policy brings
#     it back and it restores from the snapshot volume. Then the workers go
#     from 4 to 6 mid-run: as podman-compose cannot scale, the 2 extra
#     replicas are started with `podman run --net <project>_default` on the
#     Compose network, as a user would. Every worker must finish and print
#     `final test accuracy` >= $min_accuracy. The Compose prometheus
#     service (its API on a free 127.0.0.1 port) has the daemon's target
#     up and scraped weightd_rounds_closed_total equal to GetStatus's
#     rounds_closed (weightctl status) after the training.
#  5. The snapshot volume resumes the finished job on the next `up`
#     (`restored from` in the log); WEIGHTD_JOB=<new name> starts afresh.
#  6. docker-compose.shards.yml: 2 shards and 4 workers train the same way;
#     its prometheus scrapes both shards (both up, rounds closed on each).
#  7. After each file: `down -v`, the project network removed (podman-compose
#     1.0.3 leaves it), and no container, volume or network of the project
#     may remain.
# Workers train WORKER_ROUNDS x WORKER_LOCAL_STEPS (shorter than the
# default) to keep the test short.
# Usage: container_test.sh BUILD_DIR   (root; installs the `container`
# group of scripts/install_deps.sh)
set -euo pipefail
build=$(cd "${1:?usage: container_test.sh BUILD_DIR}" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${WEIGHTD_CONTAINER_CACHE:-/var/cache/weightd-container}
rundir=/run/weightd-container
min_accuracy=0.75
export WORKER_ROUNDS=40 WORKER_LOCAL_STEPS=100
started=$SECONDS
projects=()
work=""

say() { echo "[$((SECONDS - started)) s] $*"; }
skip() { echo "SKIP: $*"; exit 77; }
fail() {
  echo "FAIL: $*"
  if [[ -n $work ]]; then
    for log in "$work"/*.log; do
      [[ -f $log ]] || continue
      echo "--- last lines of $(basename "$log")"
      tail -n 15 "$log"
    done
  fi
  exit 1
}

[[ $(id -u) -eq 0 ]] || skip "container test needs root (rootful podman)"
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-container.XXXXXX")

# Removes every container, volume and network of the projects this run
# started, whatever state it stopped in.
cleanup() {
  local p ids
  for p in "${projects[@]}"; do
    ids=$(timeout 60 podman ps -aq --filter "label=io.podman.compose.project=$p" 2>/dev/null || true)
    [[ -z $ids ]] || timeout 120 podman rm -f -v -t 0 $ids >/dev/null 2>&1 || true
    ids=$(timeout 60 podman volume ls -q --filter "label=io.podman.compose.project=$p" 2>/dev/null || true)
    [[ -z $ids ]] || timeout 60 podman volume rm -f $ids >/dev/null 2>&1 || true
    timeout 60 podman network rm -f "${p}_default" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$repo/scripts/install_deps.sh" container >"$work/deps.log" 2>&1 ||
  skip "cannot install podman (scripts/install_deps.sh container: $(tail -n 1 "$work/deps.log"))"

# podman as it runs here (FACTS.md): runc, cgroupfs, explicit ulimits; a
# store, network configs and run directory of the test's own.
mkdir -p "$cache" "$rundir"
exec 9>"$cache/lock"
flock -w 1800 9 || fail "another container test holds $cache/lock for 30 min"
cat >"$cache/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
[network]
network_backend = "netavark"
network_config_dir = "$cache/networks"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$rundir/libpod"
EOF
cat >"$cache/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$cache/storage"
runroot = "$rundir/storage"
EOF
export CONTAINERS_CONF=$cache/containers.conf
export CONTAINERS_STORAGE_CONF=$cache/storage.conf
timeout 120 podman info >"$work/podman-info.log" 2>&1 ||
  skip "podman does not work here: $(tail -n 1 "$work/podman-info.log")"
# The store is the test's own: what an earlier run that was killed left
# (containers, volumes, networks) goes; images stay as the cache.
timeout 300 podman rm -a -f -v -t 0 >/dev/null 2>&1 || true
timeout 120 podman volume prune -f >/dev/null 2>&1 || true
timeout 120 podman network prune -f >/dev/null 2>&1 || true

# --- 1. Base images ----------------------------------------------------------
# Debian's mirror, as this machine's apt knows it.
mirror=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
  awk '$1 == "URIs:" && $2 ~ /debian\/?$/ { print $2; exit }')
if [[ -z $mirror ]]; then
  mirror=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\/.*debian\/?$/) { print $i; exit } }')
fi
[[ -n $mirror ]] || fail "no Debian mirror in /etc/apt/sources.list{,.d}"
recipe="base v1: debootstrap $(dpkg-query -W -f='${Version}' debootstrap) --variant=minbase bookworm $mirror"
key=$(echo "$recipe" | sha256sum | cut -c1-16)
tarball=$cache/bookworm-$key.tar
if [[ -f $tarball && -n $(find "$tarball" -mtime +30) ]]; then
  say "base: $tarball is older than 30 days; rebuilding it"
  rm -f "$tarball"
fi
if [[ ! -f $tarball ]]; then
  say "base: debootstrap --variant=minbase bookworm from $mirror"
  rm -f "$cache"/bookworm-*.tar
  root=$cache/root.tmp
  # --one-file-system: never into what a killed debootstrap left mounted.
  rm -rf --one-file-system "$root"
  timeout 900 debootstrap --variant=minbase bookworm "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || fail "debootstrap failed"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --one-file-system -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf --one-file-system "$root"
fi
have=$(podman image inspect --format '{{index .Labels "weightd.base"}}' \
  docker.io/library/debian:bookworm 2>/dev/null || true)
if [[ $have != "$key" ]]; then
  say "base: podman import as debian:bookworm and debian:bookworm-slim"
  timeout 600 podman import --change 'CMD ["bash"]' \
    --change "LABEL weightd.base=$key" "$tarball" \
    docker.io/library/debian:bookworm >"$work/import.log" 2>&1 ||
    fail "podman import failed"
  podman tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
fi
say "base: debian:bookworm(-slim) $key ($recipe)"

# --- 2. Can podman run a container here? ---------------------------------------
timeout 120 podman run --rm --net none docker.io/library/debian:bookworm true \
  >"$work/probe.log" 2>&1 ||
  skip "podman cannot run containers here: $(tail -n 1 "$work/probe.log")"
say "probe: podman run --rm debian:bookworm true works"

# --- 3. Images ----------------------------------------------------------------
# The names the Compose files give them (WEIGHTD_TAG unset: the default).
tag=$(sed -n 's/^ *image: weightd:\${WEIGHTD_TAG:-\([^}]*\)}$/\1/p' \
  "$repo/deploy/docker-compose.yml")
[[ -n $tag ]] || fail "no image tag in deploy/docker-compose.yml"
# The binaries the Dockerfile's build stage puts in /out/bin/ (its `cp
# build/image/PATH... /out/bin/`), as paths in a build tree.
mapfile -t binaries < <(sed -n '/^FROM .* AS build$/,/^FROM /p' "$repo/deploy/Dockerfile" |
  grep -o 'build/image/[A-Za-z0-9_./-]*' | sed 's|^build/image/||' | sort -u)
((${#binaries[@]} > 0)) || fail "no build/image/... binary in the Dockerfile's build stage"
# CI does not build the Dockerfile's from-source stage (FROM debian:bookworm
# AS build: install_deps.sh, then the whole project compiled again, about 4
# CPU-minutes): `--build-context build=DIR` stands in for it, DIR/out/bin/
# holding BUILD_DIR's binaries at the stage's paths (this Release tree,
# built on Debian 12 against the same packages as the runtime stage's), and
# podman then skips the stage. What checks the stage in CI is deploy_test's
# static check (check_manifests.py: its base, the scripts and install_deps
# groups it runs, its RUN lines parse as shell, its CMake options exist, and
# BUILD_DIR has every binary it copies). WEIGHTD_CONTAINER_FROM_SOURCE=1
# builds it as the docs do, first as a target of its own under a tag of the
# test's (so the prune below keeps it as the next such run's cache).
build_context=()
targets=(weightd worker prometheus)
if [[ ${WEIGHTD_CONTAINER_FROM_SOURCE:-0} == 1 ]]; then
  targets=(build "${targets[@]}")
  say "images: from source (WEIGHTD_CONTAINER_FROM_SOURCE=1): the build stage compiles"
else
  mkdir -p "$work/prebuilt/out/bin"
  for b in "${binaries[@]}"; do
    [[ -x $build/$b ]] || fail "$build/$b is missing: the images take BUILD_DIR's binaries (or set WEIGHTD_CONTAINER_FROM_SOURCE=1)"
    cp "$build/$b" "$work/prebuilt/out/bin/"
  done
  build_context=(--build-context "build=$work/prebuilt")
  say "images: the build stage replaced by ${binaries[*]} of $build"
fi
for target in "${targets[@]}"; do
  case $target in
    build) image=weightd-container-test-build:latest ;;
    weightd) image=weightd:$tag ;;
    worker) image=weightd-worker:$tag ;;
    prometheus) image=weightd-prometheus:$tag ;;
  esac
  t0=$SECONDS
  (cd "$repo" && timeout 1500 podman build --pull=never -f deploy/Dockerfile \
    "${build_context[@]}" --target "$target" -t "$image" . \
    >"$work/build-$target.log" 2>&1) ||
    fail "podman build --target $target failed"
  say "image: $image built in $((SECONDS - t0)) s"
done
# The build cache of older sources (untagged images) goes; the current
# one, under the tags just built, stays for the next run.
timeout 300 podman image prune -f >>"$work/build-weightd.log" 2>&1 || true

# Each image's binaries find every shared library they link in the image
# (ldd there: the runtime stage installs them), and are BUILD_DIR's unless
# built from source.
for image in "weightd:$tag" "weightd-worker:$tag"; do
  timeout 60 podman run --rm --net none --entrypoint sh "$image" -c \
    'cd /usr/local/bin && sha256sum * && ldd *' >"$work/ldd.log" 2>&1 ||
    fail "sha256sum and ldd in $image: $(tail -n 3 "$work/ldd.log")"
  ! grep 'not found' "$work/ldd.log" >/dev/null ||
    fail "$image lacks libraries: $(grep 'not found' "$work/ldd.log" | sort -u | tr '\n' ' ')"
  for b in "${binaries[@]}"; do
    grep -q "  ${b##*/}$" "$work/ldd.log" || fail "$image has no ${b##*/}"
    [[ ${#build_context[@]} -eq 0 ]] ||
      grep -q "^$(sha256sum <"$build/$b" | cut -d' ' -f1)  ${b##*/}$" "$work/ldd.log" ||
      fail "$image's ${b##*/} is not $build/$b"
  done
done
say "images: ${binaries[*]##*/} in weightd:$tag and weightd-worker:$tag find all their libraries (ldd in the image)"

# weightctl health exits 1 (never 2, Docker's reserved code) when the server
# cannot be reached.
status=0
timeout 60 podman run --rm --net none --entrypoint weightctl "weightd:$tag" \
  health --server=127.0.0.1:9 --timeout=2s >"$work/health-down.log" 2>&1 || status=$?
[[ $status -eq 1 ]] || fail "weightctl health with no server exited $status, not 1"
say "weightctl health with no server: exit 1"

# --- Helpers for the Compose runs ----------------------------------------------
# compose FILE PROJECT ARGS...: podman-compose, output in $work/compose.log.
compose() {
  local file=$1 project=$2
  shift 2
  echo "+ podman-compose -f deploy/$file -p $project $*" >>"$work/compose.log"
  # Debug logs: the test follows the daemon's per-round lines.
  (cd "$repo" && WEIGHTD_LOG_LEVEL=debug \
    timeout 600 podman-compose -f "deploy/$file" -p "$project" "$@") \
    >>"$work/compose.log" 2>&1 || fail "podman-compose $* failed"
}

# wait_log CONTAINER REGEX SECONDS: waits until the container's log has a
# matching line.
wait_log() {
  local deadline=$((SECONDS + $3))
  # grep reads it all (no -q): a grep that stopped at the match would end
  # podman logs with SIGPIPE, and fail the pipe under pipefail.
  until podman logs "$1" 2>&1 | grep -E "$2" >/dev/null; do
    ((SECONDS < deadline)) || fail "no line matching '$2' in $1's log within $3 s"
    sleep 0.5
  done
}

# wait_healthy CONTAINER SECONDS: until its HEALTHCHECK passes (podman does
# not schedule health checks without systemd; `healthcheck run` runs it).
wait_healthy() {
  local deadline=$((SECONDS + $2))
  until timeout 30 podman healthcheck run "$1" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$1 not healthy within $2 s"
    sleep 0.5
  done
}

# finish_workers SECONDS NAME...: every worker container exits 0 within
# SECONDS and prints its final accuracy, at least $min_accuracy; the
# accuracies go to $accuracies.
finish_workers() {
  local seconds=$1 name code acc
  shift
  accuracies=""
  timeout "$seconds" podman wait "$@" >/dev/null ||
    fail "the workers did not finish within $seconds s"
  for name in "$@"; do
    podman logs "$name" >"$work/$name.log" 2>&1
    code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    [[ $code -eq 0 ]] || fail "$name exited $code"
    acc=$(sed -n 's/^final test accuracy: //p' "$work/$name.log")
    [[ -n $acc ]] || fail "$name printed no final test accuracy"
    awk -v a="$acc" -v m="$min_accuracy" 'BEGIN { exit !(a >= m) }' ||
      fail "$name: final test accuracy $acc < $min_accuracy"
    accuracies+="$acc "
  done
}

# What the store held before the Compose runs: afterwards, nothing new may
# remain (a project's anonymous volumes carry no project name).
inventory() {
  { podman ps -a --format 'container {{.Names}}'
    podman volume ls --format 'volume {{.Name}}'
    podman network ls --format 'network {{.Name}}'; } | sort
}
before=$(inventory)

# down_and_check FILE PROJECT: down -v, remove the network podman-compose
# 1.0.3 leaves, and nothing of the project may remain.
down_and_check() {
  local file=$1 project=$2 left
  compose "$file" "$project" down -v
  timeout 60 podman network rm -f "${project}_default" >>"$work/compose.log" 2>&1 || true
  left=$(podman ps -a --format '{{.Names}}' --filter "label=io.podman.compose.project=$project")
  [[ -z $left ]] || fail "containers of $project left after down -v: $left"
  left=$(comm -13 <(echo "$before") <(inventory) | tr '\n' ' ')
  [[ -z $left ]] || fail "left after down -v of $project: $left"
  say "$file: down -v and the network removed: no container, volume or network of $project left"
}

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# prom_query PROMQL: an instant query to the Compose prometheus service
# through its port on the host's 127.0.0.1 ($PROMETHEUS_PORT), one line
# "INSTANCE VALUE" per series, sorted (nothing when it does not answer).
prom_query() {
  /usr/bin/python3 - "$PROMETHEUS_PORT" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:%s/api/v1/query?query=%s" % (
    sys.argv[1], urllib.parse.quote(sys.argv[2]))
try:
    result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
except Exception:
    sys.exit(0)
for line in sorted("%s %s" % (r["metric"].get("instance", "-"), r["value"][1])
                   for r in result):
    print(line)
PY
}

# wait_prom CONTAINER PROMQL WANT SECONDS: until prom_query PROMQL prints
# WANT (lines joined by "; "); the service scrapes every 5 s.
wait_prom() {
  local deadline=$((SECONDS + $4)) got
  until got=$(prom_query "$2" | paste -sd ';' | sed 's/;/; /g') && [[ $got == "$3" ]]; do
    if ((SECONDS >= deadline)); then
      podman logs "$1" >"$work/prometheus.log" 2>&1 || true
      fail "the Compose Prometheus ($1, 127.0.0.1:$PROMETHEUS_PORT) answers '$2' with '$got', not '$3', within $4 s"
    fi
    sleep 1
  done
}

# --- 4. docker-compose.yml: 4 workers, a server crash, 4 -> 6 workers ----------
# The secrets the Compose files default to, made the documented way
# (deploy/secrets in a checkout; here a scratch directory).
export WEIGHTD_SECRETS=$work/secrets
"$repo/scripts/dev_secrets.sh" "$WEIGHTD_SECRETS" >>"$work/compose.log" 2>&1 ||
  fail "scripts/dev_secrets.sh failed"
p=wdct$$
projects+=("$p")
server=${p}_weightd_1
workers=("${p}_worker_1" "${p}_worker_2" "${p}_worker_3" "${p}_worker_4")
export WEIGHTD_PORT PROMETHEUS_PORT
WEIGHTD_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port)
t0=$SECONDS
compose docker-compose.yml "$p" up -d --scale worker=4
for w in "${workers[@]}"; do
  podman container exists "$w" || fail "podman-compose did not create $w"
done
say "docker-compose.yml: up -d --scale worker=4: $server and ${#workers[@]} workers"
wait_healthy "$server" 60
# From the host, through the published port (this tree's weightctl, else
# the image's in the host's network namespace).
host_weightctl=("$build/tools/weightctl")
secrets=$WEIGHTD_SECRETS
if [[ ! -x ${host_weightctl[0]} ]]; then
  host_weightctl=(podman run --rm --net host --user 0 -v "$WEIGHTD_SECRETS:/secrets:ro"
    --entrypoint weightctl "weightd:$tag")
  secrets=/secrets
fi
timeout 60 "${host_weightctl[@]}" health --server="127.0.0.1:$WEIGHTD_PORT" \
  --tls_ca="$secrets/ca.crt" >/dev/null ||
  fail "weightctl health through the published port $WEIGHTD_PORT failed"
say "health: SERVING (HEALTHCHECK in the container, and through host port $WEIGHTD_PORT)"
# TLS and the policy by default: plaintext and a call without a token are
# refused, the admin token is let in.
podman logs "$server" >"$work/server-start.log" 2>&1
grep -q 'TLS: serving certificate CN=weightd' "$work/server-start.log" ||
  fail "the Compose daemon does not serve TLS"
grep -q 'auth: policy /run/secrets/policy.json in force: 3 principal' "$work/server-start.log" ||
  fail "the Compose daemon does not enforce the policy"
! timeout 60 "${host_weightctl[@]}" status --server="127.0.0.1:$WEIGHTD_PORT" \
  >"$work/ctl.out" 2>&1 || fail "weightctl in plaintext was let in"
grep -q 'UNAVAILABLE.*if it serves TLS, give --tls_ca' "$work/ctl.out" ||
  fail "weightctl in plaintext: $(cat "$work/ctl.out")"
! timeout 60 "${host_weightctl[@]}" status --server="127.0.0.1:$WEIGHTD_PORT" \
  --tls_ca="$secrets/ca.crt" >"$work/ctl.out" 2>&1 || fail "weightctl without a token was let in"
grep -q UNAUTHENTICATED "$work/ctl.out" ||
  fail "weightctl without a token: $(cat "$work/ctl.out")"
timeout 60 "${host_weightctl[@]}" status --server="127.0.0.1:$WEIGHTD_PORT" \
  --tls_ca="$secrets/ca.crt" --token_file="$secrets/admin.token" >"$work/ctl.out" 2>&1 ||
  fail "weightctl with admin.token: $(cat "$work/ctl.out")"
say "TLS and tokens by default: plaintext refused, no token UNAUTHENTICATED, admin.token let in"

# The server crashes after round 12 (snapshots every 10 rounds).
wait_log "$server" 'round closed tensor=hidden/w round=12 ' 300
pid=$(podman inspect --format '{{.State.Pid}}' "$server")
kill -KILL "$pid"
say "kill -9 of weightd (pid $pid on the host) after round 12"
deadline=$((SECONDS + 60))
until [[ $(podman inspect --format '{{.RestartCount}} {{.State.Running}}' "$server") =~ ^[1-9][0-9]*\ true$ ]]; do
  ((SECONDS < deadline)) || fail "$server was not restarted within 60 s"
  sleep 0.5
done
wait_log "$server" 'restored from ' 60
say "restart policy: $server restarted ($(podman logs "$server" 2>&1 | grep -m1 -o 'restored from .*'))"

# 4 -> 6 workers: two more replicas on the Compose network, like the others.
wait_log "$server" 'round closed tensor=hidden/w round=1[5-9] ' 120
image=$(podman inspect --format '{{.ImageName}}' "${workers[0]}")
servers=$(podman inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "${workers[0]}" |
  sed -n 's/^WEIGHTD_SERVERS=//p')
mapfile -t cmd < <(podman inspect --format '{{range .Config.Cmd}}{{println .}}{{end}}' "${workers[0]}" | sed '/^$/d')
for n in 5 6; do
  podman run -d --name "${p}_worker_$n" --net "${p}_default" --network-alias worker \
    --label "io.podman.compose.project=$p" --label com.docker.compose.service=worker \
    --restart on-failure -e "WEIGHTD_SERVERS=$servers" \
    -v "$WEIGHTD_SECRETS/ca.crt:/run/secrets/ca.crt:ro" \
    -v "$WEIGHTD_SECRETS/worker.token:/run/secrets/worker.token:ro" \
    -e WEIGHTD_TLS_CA=/run/secrets/ca.crt -e WEIGHTD_TOKEN_FILE=/run/secrets/worker.token \
    "$image" "${cmd[@]}" \
    >>"$work/compose.log" 2>&1 || fail "podman run of an extra worker failed"
  workers+=("${p}_worker_$n")
done
say "scale 4 -> 6: started ${p}_worker_5 and _6 with podman run --net ${p}_default (${cmd[*]})"
wait_log "$server" 'round closed tensor=hidden/w .*contributors=6 ' 120
say "rounds close with 6 workers"
finish_workers 600 "${workers[@]}"
# The 4 replicas that passed the start barrier trained on 4 distinct data
# shards (the server's arrival order; the 2 added later pick any).
shards=$(for w in "${workers[@]:0:4}"; do
  sed -n 's/.*training on data shard \([0-9]*\) of 4/\1/p' "$work/$w.log"
done | sort -u | wc -l)
[[ $shards -eq 4 ]] || fail "the 4 replicas trained on $shards distinct data shards, not 4"
say "the 4 replicas trained on 4 distinct data shards"
say "docker-compose.yml: all 6 workers finished in $((SECONDS - t0)) s; final test accuracy: $accuracies"
podman logs "$server" >"$work/server.log" 2>&1

# The Compose prometheus service scraped the daemon (the process restarted
# after the kill -9) on the Compose network: its target is up, and the
# rounds it scraped reach what GetStatus reports now that no round closes.
timeout 60 "${host_weightctl[@]}" status --server="127.0.0.1:$WEIGHTD_PORT" \
  --tls_ca="$secrets/ca.crt" --token_file="$secrets/admin.token" >"$work/status.out" 2>&1 ||
  fail "weightctl status: $(cat "$work/status.out")"
closed=$(sed -n 's/.*rounds_closed \([0-9]*\).*/\1/p' "$work/status.out")
[[ $closed -gt 0 ]] || fail "GetStatus reports '$closed' rounds closed: $(cat "$work/status.out")"
t1=$SECONDS
wait_prom "${p}_prometheus_1" 'up{job="weightd"}' "weightd:9100 1" 30
wait_prom "${p}_prometheus_1" 'sum by (instance) (weightd_rounds_closed_total{job="weightd"})' \
  "weightd:9100 $closed" 30
rules=$(prom_query 'count(ALERTS) or vector(0)')
say "Compose Prometheus (127.0.0.1:$PROMETHEUS_PORT): target weightd:9100 up, scraped" \
  "weightd_rounds_closed_total $closed == GetStatus rounds_closed (in $((SECONDS - t1)) s); alerts firing or pending: ${rules#- }"

# --- 5. The volume resumes the finished job; a new WEIGHTD_JOB starts fresh ---
podman rm "${p}_worker_5" "${p}_worker_6" >>"$work/compose.log"  # podman-compose does not know them
compose docker-compose.yml "$p" down
compose docker-compose.yml "$p" up -d weightd
wait_healthy "$server" 60
podman logs "$server" 2>&1 | grep 'restored from ' >/dev/null ||
  fail "the next up on the same volume did not resume the job"
say "up again on the same volume: the finished job is resumed ($(podman logs "$server" 2>&1 | grep -m1 -o 'restored from .*'))"
compose docker-compose.yml "$p" down
WEIGHTD_JOB=fresh compose docker-compose.yml "$p" up -d weightd
wait_healthy "$server" 60
! podman logs "$server" 2>&1 | grep 'restored from ' >/dev/null ||
  fail "WEIGHTD_JOB=fresh restored a snapshot"
say "WEIGHTD_JOB=fresh: a new job, nothing restored"
down_and_check docker-compose.yml "$p"

# --- 6. docker-compose.shards.yml: 2 shards, 4 workers ---------------------------
p=wdct$$s
projects+=("$p")
t0=$SECONDS
compose docker-compose.shards.yml "$p" up -d --scale worker=4
wait_healthy "${p}_weightd-0_1" 60
wait_healthy "${p}_weightd-1_1" 60
finish_workers 600 "${p}_worker_1" "${p}_worker_2" "${p}_worker_3" "${p}_worker_4"
for s in 0 1; do
  podman logs "${p}_weightd-${s}_1" >"$work/shard-$s.log" 2>&1
  grep -q 'round closed tensor=hidden/w' "$work/shard-$s.log" ||
    fail "shard $s closed no round of hidden/w"
done
# Its prometheus scrapes both shards, and each closed rounds.
t1=$SECONDS
wait_prom "${p}_prometheus_1" 'up{job="weightd"}' "weightd-0:9100 1; weightd-1:9100 1" 30
wait_prom "${p}_prometheus_1" 'sum by (instance) (weightd_rounds_closed_total{job="weightd"}) > bool 0' \
  "weightd-0:9100 1; weightd-1:9100 1" 30
say "Compose Prometheus: both shards' targets up, each scraped rounds closed ($(prom_query \
  'sum by (instance) (weightd_rounds_closed_total)' | paste -sd ' '); in $((SECONDS - t1)) s)"
say "docker-compose.shards.yml: 4 workers over 2 shards finished in $((SECONDS - t0)) s; final test accuracy: $accuracies"
down_and_check docker-compose.shards.yml "$p"

echo "PASS: images built; Compose trained with 4 -> 6 workers through a server crash, resumed and fresh jobs, 2 shards; nothing left (in $((SECONDS - started)) s)"
