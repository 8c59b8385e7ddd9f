#!/usr/bin/env bash
# bench/tls.sh: the cost of TLS termination. Two proxies in front of the rig's C sink, the
# same config but one with [server.tls] (ECDSA P-256 certificate, TLS 1.3 via wrk/OpenSSL),
# and nginx terminating TLS with the same certificate as the reference (bench/nginx-tls.conf):
# interleaved rounds of wrk posting 5,000-line batches, so the ratios come from one sitting.
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
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }

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

mkdir -p "$dir/nginx"
sed -e "s#__RUN__#$dir/nginx#g" -e "s#__CERT__#$dir#g" "$HERE/nginx-tls.conf" >"$dir/nginx/nginx.conf"
"$RIG/services.sh" start sink >/dev/null
nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx"
NGINX=$(cat "$dir/nginx/nginx.pid")
"$REPO/target/release/influx-write-proxy" --config "$dir/plain.toml" >"$dir/plain.log" 2>&1 &
PLAIN=$!
"$REPO/target/release/influx-write-proxy" --config "$dir/tls.toml" >"$dir/tls.log" 2>&1 &
TLS=$!
trap 'kill $PLAIN $TLS 2>/dev/null || true; kill -QUIT $NGINX 2>/dev/null || true; "$RIG/services.sh" stop sink >/dev/null' EXIT
sleep 0.5

header=
for round in $(seq "${ROUNDS:-3}"); do
    echo "== round $round"
    for variant in proxy-plain proxy-tls nginx-tls; do
        case $variant in
            proxy-plain) url="http://127.0.0.1:18096/write?db=bench"; pid=$PLAIN ;;
            proxy-tls) url="https://127.0.0.1:18098/write?db=bench"; pid=$TLS ;;
            nginx-tls) url="https://127.0.0.1:18099/write?db=bench"; pid=$NGINX ;;
        esac
        CONNS="${CONNS:-8 64}" DURATION="${DURATION:-6s}" WARMUP=1s NOHEADER=$header \
            RESULTS="$REPO/bench/results-tls-$(date +%F).jsonl" TAG="round$round" \
            "$RIG/bench.sh" "$variant" "$url" "$pid"
        header=1
    done
done
