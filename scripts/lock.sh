#!/usr/bin/env bash
# Refresh uv.lock: every extra resolved anew to the newest versions pyproject.toml allows
# (dask and distributed move together: the dask extra bounds both). Then run scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NOMARR_SETUP_EXTRAS= source scripts/setup.sh
UV_PYTHON_DOWNLOADS=never .uv/bin/uv lock --upgrade --python "$(command -v "${PYTHON:-python3.11}")" "$@"
