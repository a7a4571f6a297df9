#!/usr/bin/env bash
# The test command: set up everything on a fresh machine, then lint, check the Dagster
# definitions and run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NOMARR_SETUP_EXTRAS="postgresql chromium ${NOMARR_SETUP_EXTRAS:-}" NOMARR_SETUP_PY_EXTRAS=dev,postgres,dask,k8s,docker \
  source scripts/setup.sh

# shellcheck disable=SC1091
source .venv/bin/activate
echo "== uv lock --check"
if ! UV_PYTHON_DOWNLOADS=never .uv/bin/uv lock --check --quiet; then
  echo "error: uv.lock does not match pyproject.toml" >&2
  echo "next: refresh it with 'scripts/lock.sh' (see README, Upgrading dependencies), then rerun scripts/test.sh" >&2
  exit 1
fi
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
