#!/usr/bin/env bash
# Validates deploy/ without a Docker engine or a cluster: docker-compose
# (Debian's package) parses both Compose files, the manifests and Compose
# files have what a deployment needs (check_manifests.py), and systemd
# accepts the unit.
# Usage: deploy_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: deploy_test.sh BUILD_DIR}" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

for f in docker-compose.yml docker-compose.shards.yml; do
  docker-compose -f "$repo/deploy/$f" config >"$work/$f" ||
    { echo "FAIL: docker-compose rejects deploy/$f"; exit 1; }
  echo "ok: docker-compose config parses deploy/$f"
done
/usr/bin/python3 "$repo/tests/deploy/check_manifests.py" "$repo" "$build" \
  "$work/docker-compose.yml" "$work/docker-compose.shards.yml"

# systemd: the unit as installed, pointing at the binary built here.
sed "s|^ExecStart=/usr/local/bin/weightd|ExecStart=$build/server/weightd|" \
  "$repo/deploy/systemd/weightd.service" >"$work/weightd.service"
out=$(systemd-analyze verify "$work/weightd.service" 2>&1) || true
if [[ -n $out ]]; then
  echo "FAIL: systemd-analyze verify: $out"
  exit 1
fi
echo "ok: systemd-analyze verify accepts deploy/systemd/weightd.service"
echo "PASS: deploy/ validated"
