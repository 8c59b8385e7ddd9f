#!/usr/bin/env bash
# The release binary both the Debian package and the container image ship:
# target/dist/influx-write-proxy, built from Cargo.lock, debug symbols stripped (the copy in
# target/release keeps them, for perf). deploy/Dockerfile runs this same script, so the
# build scripts/check-deb.sh installs and tests is the build the image gets.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
mkdir -p target/dist
strip -o target/dist/influx-write-proxy target/release/influx-write-proxy
