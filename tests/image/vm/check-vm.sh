#!/bin/bash
# Runs INSIDE the VM (roost-vmtest.service) and writes one JSON line per check to
# /var/lib/roost-vmtest/verdict.jsonl; the host test reads it from the disk image after the VM
# has powered off. No roost.toml was on the boot partition: no Wi-Fi is configured, so the
# fallback must open the access point on the gateway's radio (wlan0). The node lives on the
# second radio in the network namespace "node" (radio.sh), joins with wpa_supplicant, takes an
# address from the access point's DHCP and runs the real firmware with its `roost nodes add`
# credentials. Every check records ok true/false; nothing here decides pass or fail for the host.
# shellcheck disable=SC2016
set -u
out=/var/lib/roost-vmtest
V=$out/verdict.jsonl
run=/run/roost-vmtest
mkdir -p "$out" "$run"
: >"$V"
roost=/opt/roost/venv/bin/roost
lib=/usr/local/lib/roost-vmtest
N=(ip netns exec node)

up() { cut -d' ' -f1 /proc/uptime; }
# shellcheck source-path=SCRIPTDIR source=../verdict.sh
. "$(dirname "$0")/verdict.sh"  # rec, check, wait_for
check_detail() { printf '%s (at %s s)' "$1" "${UPTIME:-$(up)}"; }  # passing checks: when
json_get() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

rec virt true "$(systemd-detect-virt 2>&1), kernel $(uname -r), check started at $(up) s"

# --- the radios ------------------------------------------------------------------------------
dev=$(iw dev | awk '$1 == "Interface" { print $2; exit }')
ndev=$("${N[@]}" iw dev | awk '$1 == "Interface" { print $2; exit }')
if [ -n "$dev" ] && [ -n "$ndev" ]; then
  rec radios true "gateway radio $dev, node radio $ndev in netns node (mac80211_hwsim radios=2)"
else rec radios false "gateway radio '$dev', node radio '$ndev'"; fi
check nm_sees_radio "NetworkManager manages $dev" \
  wait_for 60 sh -c "nmcli -t -f DEVICE,TYPE,STATE device | grep -q '^$dev:wifi:'"

# --- the fallback brings up the access point ---------------------------------------------------
check no_wifi_profile "no roost-wifi profile (nothing configured)" \
  sh -c '! nmcli -t -f NAME connection show | grep -qx roost-wifi'
ap_up() {
  [ "$(nmcli -g GENERAL.CONNECTION device show "$dev")" = roost-hotspot ] &&
    [ "$(nmcli -g GENERAL.STATE device show "$dev" | cut -d' ' -f1)" = 100 ] &&
    iw dev "$dev" info | grep -q 'type AP'
}
if wait_for 240 ap_up; then
  rec ap_up true "roost-hotspot active on $dev in AP mode, $(iw dev "$dev" info | grep -o 'channel [0-9]*') (at $(up) s)"
else rec ap_up false "no access point on $dev: $(nmcli device 2>&1 | tr '\n' ';')"; fi
check fallback_logged "roost-wifi-fallback brought it up because no Wi-Fi is configured" \
  sh -c 'journalctl -b -u roost-wifi-fallback.service --no-pager | grep -q "no Wi-Fi configured"'
check ap_address "the gateway is 10.42.0.1 on $dev (shared IPv4)" \
  sh -c "ip -4 -o addr show dev $dev | grep -q 'inet 10.42.0.1/24'"

# --- the node joins it --------------------------------------------------------------------------
ssid=$(json_get /var/lib/roost/hotspot.json ssid)
psk=$(json_get /var/lib/roost/hotspot.json password)
cat >"$run/wpa.conf" <<WPA
ctrl_interface=$run/wpa
network={
  ssid="$ssid"
  psk="$psk"
  key_mgmt=WPA-PSK
  proto=RSN
  pairwise=CCMP
  group=CCMP
}
WPA
chmod 600 "$run/wpa.conf"
"${N[@]}" ip link set "$ndev" up
"${N[@]}" wpa_supplicant -B -i "$ndev" -c "$run/wpa.conf" -P "$run/wpa.pid" -f "$run/wpa.log"
check node_associated "the node's radio joined '$ssid' with WPA2 (wpa_supplicant COMPLETED)" \
  wait_for 60 sh -c "ip netns exec node wpa_cli -p $run/wpa -i $ndev status | grep -qx wpa_state=COMPLETED"
