#!/bin/bash -e
# pi-gen stage for Roost: starts from the previous stage's root (stage2, Raspberry Pi OS Lite).
# copy_previous and ROOTFS_DIR come from pi-gen.
if [ ! -d "${ROOTFS_DIR}" ]; then
  copy_previous
fi
