#!/bin/bash
# Builds the Roost Raspberry Pi image with pi-gen (Raspberry Pi OS Lite, bookworm, arm64) on an
# arm64 or x86 Linux host with internet access and Docker (or run pi-gen natively; see its README).
#
#   deploy/pi-image/build.sh [--pi-gen DIR] [--native]
#
# --pi-gen DIR  an existing pi-gen checkout (default: cloned into build/pi-gen, branch arm64)
# --native      run pi-gen's build.sh as root on this host instead of build-docker.sh
# The image ends in DIR/deploy/*-roost.img.xz (or .zip, depending on pi-gen's version).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
pigen=""
native=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pi-gen) pigen=$2; shift 2 ;;
    --native) native=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$pigen" ]; then
  pigen=$repo/build/pi-gen
  [ -d "$pigen" ] || git clone --depth 1 --branch arm64 https://github.com/RPi-Distro/pi-gen "$pigen"
fi

echo "==> building the roost wheel"
rm -rf "$repo/build/wheel"
python3 -m pip wheel "$repo" -w "$repo/build/wheel" --no-deps -q

echo "==> installing the Roost stage into $pigen"
stage=$pigen/stage-roost
rm -rf "$stage"
cp -a "$here/pi-gen/stage-roost" "$stage"
mkdir -p "$stage/00-roost/files"
cp -a "$here" "$stage/00-roost/files/pi-image"
rm -rf "$stage/00-roost/files/pi-image/pi-gen"
cp "$repo/docs/pi-image.md" "$stage/00-roost/files/pi-image.md"
cp "$repo"/build/wheel/roost-*.whl "$stage/00-roost/files/"

# Raspberry Pi OS Lite (stages 0-2) plus Roost. No login password and no SSH by default: the Pi
# is configured through roost.toml on the boot partition and the dashboard.
cat >"$pigen/config" <<CONFIG
IMG_NAME=roost
RELEASE=bookworm
TARGET_HOSTNAME=roost
FIRST_USER_NAME=roost-admin
DISABLE_FIRST_BOOT_USER_RENAME=1
ENABLE_SSH=0
LOCALE_DEFAULT=C.UTF-8
STAGE_LIST="stage0 stage1 stage2 stage-roost"
CONFIG
# stage2 exports the plain Lite image too; only the Roost one is wanted.
touch "$pigen/stage2/SKIP_IMAGES"

cd "$pigen"
if [ $native -eq 1 ]; then
  ./build.sh
else
  ./build-docker.sh
fi
ls -l "$pigen"/deploy/
