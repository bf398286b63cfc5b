#!/usr/bin/env bash
# Sets up brain2music-rt on a fresh Debian machine (Python 3.11, root):
# Debian packages, then .venv/ at the repository root with the project
# installed in editable mode. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")"

# portaudio19-dev: tinysoundfont's pyaudio dependency builds against it.
# faketime: the tests run a scanner side whose clock is off, as at a site (libfaketime).
# socat: the tests join the scanner's trigger to the session by a serial line (a linked pseudo-terminal pair).
# dcm2niix: the tests check the slice times read from Siemens headers against it.
APT_PACKAGES=(libportaudio2 portaudio19-dev libsndfile1 jackd2 faketime socat dcm2niix)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.b2m-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/b2m)" >&2
