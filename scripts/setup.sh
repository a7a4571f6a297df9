#!/usr/bin/env bash
# Set up a fresh Debian machine for nomarr_pipeline: Debian packages, a virtualenv in .venv,
# the project and its dependencies. Idempotent; sourced by scripts/demo.sh and scripts/test.sh.
# NOMARR_SETUP_EXTRAS: extra Debian packages (the test command adds postgresql and chromium).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=(ffmpeg python3-venv util-linux)
# shellcheck disable=SC2206
need+=(${NOMARR_SETUP_EXTRAS:-})
missing=()
for pkg in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (essentia-tensorflow has wheels for it); found $("$python" --version)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# NOMARR_SETUP_PY_EXTRAS: the project's extras (the test command adds the executors it tests).
extras=${NOMARR_SETUP_PY_EXTRAS:-dev,postgres}
stamp=.venv/.nomarr-installed-${extras//,/-}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
