#!/usr/bin/env bash
# Makes the certificates the TLS tests use, with openssl, into DIR:
#   ca.crt ca.key                 the test CA ("weightd test CA")
#   server.crt server.key         CN=weightd, SAN DNS:localhost, IP:127.0.0.1
#   server-expired.crt            the same key, expired yesterday
#   server2.crt server2.key       a second server certificate (rotation)
#   client.crt client.key         CN=worker-a, for client authentication
#   client-expired.crt            the same key, expired yesterday
#   other-ca.crt other-ca.key     another CA ("other CA")
#   other-server.crt/.key         a server certificate of the other CA
#   other-client.crt/.key         CN=worker-a again, signed by the other CA
# Usage: tests/testing/make_certs.sh DIR   (EC P-256 keys: fast to make)
set -euo pipefail
dir=${1:?usage: make_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # NAME SUBJECT
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.crt" -days 30 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
}
# NAME CA CN DAYS KIND(server|client) [KEY]: a certificate signed by CA.
cert() {
  local name=$1 ca=$2 cn=$3 days=$4 kind=$5 keyfile=${6:-$1.key}
  [[ -f $keyfile ]] || key "$keyfile"
  local ext="$name.ext"
  if [[ $kind == server ]]; then
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      "extendedKeyUsage=serverAuth" >"$ext"
  else
    printf '%s\n' "subjectAltName=DNS:$cn" "extendedKeyUsage=clientAuth" >"$ext"
  fi
  openssl req -new -key "$keyfile" -subj "/CN=$cn" -out "$name.csr"
  # -days -1: not after yesterday, an expired certificate.
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" \
    -CAcreateserial -out "$name.crt" -days "$days" -extfile "$ext" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

ca ca "weightd test CA"
ca other-ca "other CA"
cert server ca weightd 30 server
cert server-expired ca weightd -1 server server.key
cert server2 ca weightd 30 server
cert client ca worker-a 30 client
cert client-expired ca worker-a -1 client client.key
cert other-server other-ca weightd 30 server
cert other-client other-ca worker-a 30 client
chmod 600 ./*.key
