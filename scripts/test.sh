#!/usr/bin/env bash
# The test command (README.md "Testing"): installs what the tests need when it is missing
# (Debian's influxdb and curl; the tests start their own influxd on free loopback ports),
# then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    echo "installing ${need[*]} (needed by the tests)" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --locked --all-targets
