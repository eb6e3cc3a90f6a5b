#!/usr/bin/env bash
# The main job: installs what is missing, builds in Release, then trains a
# real model with one weightd daemon and 4 workers on this machine.
#
# Usage: scripts/demo.sh             4 workers average a 10-class MLP on
#                                    Fashion-MNIST; worker 0 ends with
#                                    "final test accuracy: 0.XXXX".
#        scripts/demo.sh --sharing   a 10-class and a 2-class model share
#                                    their hidden layer (see README).
#        scripts/demo.sh --torch     4 Python workers average a PyTorch CNN
#                                    (examples/python/fedavg_cnn.py); worker
#                                    0 ends with "final test accuracy: ...".
#        scripts/demo.sh --cnn-rnn   a PyTorch CNN and a GRU share a row
#                                    embedding and a head
#                                    (examples/python/cnn_rnn_share.py).
#        scripts/demo.sh --experiment NAME [ARGS]
#                                    one of issue 17's experiments (noniid,
#                                    attack, straggler, mixed) at a reduced
#                                    size (--size=small, 1 repeat) through
#                                    bench/experiments.py, which prints its
#                                    table; ARGS go to it (e.g. --repeats 2,
#                                    --size=full). Logs and the table:
#                                    build/demo-experiment-NAME/.
# Any other arguments go to scripts/local_job.sh (e.g. -- --rounds=10), or
# with --torch and --cnn-rnn to the Python example (e.g. --rounds=10).
# Then the evaluating worker's figures per round go to rounds.csv and a
# chart of test accuracy and train loss to rounds.png, beside the logs
# (scripts/plot_rounds.py; --sharing: the 10-class model's, --cnn-rnn: both
# models', shared and alone); the last two lines are
#   demo: per-round figures: build/demo/rounds.csv
#   demo: chart: build/demo/rounds.png
set -euo pipefail
cd "$(dirname "$0")/.."

example=""
case "${1:-}" in
  --torch) example=fedavg_cnn ;;
  --cnn-rnn) example=cnn_rnn_share ;;
  --experiment|--experiment=*)
    if [[ $1 == --experiment=* ]]; then
      name=${1#*=}
      shift
    else
      name=${2:-}
      shift $(($# < 2 ? $# : 2))
    fi
    case $name in
      noniid|attack|straggler|mixed) ;;
      *)
        echo "demo: --experiment needs one of noniid, attack, straggler," \
          "mixed (got '$name')" >&2
        exit 2
        ;;
    esac
    scripts/install_deps.sh build grpc test demo
    scripts/build.sh build/release
    # Debian's interpreter, as for the figures. Later ARGS win (--size).
    exec /usr/bin/python3 bench/experiments.py --build build/release \
      --size=small --repeats=1 --out "build/demo-experiment-$name" \
      "$name" "$@"
    ;;
esac

# Writes the per-round figures of the LOGs to DIR/rounds.csv and
# DIR/rounds.png, and says where they are.
# Usage: figures DIR TITLE LOG...
figures() {
  local dir=$1 title=$2
  shift 2
  /usr/bin/python3 scripts/plot_rounds.py --out "$dir" --title "$title" "$@"
  echo "demo: per-round figures: $dir/rounds.csv"
  echo "demo: chart: $dir/rounds.png"
}

if [[ -z $example ]]; then
  scripts/install_deps.sh build grpc test demo container
  scripts/build.sh build/release
  logs=build/demo
  sharing=0
  workers=4
  args=("$@")  # For the chart's title: what local_job.sh will run.
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --sharing) sharing=1 ;;
      --workers) workers=${args[i + 1]:-$workers} ;;
      --workers=*) workers=${args[i]#*=} ;;
      --) break ;;
    esac
  done
  echo "demo: logs of the daemon and every worker go to $logs/"
  # No figures of an earlier run beside this run's logs.
  rm -f "$logs/rounds.csv" "$logs/rounds.png"
  scripts/local_job.sh --bin build/release --logs "$logs" "$@"
  if [[ $sharing -eq 0 ]]; then
    figures "$logs" "weightd demo: $workers workers average an MLP on Fashion-MNIST (worker 0)" \
      "$logs/worker-0.log"
  else
    figures "$logs" "weightd demo --sharing: the 10-class model, hidden layer shared (worker 0)" \
      "$logs/fashion10-0.log"
  fi
  exit 0
fi

shift
scripts/install_deps.sh build grpc test demo torch
# The Python package's native part is built into build/release/python.
scripts/build.sh build/release -DWEIGHTD_BUILD_PYTHON=ON
logs=build/demo-$example
echo "demo: the daemon's log and the workers' results go to $logs/"
mkdir -p "$logs"
rm -f "$logs/rounds.csv" "$logs/rounds.png"
# Debian's interpreter: python3-torch and python3-numpy belong to it. Its
# output (worker 0's, or both models' while they share) is kept for the
# figures.
/usr/bin/python3 "examples/python/$example.py" --build build/release \
  --logs "$logs" "$@" | tee -i "$logs/output.log"
if [[ $example == fedavg_cnn ]]; then
  figures "$logs" "weightd demo --torch: workers average a PyTorch CNN (worker 0)" \
    "$logs/output.log"
else
  # The alone phase's round lines are in logs of their own.
  figures "$logs" "weightd demo --cnn-rnn: a CNN and a GRU sharing rows + head, and alone" \
    "$logs/output.log" "$logs"/{cnn,gru}-alone.log
fi
