#!/usr/bin/env bash
# The deployment's default secrets for real, without Docker, a cluster or
# systemd (container_test.sh runs the Compose files with them):
#  1. scripts/dev_secrets.sh makes the CA, the server certificate, tokens
#     and policy; run again it keeps every file; a name the existing
#     certificate lacks is refused.
#  2. The systemd unit's settings (its Environment= lines, /etc/weightd
#     moved under a scratch directory) with the secrets installed as its
#     header says (a directory of mode 750 and files of mode 640, group of
#     the service): weightd runs as an unprivileged user of that group,
#     serves TLS and the policy; another user cannot read the key.
#  3. Clients as the deployments configure them: a worker trusting ca.crt
#     with worker.token trains, by the names Compose and Kubernetes dial
#     (weightd, weightd-1, weightd-0.weightd, weightd-7.weightd); without
#     a token it is refused (UNAUTHENTICATED), the reader may read but not
#     snapshot (PERMISSION_DENIED), the admin may snapshot.
# Usage: secrets_test.sh BUILD_DIR   (as root: it runs weightd as nobody)
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: secrets_test.sh BUILD_DIR}" secrets
repo=$(cd "$(dirname "$0")/../.." && pwd)
[[ $(id -u) -eq 0 ]] || { echo "SKIP: runs weightd as another user: needs root"; exit 77; }
chmod 711 "$work"  # nobody passes through to its own directories.
src=$work/src

echo "--- 1. scripts/dev_secrets.sh"
"$repo/scripts/dev_secrets.sh" "$src" >"$work/make.out" 2>&1 ||
  fail "dev_secrets.sh failed: $(cat "$work/make.out")"
for f in ca.crt ca.key tls.crt tls.key worker.token reader.token admin.token policy.json; do
  [[ -s $src/$f ]] || fail "dev_secrets.sh made no $f"
done
[[ $(stat -c %a "$src") == 700 ]] || fail "$src is mode $(stat -c %a "$src"), not 700"
before=$(cd "$src" && sha256sum ./*)
"$repo/scripts/dev_secrets.sh" "$src" >"$work/again.out" 2>&1 ||
  fail "dev_secrets.sh failed the second time: $(cat "$work/again.out")"
[[ $(cd "$src" && sha256sum ./*) == "$before" ]] || fail "a second run changed the files"
grep -q 'already holds every file; kept them' "$work/again.out" ||
  fail "a second run did not say it kept the files: $(cat "$work/again.out")"
if "$repo/scripts/dev_secrets.sh" "$src" weightd.example.org >"$work/name.out" 2>&1; then
  fail "a name the certificate lacks was accepted"
fi
grep -q 'tls.crt does not name weightd.example.org' "$work/name.out" ||
  fail "a missing name was not named: $(cat "$work/name.out")"
grep -q "$(cat "$src/worker.token")" "$src/policy.json" && fail "policy.json holds a token in clear"
echo "ok: dev_secrets.sh made the files, kept them when run again, refused a missing name"

echo "--- 2. the systemd unit's settings, as an unprivileged user"
unit=$repo/deploy/systemd/weightd.service
etc=$work/etc/weightd
state=$work/state
# As the unit's header installs them, with nogroup as the service's group.
install -d -m 750 -g nogroup "$etc/secrets"
install -m 640 -g nogroup "$src"/{tls.crt,tls.key,policy.json} "$etc/secrets/"
install -d -m 700 -o nobody "$state"
environment=()
while IFS= read -r line; do
  environment+=("${line//\/etc\/weightd/$etc}")
done < <(sed -n 's/^Environment=//p' "$unit")
((${#environment[@]} >= 4)) || fail "the unit sets ${#environment[@]} variables"
printf '%s\n' "${environment[@]}" | grep -q "^WEIGHTD_TLS_CERT=$etc/secrets/tls.crt$" ||
  fail "the unit does not serve /etc/weightd/secrets/tls.crt"
printf '%s\n' "${environment[@]}" | grep -q "^WEIGHTD_AUTH_POLICY=$etc/secrets/policy.json$" ||
  fail "the unit gives no --auth_policy from /etc/weightd/secrets"
# /etc/weightd/weightd.env's place: this machine's address and state.
start_daemon "$state/ready" 10 "$work/weightd.log" \
  env "${environment[@]}" WEIGHTD_LISTEN=127.0.0.1:0 \
  WEIGHTD_SNAPSHOT_DIR="$state/snapshots" WEIGHTD_READY_FILE="$state/ready" \
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$weightd"
grep -q 'TLS: serving certificate CN=weightd (DNS:weightd, DNS:weightd-0, DNS:weightd-1, DNS:weightd-0.weightd, .*DNS:weightd-7.weightd, DNS:localhost, IP:127.0.0.1)' \
  "$work/weightd.log" || fail "weightd does not serve the development certificate"
grep -q 'auth: policy .* in force: 3 principal(s)' "$work/weightd.log" ||
  fail "weightd did not take the policy"
if setpriv --reuid=65000 --regid=65000 --clear-groups cat "$etc/secrets/tls.key" >/dev/null 2>&1; then
  fail "a user outside the service's group can read the key"
fi
echo "ok: weightd serves TLS and the policy from the protected directory, as nobody"

echo "--- 3. clients as the deployments configure them"
port=${address##*:}
ca=(--tls_ca="$src/ca.crt")
for name in weightd weightd-1 weightd-0.weightd weightd-7.weightd; do
  "$weightctl" health --server="127.0.0.1:$port" "${ca[@]}" --tls_server_name=$name \
    >"$work/health.out" 2>&1 || fail "health as $name: $(cat "$work/health.out")"
done
grep -q 'grpc: .*server name' "$work/weightd.log" &&
  fail "weightd warned about a server name: $(grep 'grpc: ' "$work/weightd.log")"
echo "ok: the certificate serves weightd, weightd-1, weightd-0.weightd and weightd-7.weightd"
timeout 120 "$worker" --server="localhost:$port" "${ca[@]}" \
  --token_file="$src/worker.token" --workers=1 --rounds=2 --local_steps=10 \
  >"$work/worker.out" 2>&1 || fail "a worker with worker.token: $(tail -n 3 "$work/worker.out")"
grep -q 'worker fashion10-.* joined from ' "$work/weightd.log" || fail "the worker's join is not logged"
echo "ok: a worker with ca.crt and worker.token trained"
# expect CODE TOKEN COMMAND: weightctl COMMAND with TOKEN ('' for none).
expect() {
  local code=$1 token=$2 rc=0
  shift 2
  local with=()
  [[ -n $token ]] && with=(--token_file="$src/$token")
  "$weightctl" "$@" --server="127.0.0.1:$port" "${ca[@]}" "${with[@]}" \
    >"$work/ctl.out" 2>&1 || rc=$?
  if [[ $code == OK ]]; then
    [[ $rc -eq 0 ]] || fail "weightctl $* with ${token:-no token}: $(cat "$work/ctl.out")"
  else
    grep -q "$code" "$work/ctl.out" ||
      fail "weightctl $* with ${token:-no token} did not get $code: $(cat "$work/ctl.out")"
  fi
  echo "ok: weightctl $* with ${token:-no token}: $code"
}
expect UNAUTHENTICATED '' status
expect OK reader.token status
expect PERMISSION_DENIED reader.token snapshot
expect PERMISSION_DENIED worker.token snapshot
expect OK admin.token snapshot
stop_weightd
echo "PASS: the development secrets, the systemd unit's settings and the clients' work together"
