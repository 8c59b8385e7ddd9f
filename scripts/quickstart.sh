#!/usr/bin/env bash
# A first run on a bare Debian box: installs Debian's influxdb (and curl) when missing, starts
# an influxd of its own in a temporary directory on a free port (never one you run), starts
# the proxy in front of it with the quick-start config (proxy.toml), writes a sample batch
# through the proxy, reads it back from influxd, prints where to point Telegraf, and keeps
# both running until Ctrl-C, then removes everything it made.
#   ./scripts/quickstart.sh                     (QUICKSTART_ONESHOT=1: stop after the check)
# The proxy binary: built with cargo when this is a checkout with a Rust toolchain, else the
# installed `influx-write-proxy` (the Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    say "installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if command -v cargo >/dev/null 2>&1 && [[ -f Cargo.toml ]]; then
    say "building the proxy (cargo build --release; a few minutes the first time)"
    cargo build --release --locked --quiet
    bin=target/release/influx-write-proxy
elif command -v influx-write-proxy >/dev/null 2>&1; then
    bin="$(command -v influx-write-proxy)"
else
    echo "no Rust toolchain (https://rustup.rs) and no installed influx-write-proxy package" >&2
    exit 1
fi

# A port nothing listens on (bash's /dev/tcp: no extra tools needed).
free_port() {
    local port
    for port in $(shuf -i 20000-60000 -n 100); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    exit 1
}
wait_for() { # URL, what
    for _ in $(seq 300); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "$2 did not answer $1 within 30 s; its log: $tmp/$3" >&2
    exit 1
}

tmp="$(mktemp -d -t iwp-quickstart-XXXXXX)"
pids=()
cleanup() {
    trap - EXIT INT TERM
    say "stopping and cleaning up $tmp"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

influx_port="$(free_port)"
cat >"$tmp/influxd.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$(free_port)"
[meta]
  dir = "$tmp/influxd/meta"
[data]
  dir = "$tmp/influxd/data"
  wal-dir = "$tmp/influxd/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$influx_port"
  log-enabled = false
[logging]
  level = "warn"
[monitor]
  store-enabled = false
CONF
say "starting influxd on 127.0.0.1:$influx_port (data in $tmp)"
influxd -config "$tmp/influxd.conf" >"$tmp/influxd.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$influx_port/ping" influxd influxd.log

proxy_port=8087
(exec 3<>/dev/tcp/127.0.0.1/8087) 2>/dev/null && proxy_port="$(free_port)"
sed -e "s|^listen = \"127.0.0.1:8087\"|listen = \"127.0.0.1:$proxy_port\"|" \
    -e "s|^nodes = \\[\"http://127.0.0.1:8086\"\\]|nodes = [\"http://127.0.0.1:$influx_port\"]|" \
    -e "s|^dir = \"spool\"|dir = \"$tmp/spool\"|" proxy.toml >"$tmp/proxy.toml"
"$bin" check --config "$tmp/proxy.toml" >/dev/null
say "starting the proxy on 127.0.0.1:$proxy_port in front of it ($tmp/proxy.toml)"
"$bin" --config "$tmp/proxy.toml" >"$tmp/proxy.log" 2>&1 &
pids+=($!)
proxy="http://127.0.0.1:$proxy_port"
wait_for "$proxy/ping" "the proxy" proxy.log

# Databases are made on the cluster: the proxy answers Telegraf's CREATE DATABASE at start-up
# without touching it (README, "Other endpoints").
say "CREATE DATABASE quickstart, on influxd"
curl -fsS -XPOST "http://127.0.0.1:$influx_port/query" --data-urlencode 'q=CREATE DATABASE quickstart' >/dev/null
now="$(date +%s)"
batch="cpu,host=web-1,region=eu usage_idle=97.5,usage_user=1.25 $now
cpu,host=web-2,region=eu usage_idle=88.0,usage_user=9.5 $now
mem,host=web-1 used_percent=41.2,available=6871947673i $now
disk,host=web-1,path=/ used_percent=63.1
"
say "writing 4 points through the proxy (the last one without a timestamp: the proxy stamps it)"
printf '%s' "$batch" | sed 's/^/    /'
status="$(curl -sS -o "$tmp/answer" -w '%{http_code}' -XPOST "$proxy/write?db=quickstart&precision=s" --data-binary "$batch")"
[[ $status == 204 ]] || { echo "the write was answered $status: $(cat "$tmp/answer")" >&2; exit 1; }
echo "    answered 204"

say "reading them back from influxd itself (not through the proxy)"
answer="$(curl -fsS -G "http://127.0.0.1:$influx_port/query" --data-urlencode db=quickstart \
    --data-urlencode 'q=SELECT * FROM cpu, mem, disk')"
echo "    $answer"
for want in '"name":"cpu"' '"name":"mem"' '"name":"disk"' '97.5' '6871947673' '63.1'; do
    grep -qF "$want" <<<"$answer" || { echo "influxd does not have $want" >&2; exit 1; }
done
count="$(grep -o '"20[0-9-]*T[^"]*"' <<<"$answer" | wc -l)"
[[ $count == 4 ]] || { echo "influxd holds $count points, not 4" >&2; exit 1; }
echo "    all 4 points are in InfluxDB"

cat <<TEXT

The proxy is running at $proxy, in front of the influxd at http://127.0.0.1:$influx_port.
Point Telegraf at it (telegraf.conf):

    [[outputs.influxdb]]
      urls = ["$proxy"]
      database = "telegraf"

or write with curl:

    curl -i -XPOST '$proxy/write?db=quickstart' --data-binary 'cpu,host=a usage=0.5'

Logs: $tmp/proxy.log, $tmp/influxd.log. Metrics: $proxy/metrics.
In front of your own InfluxDB instead: cargo run --release -- --config proxy.toml
TEXT
if [[ -n ${QUICKSTART_ONESHOT:-} ]]; then
    exit 0
fi
say "running; Ctrl-C stops both and removes $tmp"
while kill -0 "${pids[1]}" 2>/dev/null; do sleep 1; done
echo "the proxy exited; its log:" >&2
tail -20 "$tmp/proxy.log" >&2
exit 1
