#!/usr/bin/env bash
# Validates deploy/ without a Docker engine or a cluster: docker-compose
# (Debian's package) parses both Compose files, the manifests and Compose
# files have what a deployment needs (check_manifests.py: metrics and the
# Compose Prometheus's targets too), promtool accepts the alert rules and
# the Compose Prometheus's configurations, and systemd accepts the unit.
# Usage: deploy_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: deploy_test.sh BUILD_DIR}" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The secrets the deployments run with, as a user makes them.
"$repo/scripts/dev_secrets.sh" "$work/secrets" >/dev/null ||
  { echo "FAIL: scripts/dev_secrets.sh"; exit 1; }
for f in docker-compose.yml docker-compose.shards.yml; do
  WEIGHTD_SECRETS=$work/secrets docker-compose -f "$repo/deploy/$f" config >"$work/$f" ||
    { echo "FAIL: docker-compose rejects deploy/$f"; exit 1; }
  echo "ok: docker-compose config parses deploy/$f"
done
/usr/bin/python3 "$repo/tests/deploy/check_manifests.py" "$repo" "$build" \
  "$work/secrets" "$work/docker-compose.yml" "$work/docker-compose.shards.yml"
# kustomize builds deploy/ with those secrets, where kubectl is installed
# (no Debian 12 package the test installs has a current one).
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  mkdir -p "$work/kustomize"
  cp -r "$repo/deploy/kustomization.yaml" "$repo/deploy/k8s" "$work/kustomize/"
  cp -r "$work/secrets" "$work/kustomize/secrets"
  kubectl kustomize "$work/kustomize" >"$work/kustomized.yaml" 2>&1 ||
    { echo "FAIL: kubectl kustomize deploy: $(cat "$work/kustomized.yaml")"; exit 1; }
  echo "ok: kubectl kustomize deploy renders $(grep -c '^kind:' "$work/kustomized.yaml") objects"
else
  echo "skipped: kubectl kustomize (no kubectl here)"
fi

# Every WEIGHTD_* variable deploy/ names is one the programs know: an
# unknown one in the environment stops weightd, weightctl and the worker at
# start (common/startup.cc lists them).
for name in $(grep -ohE '\bWEIGHTD_[A-Z_]+[A-Z]\b' -r "$repo/deploy" | sort -u); do
  out=$(env "$name=x" "$build/tools/weightctl" health --server=127.0.0.1:9 \
    --timeout=1ms 2>&1) || true
  if [[ $out == *"is not a variable of"* ]]; then
    echo "FAIL: deploy/ uses $name, which common/startup.cc does not list: $out"
    exit 1
  fi
done
echo "ok: every WEIGHTD_* variable in deploy/ is one common/startup.cc lists"

# The alert rules (deploy/prometheus/alerts.yml) parse and their
# expressions are valid PromQL.
promtool check rules "$repo/deploy/prometheus/alerts.yml" >"$work/rules.out" 2>&1 ||
  { echo "FAIL: promtool check rules: $(cat "$work/rules.out")"; exit 1; }
echo "ok: promtool check rules accepts deploy/prometheus/alerts.yml ($(grep -o 'SUCCESS: [0-9]* rules' "$work/rules.out"))"

# The Compose Prometheus's configurations (check_manifests.py checked that
# they scrape every daemon and name alerts.yml) parse, and the rule files
# they name, taken from the configuration's directory as Prometheus does,
# load: checked from elsewhere, so a path relative to the working
# directory would not resolve.
configs=("$repo"/deploy/prometheus/prometheus*.yml)
for config in "${configs[@]}"; do
  (cd "$work" && promtool check config "$config") >"$work/config.out" 2>&1 ||
    { echo "FAIL: promtool check config ${config#"$repo"/}: $(cat "$work/config.out")"; exit 1; }
  grep -q 'SUCCESS: [1-9][0-9]* rules found' "$work/config.out" ||
    { echo "FAIL: ${config#"$repo"/} loads no rules: $(cat "$work/config.out")"; exit 1; }
done
echo "ok: promtool check config accepts ${configs[*]#"$repo"/} and the rules they load"

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
