#!/usr/bin/env bash
# The main job: installs what is missing, builds in Release, then trains a
# real model with one weightd daemon and 4 workers on this machine.
#
# Usage: scripts/demo.sh             4 workers average a 10-class MLP on
#                                    Fashion-MNIST; the last line is
#                                    "final test accuracy: 0.XXXX".
#        scripts/demo.sh --sharing   a 10-class and a 2-class model share
#                                    their hidden layer (see README).
#        scripts/demo.sh --torch     4 Python workers average a PyTorch CNN
#                                    (examples/python/fedavg_cnn.py); the
#                                    last line is "final test accuracy: ...".
#        scripts/demo.sh --cnn-rnn   a PyTorch CNN and a GRU share a row
#                                    embedding and a head
#                                    (examples/python/cnn_rnn_share.py).
# Any other arguments go to scripts/local_job.sh (e.g. -- --rounds=10), or
# with --torch and --cnn-rnn to the Python example (e.g. --rounds=10).
set -euo pipefail
cd "$(dirname "$0")/.."

example=""
case "${1:-}" in
  --torch) example=fedavg_cnn ;;
  --cnn-rnn) example=cnn_rnn_share ;;
esac

if [[ -z $example ]]; then
  scripts/install_deps.sh build grpc test demo container
  scripts/build.sh build/release
  echo "demo: logs of the daemon and every worker go to build/demo/"
  exec scripts/local_job.sh --bin build/release --logs build/demo "$@"
fi

shift
scripts/install_deps.sh build grpc test demo torch
# The Python package's native part is built into build/release/python.
scripts/build.sh build/release -DWEIGHTD_BUILD_PYTHON=ON
echo "demo: the daemon's log and the workers' results go to build/demo-$example/"
# Debian's interpreter: python3-torch and python3-numpy belong to it.
exec /usr/bin/python3 "examples/python/$example.py" --build build/release \
  --logs "build/demo-$example" "$@"
