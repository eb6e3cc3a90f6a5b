#!/usr/bin/env bash
# The main job: installs what is missing, builds in Release, then trains a
# real model with one weightd daemon and 4 workers on this machine.
#
# Usage: scripts/demo.sh             4 workers average a 10-class MLP on
#                                    Fashion-MNIST; the last line is
#                                    "final test accuracy: 0.XXXX".
#        scripts/demo.sh --sharing   a 10-class and a 2-class model share
#                                    their hidden layer (see README).
# Any other arguments go to scripts/local_job.sh (e.g. -- --rounds=10).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
scripts/build.sh build/release
echo "demo: logs of the daemon and every worker go to build/demo/"
exec scripts/local_job.sh --bin build/release --logs build/demo "$@"
