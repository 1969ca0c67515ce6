#!/bin/bash -e
# Runs deploy/pi-image/provision.sh inside the image's root (pi-gen's on_chroot), with the wheel
# build.sh put in files/. ROOTFS_DIR and on_chroot come from pi-gen.
src="${ROOTFS_DIR}/tmp/roost-src"
rm -rf "${src}"
mkdir -p "${src}/deploy" "${src}/docs"
cp -a files/pi-image "${src}/deploy/pi-image"
cp files/pi-image.md "${src}/docs/pi-image.md"
cp files/roost-*.whl "${src}/"
on_chroot <<'CHROOT'
bash /tmp/roost-src/deploy/pi-image/provision.sh --wheel "$(ls /tmp/roost-src/roost-*.whl)"
CHROOT
rm -rf "${src}"
