#!/usr/bin/env bash
# Builds the Debian package and checks it as an operator installs it (deploy/README.md):
# dpkg -i, `influx-write-proxy check` on the installed config, `systemd-analyze verify` on the
# installed unit, --help, then dpkg -r, which must leave nothing behind but the conffile, and
# dpkg --purge, which must take that too.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
command -v systemd-analyze >/dev/null 2>&1 || {
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends systemd >/dev/null
}

deb="$(./scripts/package-deb.sh)"
echo "package: $deb"
conffile=/etc/influx-write-proxy/proxy.toml
unit=/usr/lib/systemd/system/influx-write-proxy.service
mapfile -t files < <(dpkg-deb --contents "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $NF); print $NF }')
printf '  %s\n' "${files[@]}"
for want in /usr/bin/influx-write-proxy "$conffile" "$unit"; do
    printf '%s\n' "${files[@]}" | grep -qx "$want" || { echo "the package lacks $want" >&2; exit 1; }
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx "$conffile" ||
    { echo "$conffile is not a conffile" >&2; exit 1; }

"${sudo[@]}" dpkg -i "$deb"
/usr/bin/influx-write-proxy check --config "$conffile"
/usr/bin/influx-write-proxy --help >/dev/null
# `verify` loads the unit as systemd would (no running systemd needed) and fails on any
# warning about it: unknown keys, bad values, a missing ExecStart binary.
out="$(systemd-analyze verify "$unit" 2>&1)" || { echo "$out" >&2; exit 1; }
if grep -q "influx-write-proxy" <<<"$out"; then echo "$out" >&2; exit 1; fi
# The hardening holds: systemd's own exposure score (0 best, 10 worst) at most 2.0.
systemd-analyze security --offline=yes --threshold=20 "$unit" | tail -1
echo "installed, checked and verified"

"${sudo[@]}" dpkg -r influx-write-proxy
left=()
for f in "${files[@]}"; do
    [[ $f == "$conffile" ]] && continue
    [[ -e $f || -L $f ]] && left+=("$f")
done
while IFS= read -r f; do left+=("$f"); done < <(find /etc/systemd /usr/lib/systemd/system /lib/systemd/system \
    /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
    -name 'influx-write-proxy*' 2>/dev/null)
if ((${#left[@]})); then printf 'left behind by dpkg -r: %s\n' "${left[@]}" >&2; exit 1; fi
[[ -f $conffile ]] || { echo "dpkg -r removed the conffile" >&2; exit 1; }
"${sudo[@]}" dpkg --purge influx-write-proxy
[[ ! -e $conffile ]] || { echo "dpkg --purge left $conffile" >&2; exit 1; }
echo "removed: only the conffile stayed until purge"
