#!/usr/bin/env bash
# bench/spool.sh: how fast the spool takes writes while the cluster is down (fsync'd group
# commits), and how fast it replays them into a real influxd once the cluster is back.
#
#   bench/spool.sh                 # 5,000-line batches, 8 and 64 connections, 5 s each
#   CONNS=64 DURATION=10s bench/spool.sh
#
# 1. The rig's influxd is stopped; the proxy (ack = "always") spools everything: wrk's rows
#    are the spooling throughput (every 204 is on disk, fsync'd).
# 2. influxd is started; the time until spool_entries reaches 0 gives the replay rate.
# 3. For scale, wrk writes the same body straight into influxd over one connection (replay
#    is one write at a time per cluster, in order).
# Needs ../shared/rig and what bench/run.sh installs, plus Debian's influxdb.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
RIG="${RIG:-$REPO/../shared/rig}"
export RIG_TMP="${RIG_TMP:-/tmp/rig}"
[[ -x "$RIG/bench.sh" ]] || { echo "rig not found at $RIG (set RIG=...)" >&2; exit 1; }
command -v influxd >/dev/null || { apt-get update -qq && apt-get install -y -qq influxdb >/dev/null; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

(cd "$REPO" && cargo build --release --locked -q)
SPOOL_DIR="$RIG_TMP/spool-bench"
rm -rf "$SPOOL_DIR"
mkdir -p "$RIG_TMP"
cat >"$RIG_TMP/spool-proxy.toml" <<TOML
[server]
listen = "127.0.0.1:18097"
[spool]
enabled = true
dir = "$SPOOL_DIR"
max_bytes = "40GiB"
ack = "always"
[clusters.default]
nodes = ["http://127.0.0.1:8086"]
health_check_interval = "500ms"
TOML

"$RIG/services.sh" stop influxd >/dev/null 2>&1 || true
"$REPO/target/release/influx-write-proxy" --config "$RIG_TMP/spool-proxy.toml" >"$RIG_TMP/spool-proxy.log" 2>&1 &
PROXY=$!
trap 'kill $PROXY 2>/dev/null || true; rm -rf "$SPOOL_DIR"' EXIT
for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18097/ping && break; sleep 0.1; done

metric() {
    curl -fs http://127.0.0.1:18097/metrics |
        awk -v m="influx_write_proxy_$1{cluster=\"default\"}" '$1 == m { print $2 }'
}

echo "== spooling (cluster down, every 204 fsync'd) =="
SINK_STATS="" CONNS="${CONNS:-8 64}" DURATION="${DURATION:-5s}" WARMUP=1s \
    "$RIG/bench.sh" spool-append "http://127.0.0.1:18097/write?db=bench" "$PROXY"
entries=$(metric spool_entries)
bytes=$(metric spool_bytes)
echo "spooled: $entries writes, $bytes bytes on disk"

echo "== replay into influxd =="
"$RIG/services.sh" start influxd >/dev/null
curl -fs -XPOST http://127.0.0.1:8086/query --data-urlencode 'q=CREATE DATABASE bench' >/dev/null
start=$(date +%s.%N)
while [[ "$(metric spool_entries)" != "0" ]]; do sleep 0.2; done
end=$(date +%s.%N)
lines=$(grep -c '' "$RIG_TMP/bodies/lines-${LINES:-5000}.lp")
python3 - "$entries" "$bytes" "$start" "$end" "$lines" <<'PY'
import sys
entries, size, start, end, lines = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = end - start
print(f"replayed {entries} writes ({size/1e6:.0f} MB) in {s:.1f} s (incl. up to 2 health checks): "
      f"{entries/s:.1f} writes/s, {size/1e6/s:.1f} MB/s, {entries*lines/s/1e6:.2f} M points/s")
PY

echo "== for scale: the same body straight into influxd, one connection =="
SINK_STATS="" CONNS=1 DURATION="${DURATION:-5s}" WARMUP=1s NOHEADER=1 \
    "$RIG/bench.sh" influxd-direct-1conn "http://127.0.0.1:8086/write?db=bench"
"$RIG/services.sh" stop influxd >/dev/null
