#!/usr/bin/env bash
# The demo's per-round figures (scripts/plot_rounds.py, as scripts/demo.sh
# runs it): from the log of a real short job's evaluating worker, rounds.csv
# must hold one row per round with exactly the numbers the log printed, and
# rounds.png must be a PNG with the data drawn on it. The Python examples'
# round lines (fedavg_cnn.py, cnn_rnn_share.py: one series per model) must
# parse too, and a log without round lines must fail with one line and
# write nothing.
# Usage: round_figures_test.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: round_figures_test.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/weightd-figures.XXXXXX")
trap 'rm -rf "$work"' EXIT
python=/usr/bin/python3
plot=$root/scripts/plot_rounds.py

fail() {
  echo "FAIL: $*"
  exit 1
}

# check_png FILE: a PNG of plausible size with the first line's colour
# (matplotlib's C0, #1f77b4) on a good number of its pixels.
check_png() {
  "$python" - "$1" <<'EOF' || fail "$1 is not the chart it should be"
import struct, sys
import matplotlib.image
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
assert data[12:16] == b"IHDR", "no IHDR chunk first"
width, height = struct.unpack(">II", data[16:24])
assert 400 <= width <= 2000 and 300 <= height <= 2000, (width, height)
assert len(data) > 10000, f"{len(data)} bytes"
pixels = matplotlib.image.imread(sys.argv[1])[..., :3]
c0 = (0x1f / 255, 0x77 / 255, 0xb4 / 255)
line = (abs(pixels - c0).max(axis=2) < 0.05).sum()
assert line > 200, f"only {line} pixels of the data's colour"
print(f"{sys.argv[1]}: PNG {width}x{height}, {len(data)} bytes, "
      f"{line} pixels of the first line's colour")
EOF
}

# 1. A real job: worker 0's log, as the demo plots it.
rounds=3
timeout 300 "$root/scripts/local_job.sh" --bin "$build" --logs "$work/job" \
  --workers 2 -- --rounds=$rounds --local_steps=20 >"$work/out.txt" 2>&1 || {
  cat "$work/out.txt"
  fail "the job failed"
}
log=$work/job/worker-0.log
cat "$log"
"$python" "$plot" --out "$work/fig" --title "round_figures_test" "$log" ||
  fail "plot_rounds.py failed on $log"
csv=$work/fig/rounds.csv
cat "$csv"
header=$(head -n 1 "$csv")
[[ $header == round,train_loss,test_acc,bytes,secs ]] ||
  fail "rounds.csv header is '$header'"
# round R  train_loss L  test_acc A  bytes B  secs S -> R,L,A,B,S
expected=$(awk '/^round / { print $2 "," $4 "," $6 "," $8 "," $10 }' "$log")
[[ $(grep -c '^round ' "$log") -eq $rounds ]] ||
  fail "worker 0 printed $(grep -c '^round ' "$log") round lines, not $rounds"
[[ $(tail -n +2 "$csv") == "$expected" ]] ||
  fail "rounds.csv rows are not the log's round lines; expected:"$'\n'"$expected"
check_png "$work/fig/rounds.png"

# 2. The Python examples' round lines, as they print them.
cat >"$work/fedavg.log" <<'EOF'
round   1  train_loss 1.2345  test_acc(2000) 0.6120  secs 10.3
round   2  train_loss 0.7001  test_acc(2000) 0.7415  secs 20.9
final test accuracy: 0.7502
EOF
cat >"$work/cnn_rnn.log" <<'EOF'
cnn       round   1  train_loss 1.5000  test_acc(2000) 0.5505  secs 3.0
gru       round   1  train_loss 1.9000  test_acc(2000) 0.3010  secs 3.5
cnn       round   2  train_loss 0.9000  test_acc(2000) 0.7000  secs 6.1
gru       round   2  train_loss 1.4000  test_acc(2000) 0.4500  secs 7.0
cnn       final test accuracy: 0.7100
gru       final test accuracy: 0.4600
EOF
cat >"$work/cnn-alone.log" <<'EOF'
cnn alone round   1  train_loss 1.6000  test_acc(2000) 0.5000  secs 2.9
cnn alone final test accuracy: 0.5100
EOF
"$python" "$plot" --out "$work/fedavg" "$work/fedavg.log" ||
  fail "plot_rounds.py failed on fedavg_cnn.py's lines"
[[ $(cat "$work/fedavg/rounds.csv") == "round,train_loss,test_acc_2000,secs
1,1.2345,0.6120,10.3
2,0.7001,0.7415,20.9" ]] || fail "fedavg rounds.csv is: $(cat "$work/fedavg/rounds.csv")"
check_png "$work/fedavg/rounds.png"
"$python" "$plot" --out "$work/cnn_rnn" "$work/cnn_rnn.log" "$work/cnn-alone.log" ||
  fail "plot_rounds.py failed on cnn_rnn_share.py's lines"
[[ $(cat "$work/cnn_rnn/rounds.csv") == "model,round,train_loss,test_acc_2000,secs
cnn,1,1.5000,0.5505,3.0
gru,1,1.9000,0.3010,3.5
cnn,2,0.9000,0.7000,6.1
gru,2,1.4000,0.4500,7.0
cnn alone,1,1.6000,0.5000,2.9" ]] || fail "cnn_rnn rounds.csv is: $(cat "$work/cnn_rnn/rounds.csv")"
check_png "$work/cnn_rnn/rounds.png"

# 3. The same real log without its round lines: exit 1, one line that says
# so, nothing written.
grep -v '^round ' "$log" >"$work/no-rounds.log"
status=0
"$python" "$plot" --out "$work/none" "$work/no-rounds.log" 2>"$work/err.txt" || status=$?
cat "$work/err.txt"
[[ $status -ne 0 ]] || fail "plot_rounds.py succeeded on a log without round lines"
[[ $(wc -l <"$work/err.txt") -eq 1 ]] && grep -q 'no per-round lines' "$work/err.txt" ||
  fail "plot_rounds.py did not say in one line that there are no round lines"
[[ ! -e $work/none/rounds.csv && ! -e $work/none/rounds.png ]] ||
  fail "plot_rounds.py wrote figures without round lines"
echo "PASS: $rounds rounds from a real job in rounds.csv as the log printed them;" \
  "the Python examples' lines parse; no round lines: exit $status, nothing written"
