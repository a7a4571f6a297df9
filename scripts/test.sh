#!/usr/bin/env bash
# The test command: set up everything on a fresh machine, then lint, check the Dagster
# definitions and run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NOMARR_SETUP_EXTRAS="postgresql chromium ${NOMARR_SETUP_EXTRAS:-}" NOMARR_SETUP_PY_EXTRAS=dev,postgres,dask,k8s \
  source scripts/setup.sh

# shellcheck disable=SC1091
source .venv/bin/activate
echo "== ruff"
.venv/bin/ruff check .
echo "== dg check defs"
.venv/bin/dg check defs
echo "== pytest"
# One test process per core unless the caller chooses (-n 0 runs them all in this process).
parallel=(-n auto)
for arg in "$@"; do
  case "$arg" in -n|-n*|--numprocesses*) parallel=() ;; esac
done
.venv/bin/pytest -p no:cacheprovider "${parallel[@]}" "$@"
