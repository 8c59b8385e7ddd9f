#!/usr/bin/env bash
# bench/run.sh: throughput and latency of influx-write-proxy against the shared rig
# (../shared/rig: a C sink that reads every body byte, wrk, nginx as the reference proxy),
# all on loopback, interleaved rounds, medians. Prints points/s, MB/s, p50/p99, CPU s/GB and
# peak RSS for the sink directly, nginx and the proxy, so overhead reads as a ratio.
#
#   bench/run.sh                      # 3 rounds, 5,000-line batches, 8 and 64 connections
#   ROUNDS=1 DURATION=5s bench/run.sh # quicker, noisier
#
# Needs: wrk, nginx-light, gcc, zlib1g-dev, curl, python3 (installed here when missing).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
RIG="${RIG:-$REPO/../shared/rig}"
export RIG_TMP="${RIG_TMP:-/tmp/rig}"
[[ -x "$RIG/matrix.sh" ]] || { echo "rig not found at $RIG (set RIG=...)" >&2; exit 1; }

need=()
for tool in wrk nginx gcc curl python3; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
    pkgs=()
    for t in "${need[@]}"; do case "$t" in nginx) pkgs+=(nginx-light) ;; *) pkgs+=("$t") ;; esac; done
    apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" zlib1g-dev >/dev/null
fi

(cd "$REPO" && cargo build --release --locked -q)
mkdir -p "$RIG_TMP"
cat >"$RIG_TMP/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:18096"
[clusters.default]
nodes = ["http://127.0.0.1:18086"]
TOML

"$RIG/services.sh" start sink
"$RIG/services.sh" start nginx
"$REPO/target/release/influx-write-proxy" --config "$RIG_TMP/proxy.toml" >"$RIG_TMP/proxy.log" 2>&1 &
echo $! >"$RIG_TMP/proxy.pid"
trap 'kill "$(cat "$RIG_TMP/proxy.pid")" 2>/dev/null || true; "$RIG/services.sh" stop nginx; "$RIG/services.sh" stop sink' EXIT
for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18096/ping && break; sleep 0.1; done

ROUNDS="${ROUNDS:-3}" "$RIG/matrix.sh" "${TARGETS:-$HERE/targets.txt}"