# dhclient-script rewrites resolv.conf: give the namespace its own (ip netns exec binds it).
mkdir -p /etc/netns/node
: >/etc/netns/node/resolv.conf
timeout 60 "${N[@]}" dhclient -1 -4 -pf "$run/dhclient.pid" -lf "$run/dhclient.leases" "$ndev" \
  >"$run/dhclient.log" 2>&1
naddr=$("${N[@]}" ip -4 -o addr show dev "$ndev" | awk '{ print $4 }' | head -1)
case "$naddr" in
  10.42.0.*) rec node_dhcp true "the node got $naddr from the access point's DHCP (at $(up) s)" ;;
  *) rec node_dhcp false "no 10.42.0.x address on $ndev: '$naddr' $(tail -5 "$run/dhclient.log")" ;;
esac

# --- credentials, the broker over the access point ----------------------------------------------
"$roost" nodes add vm-probe --json >"$run/vm-probe.json" 2>"$run/nodes-add.err"
"$roost" nodes add vm-node --json >"$run/vm-node.json" 2>>"$run/nodes-add.err"
if [ -s "$run/vm-node.json" ] && [ -s "$run/vm-probe.json" ]; then
  rec nodes_add true "roost nodes add created vm-probe and vm-node"
else rec nodes_add false "roost nodes add: $(cat "$run/nodes-add.err")"; fi
probe_pw=$(json_get "$run/vm-probe.json" password 2>/dev/null)
# mosquitto reloads its password file asynchronously after `roost nodes add`.
check probe_connect "mosquitto_pub from the node's namespace, as vm-probe, to 10.42.0.1 (QoS1 acked)" \
  wait_for 20 "${N[@]}" mosquitto_pub -h 10.42.0.1 -u vm-probe -P "$probe_pw" -q 1 \
  -t roost/v1/vm-probe/status -m '{"state":"online","fw":"probe","board":"vm","boot":1}'
if "${N[@]}" mosquitto_pub -h 10.42.0.1 -u vm-probe -P wrong-password -q 1 \
  -t roost/v1/vm-probe/status -m '{}' >/dev/null 2>&1; then
  rec probe_wrong_password_refused false "a wrong password was accepted over the access point"
else rec probe_wrong_password_refused true "a wrong password is refused over the access point"; fi

# --- the real firmware as the node -----------------------------------------------------------------
stored() {  # the gateway's store has reading messages from vm-node (roost nodes)
  runuser -u roost -- "$roost" nodes --data-dir /var/lib/roost --json 2>/dev/null |
    python3 -c 'import json, sys
sys.exit(0 if any(n["node_id"] == "vm-node" for n in json.load(sys.stdin)) else 1)'
}
api_node() {  # GET /api/nodes/vm-node: the dashboard's view of the node, with its messages
  python3 -c 'import json, sys, urllib.request
n = json.load(urllib.request.urlopen("http://127.0.0.1/api/nodes/vm-node", timeout=5))
print(json.dumps(n)[:600])
sys.exit(0 if n.get("node_id") == "vm-node" and n.get("messages", 0) >= 1 else 1)'
}
"${N[@]}" env ROOST_FIRMWARE_DIR="$lib/firmware" /opt/roost/venv/bin/python "$lib/vnode.py" \
  "$run/vm-node.json" "$out/node" 300 >"$out/vnode.log" 2>&1 &
vnode=$!
if wait_for 120 stored; then
  rec firmware_reading_stored true "the gateway stored the firmware's readings from vm-node (at $(up) s)"
else
  rec firmware_reading_stored false "no reading from vm-node: $(tail -c 1500 "$out/node/console.log" 2>/dev/null) $(tail -c 500 "$out/vnode.log")"
fi
check firmware_over_ap "mosquitto logged vm-node connecting from 10.42.0.x with its user" \
  sh -c 'journalctl -b -u mosquitto.service --no-pager | grep -E "from 10\.42\.0\.[0-9]+:[0-9]+ as .*u.vm-node"'
kill "$vnode" 2>/dev/null
wait "$vnode" 2>/dev/null
check api_node "GET /api/nodes/vm-node lists the node with its messages" api_node
check stats "roost stats counts the stored messages" \
  sh -c "runuser -u roost -- $roost stats --data-dir /var/lib/roost --json"

# --- nothing failed -------------------------------------------------------------------------------
failed=$(systemctl --failed --no-legend --plain | grep -v roost-vmtest)
if [ -z "$failed" ]; then rec no_failed_units true "systemctl --failed is empty"
else rec no_failed_units false "$failed"; fi
journalctl -b --no-pager >"$out/journal.txt" 2>&1
cp "$run/wpa.log" "$run/dhclient.log" "$out/" 2>/dev/null
rec "done" true "at $(up) s"
sync
