#!/bin/bash
# Provisions a Debian / Raspberry Pi OS (bookworm) root filesystem as a Roost gateway.
# Runs INSIDE the target root (chroot, pi-gen's on_chroot, systemd-nspawn) as root; it starts no
# services. Idempotent: running it twice gives the same system.
#
#   provision.sh --wheel /path/roost-X-py3-none-any.whl [--wheelhouse DIR]
#
# --wheelhouse: a directory of wheels for the gateway's dependencies (pip --no-index); without
# it pip fetches them from PyPI.
# The files it installs are in files/ next to this script; the package list is packages.txt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
files=$here/files
wheel=""
wheelhouse=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) wheel=$2; shift 2 ;;
    --wheelhouse) wheelhouse=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "provision.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
  echo "provision.sh: --wheel FILE is required (python -m pip wheel . -w dist --no-deps)" >&2
  exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "provision.sh: run as root inside the target root" >&2; exit 2; }

say() { echo "provision: $*"; }
export DEBIAN_FRONTEND=noninteractive

# --- packages -----------------------------------------------------------------------------
mapfile -t pkgs < <(grep -v '^[[:space:]]*\(#\|$\)' "$here/packages.txt")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  # Services must not start inside the build root.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
  apt-get clean
fi

# --- the roost user and its directories ---------------------------------------------------
if ! getent passwd roost >/dev/null; then
  say "creating system user roost"
  useradd --system --user-group --home-dir /var/lib/roost --no-create-home \
    --shell /usr/sbin/nologin --comment "Roost gateway" roost
fi
install -d -m 0750 -o roost -g roost /var/lib/roost
install -d -m 0750 -o root -g roost /etc/roost
install -d -m 0700 -o root -g root /etc/roost/firstboot
install -d -m 0755 /boot/firmware /usr/local/lib/roost /usr/share/doc/roost

# --- the gateway in a venv ----------------------------------------------------------------
say "installing $(basename "$wheel") into /opt/roost/venv"
[ -x /opt/roost/venv/bin/python ] || python3 -m venv /opt/roost/venv
pip_args=(--no-cache-dir --quiet --disable-pip-version-check)
if [ -n "$wheelhouse" ]; then
  pip_args+=(--no-index --find-links "$wheelhouse")
fi
/opt/roost/venv/bin/python -m pip install "${pip_args[@]}" --force-reinstall --no-deps "$wheel"
/opt/roost/venv/bin/python -m pip install "${pip_args[@]}" "$wheel"
ln -sf /opt/roost/venv/bin/roost /usr/local/bin/roost
/opt/roost/venv/bin/roost --version

# Default settings; first boot rewrites this file from the boot partition's roost.toml.
if [ ! -f /etc/roost/roost.toml ]; then
  cat >/etc/roost/roost.toml <<'TOML'
# Roost on the Pi image. First boot rewrites this file from /boot/firmware/roost.toml.
[gateway]
data_dir = "/var/lib/roost"

[http]
port = 80
TOML
fi
chown root:roost /etc/roost/roost.toml
chmod 0640 /etc/roost/roost.toml

# --- mosquitto ----------------------------------------------------------------------------
say "configuring mosquitto"
install -m 0644 "$files/mosquitto.conf" /etc/mosquitto/mosquitto.conf
install -d -m 0750 -o root -g mosquitto /etc/mosquitto/roost
[ -f /etc/mosquitto/roost/passwd ] || install -m 0640 -o root -g mosquitto /dev/null \
  /etc/mosquitto/roost/passwd
/opt/roost/venv/bin/python -m gateway.nodeauth write-acl
install -d -m 0755 -o mosquitto -g mosquitto /var/lib/mosquitto

# --- systemd units, scripts ---------------------------------------------------------------
say "installing systemd units"
for unit in roost.service roost-firstboot.service roost-wifi-fallback.service \
  roost-wifi-fallback.timer; do
  install -m 0644 "$files/$unit" "/etc/systemd/system/$unit"
done
install -m 0755 "$files/wifi-fallback" /usr/local/lib/roost/wifi-fallback
systemctl enable roost.service roost-firstboot.service roost-wifi-fallback.timer \
  mosquitto.service avahi-daemon.service NetworkManager.service systemd-timesyncd.service

# --- discovery, network -------------------------------------------------------------------
install -m 0644 "$files/roost.avahi.service" /etc/avahi/services/roost.service
install -d -m 0755 /etc/NetworkManager/conf.d
install -m 0644 "$files/NetworkManager.conf" /etc/NetworkManager/conf.d/roost.conf

# --- SD card: journal in RAM, noatime -----------------------------------------------------
install -d -m 0755 /etc/systemd/journald.conf.d
install -m 0644 "$files/journald.conf" /etc/systemd/journald.conf.d/roost.conf
if [ -f /etc/fstab ]; then
  # Add noatime to ext4 mounts that lack it (pi-gen's fstab has the root partition).
  sed -E -i '/^[^#].*[[:space:]]ext4[[:space:]]/{/noatime/!s/([[:space:]]ext4[[:space:]]+)([^[:space:]]+)/\1\2,noatime/}' \
    /etc/fstab
fi

if [ -f "$here/../../docs/pi-image.md" ]; then
  install -m 0644 "$here/../../docs/pi-image.md" /usr/share/doc/roost/pi-image.md
fi
say "done"
