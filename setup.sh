#!/usr/bin/env bash
# Sets up Roost on a Debian/Ubuntu/Raspberry Pi OS machine with Python 3.11+:
# system packages through apt when missing, a virtual environment in .venv, Roost in it.
#   ./setup.sh          what `roost run` / `roost demo` need
#   ./setup.sh --test   plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")"

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; else
    echo "setup.sh: not root and no sudo: install the packages below by hand" >&2; fi
fi

# System packages: mosquitto (the managed broker) and its clients (tests, benchmarks).
pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || pkgs+=(mosquitto-clients)
command -v sqlite3 >/dev/null 2>&1 || pkgs+=(sqlite3)
# openssl: the sync tests make a CA and a server certificate for the TLS cloud broker.
[ $want_test -eq 1 ] && ! command -v openssl >/dev/null 2>&1 && pkgs+=(openssl)
# The Pi image tests (tests/image): shellcheck, a Debian rootfs (mmdebstrap), booted in nspawn
# and in qemu (the access-point test: a disk image by mke2fs -d, read back by debugfs).
if [ $want_test -eq 1 ]; then
  command -v shellcheck >/dev/null 2>&1 || pkgs+=(shellcheck)
  command -v mmdebstrap >/dev/null 2>&1 || pkgs+=(mmdebstrap)
  command -v systemd-nspawn >/dev/null 2>&1 || pkgs+=(systemd-container)
  command -v qemu-system-x86_64 >/dev/null 2>&1 || pkgs+=(qemu-system-x86)
  command -v debugfs >/dev/null 2>&1 || pkgs+=(e2fsprogs)
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
# Node.js and npm: build the dashboard (web/) once; the gateway itself never runs Node.
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
# Chromium: the dashboard's browser tests drive Debian's build through Playwright (never a
# browser download).
[ $want_test -eq 1 ] && ! command -v chromium >/dev/null 2>&1 && pkgs+=(chromium)
if [ ${#pkgs[@]} -gt 0 ]; then
  say "installing ${pkgs[*]} with apt"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
# The Debian package starts a system mosquitto on port 1883 where systemd runs; Roost's managed
# broker then needs another port (roost run --mqtt-port 1884) or can use it (--mqtt-url).

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: Roost needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
extra="[demo]"
[ $want_test -eq 1 ] && extra="[demo,test]"
say "installing roost${extra} into .venv"
.venv/bin/python -m pip install -q -e ".${extra}"

# The dashboard: web/ is built with npm (esbuild, uPlot, Swagger UI from the registry; no lock
# file) into gateway/api/static, which is packaged and served by the gateway. Rebuilt whenever
# the output is missing or web/'s sources changed since the last build (a hash of them is kept).
web_hash=$(cd web && find . -path ./node_modules -prune -o -type f -print | LC_ALL=C sort \
  | xargs sha256sum | sha256sum | cut -d' ' -f1)
stamp=gateway/api/static/.web-hash
if [ ! -f gateway/api/static/index.html ] || [ "$(cat "$stamp" 2>/dev/null)" != "$web_hash" ]; then
  say "building the dashboard (web/ -> gateway/api/static)"
  (cd web && npm install --no-package-lock --no-audit --no-fund --loglevel=error && npm run build --silent)
  echo "$web_hash" > "$stamp"
fi
say "ready: .venv/bin/roost --help"
