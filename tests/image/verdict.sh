# Sourced by the in-image check scripts (boot/check-boot.sh, vm/check-vm.sh): one JSON line per
# check appended to "$V", which the caller sets. Nothing here decides pass or fail: the host test
# reads the lines after the machine has powered off.
# shellcheck shell=bash

rec() {  # rec NAME OK(true|false|skip) DETAIL
  python3 -c 'import json, sys
print(json.dumps({"check": sys.argv[1], "ok": sys.argv[2], "detail": sys.argv[3]}))' \
    "$1" "$2" "$3" >>"$V"
}
check_detail() {  # what a passing check records; a caller may redefine it (the VM adds uptime)
  printf '%s' "$1"
}
check() {  # check NAME DETAIL COMMAND...: ok when COMMAND succeeds
  local name=$1 detail=$2
  shift 2
  local output
  if output=$("$@" 2>&1); then rec "$name" true "$(check_detail "$detail")"
  else rec "$name" false "$detail: $output"; fi
}
wait_for() {  # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.5
  done
}
