#!/bin/bash
# Runs INSIDE the booted test image (roost-imagetest.service) and writes one JSON line per check
# to /var/lib/roost-imagetest/verdict.jsonl; the host test reads that file after the container
# has powered off. Mode "valid": the boot partition had the test roost.toml. Mode "invalid": a
# second boot with a broken roost.toml. Every check records ok true/false; nothing here decides
# pass or fail for the host.
# The sh -c snippets are single-quoted on purpose: they expand inside the child shell.
# shellcheck disable=SC2016
set -u
mode=${1:-valid}
out=/var/lib/roost-imagetest
V=$out/verdict.jsonl
mkdir -p "$out"
: >"$V"
roost=/opt/roost/venv/bin/roost

# shellcheck source-path=SCRIPTDIR source=../verdict.sh
. "$(dirname "$0")/verdict.sh"  # rec, check, wait_for
reading() {  # reading SEQ: a valid reading message
  printf '{"b":1,"s":%d,"t":%d,"u":5000,"m":{"temp_c":21.5}}' "$1" "$(($(date +%s) * 1000))"
}
in_store() {  # in_store NODE: the gateway stored something from NODE
  runuser -u roost -- "$roost" nodes --data-dir /var/lib/roost --json 2>/dev/null |
    python3 -c 'import json, sys; sys.exit(0 if any(n["node_id"] == sys.argv[1] for n in json.load(sys.stdin)) else 1)' "$1"
}

# --- services came up ----------------------------------------------------------------------
check mosquitto_active "mosquitto.service is active" wait_for 60 systemctl is-active mosquitto.service
check gateway_active "roost.service is active (Type=notify: READY=1 arrived)" \
  wait_for 90 systemctl is-active roost.service
check gateway_connected "the gateway logged 'connected to broker' with its firstboot credentials" \
  wait_for 60 sh -c 'journalctl -b -u roost.service --no-pager | grep -q "connected to broker"'
check gateway_watchdog "roost.service runs with WatchdogSec=30s" \
  sh -c '[ "$(systemctl show -P WatchdogUSec roost.service)" = 30s ]'

