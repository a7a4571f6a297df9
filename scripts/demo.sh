#!/usr/bin/env bash
# The main command: set up a fresh machine, then run the whole pipeline on a generated demo
# library with the embedded store. It writes its settings (and DAGSTER_HOME) into .env here, so
# `nomarr-pipeline status` and the `dagster dev` line it prints see the demo's data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/nomarr-pipeline demo "$@"
