#!/usr/bin/env bash
# Builds target/debian/influx-write-proxy_<version>-1_<arch>.deb: the release build of
# scripts/build-release.sh, packaged by cargo-deb from [package.metadata.deb] in Cargo.toml
# (installed from crates.io when it is missing). Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (crates.io)" >&2
    cargo install cargo-deb --locked --quiet
fi
./scripts/build-release.sh >&2
cargo deb --no-build --no-strip --quiet --output target/debian/ >&2
ls -t target/debian/influx-write-proxy_*.deb | head -1
