#!/usr/bin/env bash
# TLS and mutual TLS with real processes and certificates made by openssl
# at test time (tests/testing/make_certs.sh):
#  1. configurations that cannot work stop weightd at start (exit 2);
#  2. plaintext without --insecure warns; the Unix socket gets its mode;
#  3. while two workers train over mutual TLS, every wrong client is
#     refused (plaintext, no client certificate, a certificate of another
#     CA or an expired one, a CA that did not sign the server's
#     certificate, a server of an unknown CA), the daemon logs the failed
#     handshakes, and the workers finish their training;
#  4. new certificate files are served to new connections without a
#     restart, an open connection keeps working, and unusable new files
#     are logged as an error;
#  5. a handshake that takes 2 s (tests/security/slow_proxy.py) connects;
#     one that never ends is waited for up to --connect_timeout; a
#     certificate of another name, or a plaintext server, is refused at
#     once.
# Usage: tls_test.sh BUILD_DIR
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: tls_test.sh BUILD_DIR}" tls
here=$(cd "$(dirname "$0")" && pwd)
probe=("/usr/bin/python3" "$here/grpc_probe.py")
certs=$work/certs
"$here/../testing/make_certs.sh" "$certs" >/dev/null 2>&1 ||
  fail "openssl could not make the test certificates"
ca=$certs/ca.crt
client=(--tls_ca="$ca" --tls_cert="$certs/client.crt" --tls_key="$certs/client.key")

# refused_at_start REGEX FLAGS...: weightd exits 2 printing REGEX.
refused_at_start() {
  local regex=$1 rc=0
  shift
  timeout 10 "$weightd" --listen=127.0.0.1:0 "$@" >"$work/start.log" 2>&1 || rc=$?
  [[ $rc -eq 2 ]] || fail "weightd $* exited $rc, not 2: $(cat "$work/start.log")"
  grep -qE "$regex" "$work/start.log" ||
    fail "weightd $* did not say '$regex': $(cat "$work/start.log")"
}

echo "--- 1. configurations that cannot work"
refused_at_start 'TLS needs both --tls_cert and --tls_key' --tls_cert="$certs/server.crt"
refused_at_start 'contradict each other' --insecure \
  --tls_cert="$certs/server.crt" --tls_key="$certs/server.key"
refused_at_start 'is not the private key of the certificate' \
  --tls_cert="$certs/server.crt" --tls_key="$certs/client.key"
refused_at_start 'the certificate expired at' \
  --tls_cert="$certs/server-expired.crt" --tls_key="$certs/server.key"
refused_at_start 'TLS client CA: .*/nope.crt: cannot be read: No such file' \
  --tls_cert="$certs/server.crt" --tls_key="$certs/server.key" \
  --tls_client_ca="$certs/nope.crt"
refused_at_start 'use an octal mode' --unix_socket_mode=0999

echo "--- 2. plaintext warns; the Unix socket's mode"
start_weightd "$work/plain.log" 127.0.0.1:0 --unix_socket="$work/a.sock"
grep -q 'serving plaintext on .*--insecure to say plaintext is intended' \
  "$work/plain.log" || fail "no warning about plaintext"
[[ $(stat -c %a "$work/a.sock") == 660 ]] ||
  fail "socket mode $(stat -c %a "$work/a.sock"), not the default 660"
stop_weightd
start_weightd "$work/insecure.log" 127.0.0.1:0 --insecure \
  --unix_socket="$work/b.sock" --unix_socket_mode=0600
grep -q 'serving plaintext' "$work/insecure.log" &&
  fail "warned about plaintext under --insecure"
[[ $(stat -c %a "$work/b.sock") == 600 ]] ||
  fail "socket mode $(stat -c %a "$work/b.sock"), not 600"
stop_weightd

echo "--- 3. mutual TLS: the workers train, every wrong client is refused"
# The server's files through a directory symlink, swapped for rotation.
mkdir -p "$work/tls/gen1" "$work/tls/gen2" "$work/tls/other" "$work/tls/bad"
cp "$certs/server.crt" "$work/tls/gen1/tls.crt"
cp "$certs/server.key" "$work/tls/gen1/tls.key"
cp "$certs/server2.crt" "$work/tls/gen2/tls.crt"
cp "$certs/server2.key" "$work/tls/gen2/tls.key"
cp "$certs/other-server.crt" "$work/tls/other/tls.crt"
cp "$certs/other-server.key" "$work/tls/other/tls.key"
cp "$certs/server2.crt" "$work/tls/bad/tls.crt"  # With another's key.
cp "$certs/server.key" "$work/tls/bad/tls.key"
ln -s gen1 "$work/tls/live"
swap() {  # swap DIR: the live files become DIR's, at once.
  ln -sfn "$1" "$work/tls/live.new" && mv -T "$work/tls/live.new" "$work/tls/live"
}
start_weightd "$work/server.log" 127.0.0.1:0 \
  --tls_cert="$work/tls/live/tls.crt" --tls_key="$work/tls/live/tls.key" \
  --tls_client_ca="$ca" --tls_reload_interval=1s
