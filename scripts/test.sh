#!/usr/bin/env bash
# The test command (README.md "Testing"): installs what the tests need when it is missing
# (Debian's influxdb, curl, prometheus for promtool and the dashboard check, and the Python
# `influxdb` client the read path is tested with; the tests start their own influxd and
# prometheus on free loopback ports), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
/usr/bin/python3 -c 'import influxdb, msgpack' >/dev/null 2>&1 || need+=(python3-influxdb python3-msgpack)
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
if ((${#need[@]})); then
    echo "installing ${need[*]} (needed by the tests)" >&2
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Unit and integration tests (examples and fuzz targets are compiled by clippy in CI, not run).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
