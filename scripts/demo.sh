#!/usr/bin/env bash
# The main command: set up a fresh machine, then run the whole pipeline on a generated demo
# library with the embedded store. Runs land in the Dagster instance that `dagster dev` shows.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
exec .venv/bin/nomarr-pipeline demo "$@"