grep -q 'TLS: serving certificate CN=weightd .*admits clients with a certificate signed by CN=weightd test CA' \
  "$work/server.log" || fail "the daemon did not log what it serves"
rounds=100
for rank in 0 1; do
  "$worker" --server="$address" "${client[@]}" --workers=2 --rank=$rank \
    --rounds=$rounds --local_steps=100 $( ((rank == 0)) && echo --eval) \
    >"$work/worker.$rank" 2>&1 &
  worker_pids[$rank]=$!
  pids+=($!)
done
wait_for_line "$work/server.log" 'round closed tensor=hidden/w round=1 ' 60

# refused NAME REGEX COMMAND...: COMMAND fails, printing REGEX.
refused() {
  local name=$1 regex=$2
  shift 2
  if timeout 60 "$@" >"$work/refused.out" 2>&1; then
    fail "$name: was let in: $(cat "$work/refused.out")"
  fi
  grep -qE "$regex" "$work/refused.out" ||
    fail "$name: did not say '$regex': $(cat "$work/refused.out")"
  echo "refused: $name"
}
refused "weightctl in plaintext" 'UNAVAILABLE.*if it serves TLS, give --tls_ca' \
  "$weightctl" status --server="$address"
refused "weightctl without a client certificate" \
  'closed the connection at the TLS handshake: if it requires client certificates' \
  "$weightctl" status --server="$address" --tls_ca="$ca"
refused "weightctl trusting another CA" \
  'Tls handshake failed.*certificate verify failed; check that --tls_ca' \
  "$weightctl" status --server="$address" --tls_ca="$certs/other-ca.crt" \
  --tls_cert="$certs/client.crt" --tls_key="$certs/client.key"
refused "weightctl with its own expired certificate" \
  'TLS client certificate: .*client-expired.crt: the certificate expired' \
  "$weightctl" status --server="$address" --tls_ca="$ca" \
  --tls_cert="$certs/client-expired.crt" --tls_key="$certs/client.key"
refused "a worker in plaintext" \
  'cannot reach weightd .* if it serves TLS, give --tls_ca' \
  "$worker" --server="$address" --connect_timeout=3s --worker_id=intruder
refused "grpcio in plaintext" '^UNAVAILABLE' "${probe[@]}" "$address"
refused "grpcio with a client certificate of another CA" '^UNAVAILABLE' \
  "${probe[@]}" "$address" --ca="$ca" --cert="$certs/other-client.crt" \
  --key="$certs/other-client.key"
refused "grpcio with an expired client certificate" '^UNAVAILABLE' \
  "${probe[@]}" "$address" --ca="$ca" --cert="$certs/client-expired.crt" \
  --key="$certs/client.key"
refused "grpcio without a client certificate" '^UNAVAILABLE' \
  "${probe[@]}" "$address" --ca="$ca"
"${probe[@]}" "$address" --ca="$ca" --cert="$certs/client.crt" \
  --key="$certs/client.key" >"$work/probe.out" 2>&1 ||
  fail "grpcio with the right certificate was refused: $(cat "$work/probe.out")"
# The server's side of those handshakes (gRPC's own log lines).
for reason in 'wrong version number' 'peer did not return a certificate' \
  'certificate verify failed'; do
  grep -q "Handshake failed.*$reason" "$work/server.log" ||
    fail "the daemon did not log a failed handshake: $reason"
done
# A server whose certificate no CA of the client signed.
saved_pid=$server_pid saved_address=$address
start_weightd "$work/other.log" 127.0.0.1:0 \
  --tls_cert="$certs/other-server.crt" --tls_key="$certs/other-server.key"
refused "a worker facing a server of an unknown CA" \
  'the TLS handshake with weightd at .* failed: .*certificate verify failed' \
  "$worker" --server="$address" "${client[@]}" --worker_id=lost
stop_weightd
server_pid=$saved_pid address=$saved_address

# The refusals above happened while the job trained.
for pid in "${worker_pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || fail "a worker ended before the refusals did: make --rounds larger"
done
wait_workers "$work/worker"
accuracy=$(sed -n 's/^final test accuracy: //p' "$work/worker.0")
awk -v a="${accuracy:-0}" 'BEGIN { exit !(a >= 0.60) }' ||
  fail "final accuracy '${accuracy}' after training over TLS (need >= 0.60)"
closed=$(grep -c 'round closed tensor=hidden/w .*contributors=2 ' "$work/server.log")
[[ $closed -eq $rounds ]] ||
  fail "$closed rounds of hidden/w closed with both workers, not $rounds"
