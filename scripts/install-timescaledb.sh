#!/usr/bin/env bash
# Build and install TimescaleDB (Apache edition) for the Debian PostgreSQL 15 server.
# Debian bookworm ships no timescaledb package, so we take Debian's *source* package from trixie
# through a private apt configuration (the system's sources are left untouched) and build it.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
SHAREDIR=$("$PG_CONFIG" --sharedir)
if [ -f "$SHAREDIR/extension/timescaledb.control" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "timescaledb already installed in $SHAREDIR/extension"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

work=$(mktemp -d /tmp/cityingest-tsdb.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/sources.list.d" "$work/apt/preferences.d"
cat >"$work/apt/sources.list" <<SRC
deb-src http://deb.debian.org/debian trixie main
SRC
apt_opts=(
  -o "Dir::Etc::SourceList=$work/apt/sources.list"
  -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
  -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Etc::Preferences=$work/apt/preferences.d"
  -o "APT::Sandbox::User=root"
)
echo "fetching the timescaledb source package from Debian trixie"
$SUDO apt-get "${apt_opts[@]}" update -qq
(cd "$work" && $SUDO apt-get "${apt_opts[@]}" source --download-only -qq timescaledb)
orig=$(ls "$work"/timescaledb_*.orig.tar.* | head -n1)
mkdir "$work/src"
tar -xf "$orig" -C "$work/src" --strip-components=1
cd "$work/src"
echo "building $(basename "$orig")"
cmake -S . -B build -DPG_CONFIG="$PG_CONFIG" -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF \
  -DTAP_CHECKS=OFF -DUSE_TELEMETRY=OFF -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 \
  || { cat "$work/cmake.log"; exit 1; }
make -C build -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -50 "$work/make.log"; exit 1; }
$SUDO make -C build install >"$work/install.log" 2>&1 || { tail -50 "$work/install.log"; exit 1; }
echo "timescaledb installed into $SHAREDIR/extension"