if [ "$mode" = valid ]; then
  # --- first boot applied the test roost.toml ----------------------------------------------
  check firstboot_unit "roost-firstboot.service ran and succeeded" \
    sh -c '[ "$(systemctl show -P Result roost-firstboot.service)" = success ] &&
           [ "$(systemctl show -P ActiveState roost-firstboot.service)" = active ]'
  check firstboot_moved "the boot-partition file was moved off /boot/firmware" \
    sh -c '[ ! -e /boot/firmware/roost.toml ] && ls /etc/roost/firstboot/*.applied'
  check firstboot_hostname "host name from gateway.name (file and running)" \
    sh -c '[ "$(cat /etc/hostname)" = roost-test ] && [ "$(hostname)" = roost-test ]'
  check firstboot_settings "admin token and sink written to /etc/roost/roost.toml" \
    sh -c 'grep -q "test-admin-token-123" /etc/roost/roost.toml && grep -q "name = \"cloud\"" /etc/roost/roost.toml'
  check firstboot_effective "roost config show reads the applied settings" \
    sh -c "$roost config show --config /etc/roost/roost.toml --json | grep -q roost-test"
  check firstboot_no_error "no firstboot-error.txt" test ! -e /var/lib/roost/firstboot-error.txt
  check wifi_profile_mode "the Wi-Fi keyfile is root-only (0600)" \
    sh -c '[ "$(stat -c %a /etc/NetworkManager/system-connections/roost-wifi.nmconnection)" = 600 ]'
  check nm_loaded_profiles "NetworkManager loaded roost-wifi and roost-hotspot" \
    wait_for 30 sh -c 'nmcli -t -f NAME connection show | grep -qx roost-wifi &&
                       nmcli -t -f NAME connection show | grep -qx roost-hotspot'
  check nm_wifi_ssid "NetworkManager reads the SSID and passphrase as written" \
    sh -c '[ "$(nmcli -s -g 802-11-wireless.ssid connection show roost-wifi)" = "Test Net" ] &&
           [ "$(nmcli -s -g 802-11-wireless-security.psk connection show roost-wifi)" = "correct horse; battery" ]'
  check nm_hotspot "the hotspot profile: AP mode, channel 6, shared IPv4" \
    sh -c '[ "$(nmcli -g 802-11-wireless.mode,802-11-wireless.channel,ipv4.method connection show roost-hotspot | tr "\n" " ")" = "ap 6 shared " ]'
  check regdomain "regulatory country for cfg80211" grep -q "ieee80211_regdom=DE" \
    /etc/modprobe.d/roost-wifi-country.conf

  # --- broker: credentials and ACL ---------------------------------------------------------
  node_json=$("$roost" nodes add node-test --json 2>&1)
  pw=$(printf '%s' "$node_json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["password"])' 2>/dev/null)
  if [ -n "$pw" ]; then rec nodes_add true "roost nodes add created node-test"; else
    rec nodes_add false "roost nodes add: $node_json"; fi
  check mqtt_connect "a node's CONNECT with its credentials is accepted (QoS1 publish acked)" \
    mosquitto_pub -h 127.0.0.1 -u node-test -P "$pw" -q 1 -t roost/v1/node-test/status \
    -m '{"state":"online","fw":"test","board":"nspawn","boot":1}'
  # Negative controls: these MUST fail; ok=true means they were refused.
  if mosquitto_pub -h 127.0.0.1 -u node-test -P wrong-password -q 1 -t roost/v1/node-test/readings \
    -m "$(reading 0)" >/dev/null 2>&1; then
    rec wrong_password_refused false "a wrong password was accepted"
  else rec wrong_password_refused true "CONNECT with a wrong password refused"; fi
  if mosquitto_pub -h 127.0.0.1 -q 1 -t roost/v1/anon/readings -m "$(reading 0)" >/dev/null 2>&1; then
    rec anonymous_refused false "an anonymous client was accepted"
  else rec anonymous_refused true "anonymous CONNECT refused"; fi
  # Publish outside its own topic first, then (repeatedly, until the gateway's session has
  # subscribed) under its own. Once its own reading is stored, the earlier foreign one would be
  # too had the broker let it through.
  mosquitto_pub -h 127.0.0.1 -u node-test -P "$pw" -q 1 -t roost/v1/intruder/readings -m "$(reading 0)"
  seq=0
  deadline=$((SECONDS + 60))
  until in_store node-test || [ $SECONDS -ge $deadline ]; do
    seq=$((seq + 1))
    mosquitto_pub -h 127.0.0.1 -u node-test -P "$pw" -q 1 -t roost/v1/node-test/readings \
      -m "$(reading "$seq")" >/dev/null 2>&1
    sleep 1
  done
  check gateway_ingested "the gateway stored node-test's reading (roost nodes)" in_store node-test
  if in_store intruder; then rec acl_other_topic_refused false "node-test published as intruder"
  else rec acl_other_topic_refused true "node-test's publish to roost/v1/intruder/ was dropped"; fi
  check stats "roost stats works on the data dir" \
    runuser -u roost -- "$roost" stats --data-dir /var/lib/roost --json
  check broker_durability "mosquitto runs with the managed broker's durability settings" \
    sh -c 'for k in "max_queued_messages 0" "max_queued_bytes 0" "autosave_interval 1" \
      "max_inflight_messages 10000" "persistence true" "user mosquitto"; do
      grep -qx "$k" /etc/mosquitto/mosquitto.conf || { echo "missing: $k"; exit 1; }; done'
  check broker_persistence "mosquitto saved its persistence file (autosave 1 s)" \
    wait_for 10 test -s /var/lib/mosquitto/mosquitto.db
else
  # --- second boot with an invalid roost.toml ----------------------------------------------
  check invalid_error_file "the error is in /var/lib/roost/firstboot-error.txt" \
    grep -q "gateway.name" /var/lib/roost/firstboot-error.txt
  check invalid_journal "the error is in the journal" \
    sh -c 'journalctl -b -u roost-firstboot.service --no-pager | grep -q "is invalid"'
  check invalid_kept_settings "the previous settings were kept" \
    grep -q "test-admin-token-123" /etc/roost/roost.toml
  check invalid_moved "the invalid file was moved away too" \
    sh -c '[ ! -e /boot/firmware/roost.toml ] && ls /etc/roost/firstboot/*.rejected'
fi

# --- the dashboard's health endpoint -------------------------------------------------------
if compgen -G "/opt/roost/venv/lib/python3*/site-packages/gateway/api/__init__.py" >/dev/null; then
  port=$(sed -n 's/^port = //p' /etc/roost/roost.toml | head -1)
  check api_health "GET http://127.0.0.1:${port:-80}/api/health answers 200" wait_for 60 \
    python3 -c 'import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=5).status == 200 else 1)' \
    "http://127.0.0.1:${port:-80}/api/health"
else
  rec api_health skip "gateway/api is not in the installed wheel yet (issue 5)"
fi

# --- no failed units, and the detector itself works ----------------------------------------
failed=$(systemctl --failed --no-legend --plain | grep -v roost-imagetest)
if [ -z "$failed" ]; then rec no_failed_units true "systemctl --failed is empty"
else rec no_failed_units false "$failed"; fi
check gateway_no_restarts "roost.service did not restart" \
  sh -c '[ "$(systemctl show -P NRestarts roost.service)" = 0 ]'
systemctl start roost-imagetest-broken.service >/dev/null 2>&1
if systemctl --failed --no-legend --plain | grep -q roost-imagetest-broken; then
  rec negative_control_detected true "a unit that exits 1 is reported failed"
else rec negative_control_detected false "the failed-unit check missed a broken unit"; fi
systemctl reset-failed roost-imagetest-broken.service

journalctl -b --no-pager >"$out/journal.txt" 2>&1
rec "done" true "$mode"