echo "trained over mutual TLS: accuracy $accuracy, $closed rounds with both workers"

echo "--- 4. rotation without a restart"
fingerprint() {  # The SHA-256 fingerprint new connections are served.
  openssl s_client -connect "$address" -CAfile "$ca" -cert "$certs/client.crt" \
    -key "$certs/client.key" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' |
    tr 'A-F' 'a-f'
}
want() { openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f'; }
[[ $(fingerprint) == $(want "$certs/server.crt") ]] || fail "not serving server.crt"
# served FILE: within 10 s new connections get FILE's certificate.
served() {
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(fingerprint) == $(want "$1") ]] && return 0
    sleep 0.1
  done
  fail "new connections did not get $(basename "$1") within 10 s"
}
swap gen2
served "$certs/server2.crt"
wait_for_line "$work/server.log" 'TLS: the files changed; new connections get certificate' 10
"$weightctl" health --server="$address" "${client[@]}" >/dev/null ||
  fail "a new connection after the rotation was refused"
# An open connection keeps the certificate it was made with: rotate to a
# certificate of a CA this client does not trust; its next calls, on the
# connection it has, still go through, while a new connection fails.
"${probe[@]}" "$address" --ca="$ca" --cert="$certs/client.crt" \
  --key="$certs/client.key" --calls=30 --pause=0.5 --ready="$work/probe.ready" \
  >"$work/open.out" 2>&1 &
open_pid=$!
pids+=($open_pid)
for ((i = 0; i < 100; i++)); do [[ -f $work/probe.ready ]] && break; sleep 0.05; done
[[ -f $work/probe.ready ]] || fail "the long-lived client did not connect"
swap other
served "$certs/other-server.crt"
refused "a new connection after a rotation to a CA it does not trust" \
  'certificate verify failed' "$weightctl" health --server="$address" "${client[@]}"
wait "$open_pid" || fail "an open connection failed after the rotation: $(cat "$work/open.out")"
# Unusable new files: an error line; back to good files, served again.
swap bad
wait_for_line "$work/server.log" \
  'TLS: the files changed and cannot be used: TLS certificate and key: .*is not the private key' 10
swap gen1
served "$certs/server.crt"
"$weightctl" health --server="$address" "${client[@]}" >/dev/null ||
  fail "the daemon does not serve after the files were fixed"
stop_weightd

echo "--- 5. a slow handshake is waited for, not taken for a bad certificate"
# Through a proxy that holds each connection 2 s before it forwards a byte
# (a loaded host, a slow link), a worker's TLS handshake takes 2 s: it must
# connect and train. Through one that never forwards, the worker must wait
# out --connect_timeout and say it could not reach the server, not blame
# the certificates at once.
start_weightd "$work/slow.log" 127.0.0.1:0 \
  --tls_cert="$certs/server.crt" --tls_key="$certs/server.key"
# proxy DELAY NAME: a slow_proxy.py in front of the daemon; sets proxied.
proxy() {
  /usr/bin/python3 "$here/slow_proxy.py" "${address##*:}" "$1" "$work/$2.port" &
  pids+=($!)
  for ((i = 0; i < 100; i++)); do [[ -s $work/$2.port ]] && break; sleep 0.05; done
  [[ -s $work/$2.port ]] || fail "slow_proxy.py did not start"
  proxied=127.0.0.1:$(cat "$work/$2.port")
}
proxy 2 slow
timeout 120 "$worker" --server="$proxied" --tls_ca="$ca" --workers=1 \
  --rounds=2 --local_steps=10 >"$work/slow.out" 2>&1 ||
  fail "a worker whose TLS handshake takes 2 s did not train: $(tail -n 3 "$work/slow.out")"
echo "a worker whose TLS handshake took 2 s connected and trained"
proxy 1000 silent
refused "a worker expecting another server name" \
  'the TLS handshake with weightd at .* failed: .*Hostname Verification Check failed.*--tls_server_name' \
  "$worker" --server="$address" --tls_ca="$ca" --tls_server_name=other.example \
  --workers=1 --connect_timeout=60s
refused "a worker facing a server that never answers its handshake" \
  'cannot reach weightd at .* within 6s \(--connect_timeout\)' \
  "$worker" --server="$proxied" --tls_ca="$ca" --workers=1 --connect_timeout=6s
stop_weightd
start_weightd "$work/plain2.log" 127.0.0.1:0 --insecure
refused "a worker speaking TLS to a plaintext server" \
  'the TLS handshake with weightd at .* failed: .*wrong version number; the server does not speak TLS on this port' \
  "$worker" --server="$address" --tls_ca="$ca" --workers=1 --connect_timeout=60s
stop_weightd
echo "PASS: TLS refusals, training over mutual TLS, rotation, slow handshakes"
