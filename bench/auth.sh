#!/usr/bin/env bash
# bench/auth.sh: the cost of auth mode `proxy` and rate limiting, as a ratio to mode `none`,
# measured in one sitting against the rig's sink (5,000-line batches, wrk, CONNS connections,
# ROUNDS interleaved rounds). Prints points/s, p50/p99 and the proxy's CPU seconds per GB for:
#   none         auth.mode = "none"
#   token        a Bearer token
#   password     Basic user:password (argon2, cached after the first check)
#   token+limits a token with request and byte limits high enough never to refuse
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
export RIG="${RIG:-$REPO/../shared/rig}"
export RIG_TMP="${RIG_TMP:-/tmp/rig}"
ROUNDS="${ROUNDS:-3}" CONNS="${CONNS:-8}" DURATION="${DURATION:-8s}"
BIN="$REPO/target/release/influx-write-proxy"
(cd "$REPO" && cargo build --release --locked -q)
"$RIG/services.sh" start sink >/dev/null
mkdir -p "$RIG_TMP/bodies"
BODY="$RIG_TMP/bodies/lines-5000.lp"
[[ -s "$BODY" ]] || python3 "$RIG/gen_lines.py" 5000 >"$BODY"
export BODY

TOKEN="bench-token-0123456789abcdef"
PHC="$(printf 'bench-password' | "$BIN" hash-secret)"
write_config() { # name auth-section
    cat >"$RIG_TMP/auth-$1.toml" <<TOML
[server]
listen = "127.0.0.1:18099"
$2
[clusters.default]
nodes = ["http://127.0.0.1:18086"]
TOML
}
write_config none '[auth]
mode = "none"'
PROXY_AUTH="[auth]
mode = \"proxy\"
[[auth.tokens]]
name = \"bench-token\"
token = \"$TOKEN\"
databases = [\"*\"]
[[auth.users]]
username = \"bench\"
password = '$PHC'
databases = [\"*\"]"
write_config token "$PROXY_AUTH"
write_config password "$PROXY_AUTH"
write_config limits "$PROXY_AUTH
[rate_limit]
requests_per_second = 1000000
bytes_per_second = \"100GB\""

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # name config authorization
    "$BIN" --config "$RIG_TMP/auth-$2.toml" >"$RIG_TMP/auth-proxy.log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18099/ping && break; sleep 0.1; done
    AUTHORIZATION="$3" wrk -t1 -c"$CONNS" -d2s -s "$HERE/auth.lua" 'http://127.0.0.1:18099/write?db=bench' >/dev/null
    local c0; c0=$(cpu "$pid")
    local out; out=$(AUTHORIZATION="$3" wrk -t1 -c"$CONNS" -d"$DURATION" -s "$HERE/auth.lua" 'http://127.0.0.1:18099/write?db=bench')
    local c1; c1=$(cpu "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    grep '^WRK_RESULT' <<<"$out" | python3 -c '
import sys
f = dict(kv.split("=") for kv in sys.stdin.read().split()[1:])
name, ticks, clk = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
mb = float(f["mb_per_s"]) * float(f["duration_s"])
bad = int(f["err_status"]) + int(f["err_connect"]) + int(f["err_read"])
pts, p50, p99 = float(f["points_per_s"]) / 1e6, float(f["p50_ms"]), float(f["p99_ms"])
print("%-14s %8.2f Mpoints/s  p50 %6.2f ms  p99 %6.2f ms  cpu %5.2f s/GB  errors %d" % (name, pts, p50, p99, ticks / clk / (mb / 1000), bad))
' "$1" "$((c1 - c0))" "$(getconf CLK_TCK)"
}
for round in $(seq "$ROUNDS"); do
    echo "# round $round"
    run none none ""
    run token token "Bearer $TOKEN"
    run password password "Basic $(printf 'bench:bench-password' | base64)"
    run token+limits limits "Bearer $TOKEN"
done
