#!/bin/bash
# VM test, before NetworkManager starts: two virtual radios (mac80211_hwsim), the second moved into
# the network namespace "node", where the test's node lives. NetworkManager then sees one radio,
# as on a Pi.
set -eu
modprobe mac80211_hwsim radios=2
for _ in $(seq 50); do
  [ "$(find /sys/class/ieee80211 -mindepth 1 -maxdepth 1 | wc -l)" -ge 2 ] && break
  sleep 0.1
done
phy=$(find /sys/class/ieee80211 -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
ip netns add node
iw phy "$phy" set netns name node
ip netns exec node ip link set lo up
echo "roost-vmtest-radio: $phy moved into netns node"
