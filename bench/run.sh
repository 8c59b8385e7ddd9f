#!/usr/bin/env bash
# bench/run.sh: throughput and latency of influx-write-proxy against the shared rig
# (../shared/rig: a C sink that reads every body byte, wrk, nginx as the reference proxy),
# all on loopback, interleaved rounds, medians. Prints points/s, MB/s, p50/p99, CPU s/GB and
# peak RSS for the sink directly, nginx and the proxy, so overhead reads as a ratio.
#
# Scenarios (SCENARIOS, default all four, each its own matrix and table):
#   plain   5,000-line batches (~785 kB), 8 and 64 connections
#   small   10-line batches (~1.7 kB): per-request cost
#   gzip    the 5,000-line batch gzip -6 (Telegraf's encoding); the sink inflates to count lines
#   memory  256 connections of 5,000-line batches, plain and gzip, the proxy with
#           max_inflight_bytes = "128MiB": peak RSS next to nginx's
#   floor   (not in the default set) 10- and 5,000-line batches through nginx, the proxy
#           and examples/bare_forward, a hyper forwarder with nothing else (one runtime per
#           core): what hyper and tokio reach on this box bounds what the proxy can reach
#           (FLOOR_LINES="10" for the small batches only)
#
#   bench/run.sh                               # 3 rounds of each, ~15 minutes
#   SCENARIOS=small ROUNDS=1 DURATION=5s bench/run.sh   # one of them, quicker, noisier
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
mkdir -p "$RIG_TMP/bodies"
PLAIN="$RIG_TMP/bodies/lines-5000.lp"
[[ -s "$PLAIN" ]] || python3 "$RIG/gen_lines.py" 5000 >"$PLAIN"
GZ="$RIG_TMP/bodies/lines-5000.lp.gz"
gzip -6 -n -c "$PLAIN" >"$GZ"

# The proxy in front of the sink, with extra [server] lines (restarted per scenario, so
# each one's peak RSS is its own).
start_proxy() {
    stop_proxy
    cat >"$RIG_TMP/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:18096"
$1
[clusters.default]
nodes = ["http://127.0.0.1:18086"]
TOML
    "$REPO/target/release/influx-write-proxy" --config "$RIG_TMP/proxy.toml" >"$RIG_TMP/proxy.log" 2>&1 &
    echo $! >"$RIG_TMP/proxy.pid"
    for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18096/ping && break; sleep 0.1; done
}
# Stops the process whose PID is in the file, if any, and empties the file.
stop_pidfile() {
    if [[ -s "$1" ]]; then
        kill "$(cat "$1")" 2>/dev/null || true
        sleep 0.5
        : >"$1"
    fi
}
stop_proxy() { stop_pidfile "$RIG_TMP/proxy.pid"; }

# examples/bare_forward on 18097, for the floor scenario.
start_bare() {
    (cd "$REPO" && cargo build --release --locked -q --example bare_forward)
    PER_CORE="$(nproc)" "$REPO/target/release/examples/bare_forward" 127.0.0.1:18097 \
        http://127.0.0.1:18086 >"$RIG_TMP/bare.log" 2>&1 &
    echo $! >"$RIG_TMP/bare.pid"
    for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18097/ping && break; sleep 0.1; done
}
stop_bare() { stop_pidfile "$RIG_TMP/bare.pid"; }

# The sink inflates gzip bodies (-z) so that sink_fwd counts their lines too (restarted:
# one left running may lack it).
"$RIG/services.sh" stop sink >/dev/null 2>&1 || true
SINK_ARGS=-z "$RIG/services.sh" start sink
"$RIG/services.sh" start nginx
trap 'stop_proxy; stop_bare; "$RIG/services.sh" stop nginx; "$RIG/services.sh" stop sink' EXIT

scenario() { # NAME, then env assignments for matrix.sh
    local name=$1
    shift
    echo "## $name"
    env "$@" ROUNDS="${ROUNDS:-3}" RESULTS="$RIG_TMP/bench-$name-$(date +%Y%m%d-%H%M%S).jsonl" \
        "$RIG/matrix.sh" "${TARGETS:-$HERE/targets.txt}"
}

for s in ${SCENARIOS:-plain small gzip memory}; do
    case "$s" in
    plain)
        start_proxy ""
        scenario plain LINES_LIST=5000 ;;
    small)
        start_proxy ""
        scenario small LINES_LIST=10 ;;
    gzip)
        start_proxy ""
        scenario gzip LINES_LIST=5000 BODY="$GZ" CONTENT_ENCODING=gzip BODY_LINES=5000 ;;
    floor)
        start_proxy ""
        start_bare
        TARGETS="$HERE/targets-floor.txt" scenario floor LINES_LIST="${FLOOR_LINES:-10 5000}"
        stop_bare ;;
    memory)
        start_proxy 'max_inflight_bytes = "128MiB"'
        scenario memory-plain LINES_LIST=5000 CONNS=256 WRK_TIMEOUT=30s
        start_proxy 'max_inflight_bytes = "128MiB"'
        scenario memory-gzip LINES_LIST=5000 CONNS=256 WRK_TIMEOUT=30s BODY="$GZ" \
            CONTENT_ENCODING=gzip BODY_LINES=5000 ;;
    *) echo "unknown scenario $s (plain, small, gzip, memory, floor)" >&2; exit 2 ;;
    esac
done
