#!/usr/bin/env bash
# Set up a fresh Debian machine for nomarr_pipeline: Debian packages, then a virtualenv in .venv
# holding exactly what uv.lock pins (no dependency resolution at install time). Idempotent;
# sourced by scripts/demo.sh and scripts/test.sh.
# NOMARR_SETUP_EXTRAS: extra Debian packages (the test command adds postgresql and chromium).
# NOMARR_SETUP_PY_EXTRAS: the project's extras (the test command adds the executors it tests).
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
python=$("$python" -c "import sys; print(sys.executable)")  # not a shim: uv would rebuild .venv

# uv at a pinned version, in a virtualenv of its own (uv sync makes .venv exactly the lock,
# so uv cannot live there).
uv_version=0.13.9
uv=.uv/bin/uv
if [ ! -x "$uv" ] || [ "$("$uv" --version | cut -d' ' -f2)" != "$uv_version" ]; then
  echo "setup: installing uv $uv_version into .uv"
  rm -rf .uv
  "$python" -m venv .uv
  .uv/bin/pip install -q --disable-pip-version-check "uv==$uv_version"
fi

extras=${NOMARR_SETUP_PY_EXTRAS:-dev,postgres}
extra_flags=()
IFS=, read -ra extra_names <<<"$extras"
for name in "${extra_names[@]}"; do extra_flags+=(--extra "$name"); done
# --frozen: install what uv.lock pins, never re-resolve; the machine's Python, never a download.
# --inexact: the demo's extras do not uninstall the test command's. --compile-bytecode: where
# PYTHONDONTWRITEBYTECODE is set, uncompiled packages cost every process seconds of start-up.
UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=.venv "$uv" sync --frozen --inexact --compile-bytecode \
  --quiet --python "$python" "${extra_flags[@]}"
