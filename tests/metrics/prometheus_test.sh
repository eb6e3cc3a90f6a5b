#!/usr/bin/env bash
# weightd's /metrics with a real Prometheus (Debian's prometheus package):
#  1. promtool check metrics accepts what the daemon serves, before and
#     after training;
#  2. a Prometheus server scrapes the daemon every second while 2 workers
#     train 20 rounds; then its HTTP API must report
#     weightd_rounds_closed_total summed over its labels equal to the
#     rounds_closed that GetStatus (weightctl status) reports, the
#     round-duration histogram's count equal to it too, and 2 joins;
#  3. deploy/prometheus/alerts.yml loads into that server (promtool check
#     rules is in tests/deploy/deploy_test.sh).
# Usage: prometheus_test.sh BUILD_DIR
source "$(dirname "$0")/../fault/lib.sh"
fault_init "${1:?usage: prometheus_test.sh BUILD_DIR}" metrics
repo=$(cd "$(dirname "$0")/../.." && pwd)
for tool in prometheus promtool; do
  command -v $tool >/dev/null ||
    { echo "SKIP: no $tool (scripts/install_deps.sh test)"; exit 77; }
done

# get URL: the body, or fail.
get() {
  /usr/bin/python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end="")' "$1"
}
# query PROMQL: the first value of an instant query ("" if none).
query() {
  /usr/bin/python3 - "$prom" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = "http://%s/api/v1/query?query=%s" % (sys.argv[1], urllib.parse.quote(sys.argv[2]))
body = json.load(urllib.request.urlopen(url, timeout=5))
result = body["data"]["result"]
print(result[0]["value"][1] if result else "")
PY
}

echo "--- 1. promtool check metrics"
start_weightd "$work/weightd.log" 127.0.0.1:0 --insecure --metrics_listen=127.0.0.1:0
metrics=$(sed -n 's|.*metrics: serving http://\([^/]*\)/metrics.*|\1|p' "$work/weightd.log")
[[ -n $metrics ]] || fail "weightd did not log where it serves metrics"
get "http://$metrics/metrics" >"$work/before.txt" || fail "GET /metrics failed"
promtool check metrics <"$work/before.txt" >"$work/promtool.out" 2>&1 ||
  fail "promtool check metrics: $(cat "$work/promtool.out")"
echo "ok: promtool accepts /metrics of an idle daemon ($(grep -c '^weightd_' "$work/before.txt") weightd samples)"

echo "--- 2. a Prometheus server scrapes a training run"
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prom=127.0.0.1:$port
cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["$repo/deploy/prometheus/alerts.yml"]
scrape_configs:
  - job_name: weightd
    static_configs: [{targets: ["$metrics"]}]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="$prom" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 300; i++)); do
  [[ $(query 'up{job="weightd"}' 2>/dev/null) == 1 ]] && break
  sleep 0.1
done
[[ $(query 'up{job="weightd"}' 2>/dev/null) == 1 ]] ||
  fail "Prometheus did not scrape weightd within 30 s: $(tail -n 5 "$work/prometheus.log")"
echo "ok: Prometheus scrapes weightd (up == 1)"
worker_pids=()
for rank in 0 1; do
  "$worker" --server="$address" --workers=2 --rank=$rank --rounds=20 \
    --local_steps=20 >"$work/worker.$rank" 2>&1 &
  worker_pids[$rank]=$!
  pids+=($!)
done
wait_workers "$work/worker"
"$weightctl" status --server="$address" >"$work/status.out" 2>&1 ||
  fail "weightctl status: $(cat "$work/status.out")"
closed=$(sed -n 's/.*rounds_closed \([0-9]*\).*/\1/p' "$work/status.out")
# The demo model's 5 tensors, 20 rounds each.
[[ $closed == 100 ]] || fail "GetStatus reports $closed rounds closed, not 100"
# Prometheus scrapes each second: wait for a scrape after the last round
# and the last push (a push is counted when its call ends on the server,
# which may be after its worker has its answer and after its round closed).
# One push per worker and round (PushPull, or PushSegment through shared
# memory), each applied once.
for ((i = 0; i < 100; i++)); do
  scraped=$(query 'sum(weightd_rounds_closed_total)')
  applied=$(query 'sum(weightd_pushes_total{outcome="applied"})')
  [[ $scraped == "$closed" && $applied == 40 ]] && break
  sleep 0.1
done
[[ $scraped == "$closed" ]] ||
  fail "Prometheus has sum(weightd_rounds_closed_total) = '$scraped', GetStatus $closed"
durations=$(query 'sum(weightd_round_duration_seconds_count)')
[[ $durations == "$closed" ]] ||
  fail "the round-duration histogram counted $durations rounds, not $closed"
joins=$(query 'weightd_joins_total')
[[ $joins == 2 ]] || fail "weightd_joins_total is '$joins', not 2"
[[ $applied == 40 ]] || fail "weightd_pushes_total counts $applied applied pushes, not 40"
join_calls=$(query 'sum(weightd_call_duration_seconds_count{method="Join",code="OK"})')
[[ $join_calls == 2 ]] || fail "the call histogram counts $join_calls Joins, not 2"
echo "ok: Prometheus: sum(weightd_rounds_closed_total) $scraped == GetStatus rounds_closed $closed;" \
  "round-duration histogram count $durations; joins $joins; $applied pushes applied; $join_calls Join calls"
get "http://$metrics/metrics" >"$work/after.txt" || fail "GET /metrics failed"
promtool check metrics <"$work/after.txt" >"$work/promtool.out" 2>&1 ||
  fail "promtool check metrics after training: $(cat "$work/promtool.out")"
echo "ok: promtool accepts /metrics after training"

echo "--- 3. the alert rules load"
# Every rule loaded and was evaluated without error (health "ok").
rules=$(/usr/bin/python3 - "$prom" <<'PY'
import json, sys, time, urllib.request
for _ in range(50):  # Evaluated each second: allow a few.
    body = json.load(urllib.request.urlopen("http://%s/api/v1/rules" % sys.argv[1], timeout=5))
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    if rules and all(r.get("health") == "ok" for r in rules):
        break
    time.sleep(0.1)
print(len(rules), sum(r.get("health") == "ok" for r in rules))
PY
)
read -r total healthy <<<"$rules"
want=$(grep -c '^      - alert:' "$repo/deploy/prometheus/alerts.yml")
[[ $total == "$want" && $healthy == "$want" ]] ||
  fail "Prometheus loaded $total rule(s), $healthy healthy, of the $want in deploy/prometheus/alerts.yml"
echo "ok: Prometheus loaded and evaluated all $total alert rules of deploy/prometheus/alerts.yml"
stop_weightd
echo "PASS: /metrics passes promtool; Prometheus scraped $scraped rounds, the count GetStatus reports"
