#!/usr/bin/env bash
# bench/tls.sh: the cost of TLS termination. Two proxies in front of the rig's C sink, the
# same config but one with [server.tls] (ECDSA P-256 certificate, TLS 1.3 via wrk/OpenSSL):
# interleaved rounds of wrk posting 5,000-line batches, so the ratio comes from one sitting.
#
#   bench/tls.sh                   # 3 rounds, 8 and 64 connections, 6 s each
#   ROUNDS=1 CONNS=8 bench/tls.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
RIG="${RIG:-$REPO/../shared/rig}"
export RIG_TMP="${RIG_TMP:-/tmp/rig}"
[[ -x "$RIG/bench.sh" ]] || { echo "rig not found at $RIG (set RIG=...)" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

(cd "$REPO" && cargo build --release --locked -q)
dir="$RIG_TMP/tls-bench"
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
for variant in plain tls; do
    port=$([[ $variant == plain ]] && echo 18096 || echo 18098)
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\n' "$port"
        [[ $variant == tls ]] && printf '[server.tls]\ncert_file = "%s/tls.crt"\nkey_file = "%s/tls.key"\n' "$dir" "$dir"
        printf '[clusters.default]\nnodes = ["http://127.0.0.1:18086"]\n'
    } >"$dir/$variant.toml"
done

"$RIG/services.sh" start sink >/dev/null
"$REPO/target/release/influx-write-proxy" --config "$dir/plain.toml" >"$dir/plain.log" 2>&1 &
PLAIN=$!
"$REPO/target/release/influx-write-proxy" --config "$dir/tls.toml" >"$dir/tls.log" 2>&1 &
TLS=$!
trap 'kill $PLAIN $TLS 2>/dev/null || true; "$RIG/services.sh" stop sink >/dev/null' EXIT
sleep 0.5

header=
for round in $(seq "${ROUNDS:-3}"); do
    echo "== round $round"
    for variant in plain tls; do
        if [[ $variant == plain ]]; then url="http://127.0.0.1:18096/write?db=bench"; pid=$PLAIN
        else url="https://127.0.0.1:18098/write?db=bench"; pid=$TLS; fi
        CONNS="${CONNS:-8 64}" DURATION="${DURATION:-6s}" WARMUP=1s NOHEADER=$header \
            RESULTS="$REPO/bench/results-tls-$(date +%F).jsonl" TAG="round$round" \
            "$RIG/bench.sh" "proxy-$variant" "$url" "$pid"
        header=1
    done
done
