#!/usr/bin/env bash
# The README's benchmark command: set up the environment (as .ci/run does), then `python -m bench` with any flags.
#   bash bench/run.sh            # defaults: GPU sweep on a GPU machine, small CPU sweep otherwise
#   bash bench/run.sh --quick    # tiny smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/setup.sh
python -m bench "$@"
