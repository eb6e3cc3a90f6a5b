#!/usr/bin/env bash
# The secrets a development deployment of weightd runs with, made with
# openssl into DIR (deploy/README.md, "TLS and tokens"):
#   ca.crt                 the development CA: every client trusts it
#   ca.key                 its private key: keep it away from servers
#   tls.crt tls.key        the server's certificate and key, for the names
#                          the workers dial (below)
#   worker.token           bearer token of principal "workers" (WORKER role,
#                          every tensor and worker id)
#   reader.token           of principal "eval" (READER: Pull, GetStatus)
#   admin.token            of principal "ops" (ADMIN: everything)
#   policy.json            the --auth_policy naming those three, by the
#                          tokens' SHA-256 only
# The server certificate names weightd, weightd-0 and weightd-1 (the
# Compose services), weightd-0.weightd ... weightd-7.weightd (the pods of
# Kubernetes' headless service, up to 8 shards; not a wildcard: a
# certificate for *.weightd, a single-label domain, makes gRPC servers warn
# at every handshake), localhost and 127.0.0.1, plus each NAME given (a DNS
# name, or an IP address). It is valid for 365 days.
#
# Idempotent: files that exist are kept (a deployment's tokens do not
# change under it), and checked: the certificate must be the CA's, unexpired
# and name every NAME; policy.json must name every token's SHA-256. What
# cannot be kept is said, with what to delete. A new CA gets a new server
# certificate, a new token a new policy.json. DIR is made mode 0700 and the
# files made in it 0644 (ca.key 0600): a container's unprivileged user
# reads its own bind-mounted copy, nobody else on the host gets into DIR.
# These modes are for development; beyond it, use your own CA and secret
# store (docs/security.md, hardening checklist).
#
# Usage: scripts/dev_secrets.sh DIR [NAME...]
#   e.g. scripts/dev_secrets.sh deploy/secrets
set -euo pipefail
dir=${1:?usage: dev_secrets.sh DIR [NAME...] (scripts/dev_secrets.sh says what it makes)}
shift
command -v openssl >/dev/null ||
  { echo "dev_secrets.sh: needs openssl (apt-get install openssl)" >&2; exit 1; }
die() { echo "dev_secrets.sh: $*" >&2; exit 1; }

hosts=(weightd weightd-0 weightd-1)
for shard in 0 1 2 3 4 5 6 7; do hosts+=("weightd-$shard.weightd"); done
hosts+=(localhost)
ips=(127.0.0.1)
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then ips+=("$name"); else hosts+=("$name"); fi
done

mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
made=()

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [[ ! -f ca.crt ]]; then
  key ca.key
  openssl req -x509 -new -key ca.key -out ca.crt -days 3650 \
    -subj "/CN=weightd development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
  made+=(ca.crt ca.key)
  rm -f tls.crt tls.key  # The old CA's: a new one is made below.
fi
if [[ -f tls.crt ]]; then
  openssl verify -CAfile ca.crt tls.crt >/dev/null 2>&1 ||
    die "$dir/tls.crt is not signed by $dir/ca.crt (or has expired); delete tls.crt and tls.key to make a new one"
  for host in "${hosts[@]}"; do
    openssl x509 -in tls.crt -noout -checkhost "$host" | grep -q 'does match' ||
      die "$dir/tls.crt does not name $host; delete tls.crt and tls.key to make one that does"
  done
  for ip in "${ips[@]}"; do
    openssl x509 -in tls.crt -noout -checkip "$ip" | grep -q 'does match' ||
      die "$dir/tls.crt does not name $ip; delete tls.crt and tls.key to make one that does"
  done
  openssl x509 -in tls.crt -noout -checkend $((30 * 86400)) >/dev/null ||
    echo "dev_secrets.sh: warning: $dir/tls.crt expires within 30 days; delete tls.crt and tls.key to make a new one" >&2
else
  [[ -f ca.key ]] || die "$dir/ca.key is missing: cannot sign a new tls.crt with $dir/ca.crt"
  key tls.key
  san=$(printf 'DNS:%s,' "${hosts[@]}")$(printf 'IP:%s,' "${ips[@]}")
  printf '%s\n' "subjectAltName=${san%,}" "extendedKeyUsage=serverAuth" >tls.ext
  openssl req -new -key tls.key -subj "/CN=weightd" -out tls.csr
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out tls.crt -days 365 -extfile tls.ext 2>/dev/null
  rm -f tls.csr tls.ext ca.srl
  made+=(tls.crt tls.key)
fi
for who in worker reader admin; do
  if [[ ! -f $who.token ]]; then
    openssl rand -hex 32 >"$who.token"
    made+=("$who.token")
    rm -f policy.json  # It names the old token: made again below.
  fi
done
sha() { tr -d '[:space:]' <"$1" | sha256sum | cut -c1-64; }
if [[ ! -f policy.json ]]; then
  cat >policy.json <<EOF
{"principals": [
  {"name": "workers", "role": "WORKER", "tensors": ["*"], "worker_ids": ["*"],
   "token_sha256": ["$(sha worker.token)"]},
  {"name": "eval", "role": "READER", "tensors": ["*"],
   "token_sha256": ["$(sha reader.token)"]},
  {"name": "ops", "role": "ADMIN",
   "token_sha256": ["$(sha admin.token)"]}
]}
EOF
  made+=(policy.json)
fi
for who in worker reader admin; do
  grep -q "$(sha "$who.token")" policy.json ||
    die "$dir/policy.json does not name the SHA-256 of $who.token; delete policy.json to make it again"
done
for f in "${made[@]}"; do chmod 644 "$f"; done
[[ ! -f ca.key ]] || chmod 600 ca.key

if ((${#made[@]} == 0)); then
  echo "dev_secrets.sh: $dir already holds every file; kept them (delete $dir for new ones)"
else
  echo "dev_secrets.sh: made ${made[*]} in $dir"
fi
echo "dev_secrets.sh: the server certificate names" \
  "$(openssl x509 -in tls.crt -noout -ext subjectAltName | tail -n +2 | tr -d ' ')," \
  "valid until $(openssl x509 -in tls.crt -noout -enddate | cut -d= -f2)"
