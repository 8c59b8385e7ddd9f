#!/usr/bin/env bash
# Checks deploy/: every Kubernetes manifest against the API schemas (kubernetes-validate
# --strict, from PyPI, schemas carried offline), and the proxy.toml inside each ConfigMap
# with `influx-write-proxy check` (TLS paths pointed at a throwaway certificate, secrets
# from dummy environment variables), plus the cross-references the schemas cannot see.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
    echo "installing kubernetes-validate (PyPI)" >&2
    python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null; }
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
fi
command -v openssl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

manifests=(deploy/kubernetes/*/*.yaml)
# CRDs (ServiceMonitor) and Kustomization have no built-in schema: warned, checked below.
python3 -m kubernetes_validate --strict --quiet "${manifests[@]}"

cargo build --locked --quiet
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=validate -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>/dev/null

python3 - "$tmp" "${manifests[@]}" <<'PY'
import os, re, subprocess, sys, yaml

tmp, files = sys.argv[1], sys.argv[2:]
docs = [d for f in files for d in yaml.safe_load_all(open(f)) if d]
kinds = {}
for d in docs:
    kinds.setdefault(d["kind"], []).append(d)
env = dict(os.environ, TELEGRAF_TOKEN="x" * 32, INFLUX_USERNAME="u", INFLUX_PASSWORD="p")
failed = False

UNITS = {"": 1, "k": 1000, "K": 1000, "kB": 1000, "KB": 1000, "MB": 10**6, "GB": 10**9,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
         "M": 10**6, "G": 10**9}

def size(text):
    """A proxy.toml size ("640MiB", "25MB", 1000) or a Kubernetes quantity ("768Mi")."""
    m = re.fullmatch(r'\s*"?(\d+)\s*([A-Za-z]*)"?\s*', str(text))
    return int(m.group(1)) * UNITS[m.group(2)]

def inflight(text):
    m = re.search(r'^\s*max_inflight_bytes\s*=\s*("[^"]*"|\d+)', text, re.M)
    return size(m.group(1)) if m else 512 * 2**20

def durations(text, key):
    m = re.search(rf'^\s*{key}\s*=\s*"(\d+)s"', text, re.M)
    return int(m.group(1)) if m else 25

for cm in kinds.get("ConfigMap", []):
    toml = cm["data"].get("proxy.toml")
    if toml is None:
        continue
    toml = toml.replace("/etc/influx-write-proxy/tls/", tmp + "/")
    toml = re.sub(r'dir = "/var/spool/[^"]*"', f'dir = "{tmp}/spool"', toml)
    path = os.path.join(tmp, cm["metadata"]["name"] + ".toml")
    open(path, "w").write(toml)
    out = subprocess.run(["target/debug/influx-write-proxy", "check", "--config", path],
                         env=env, capture_output=True, text=True)
    print(f'{cm["metadata"]["name"]}: proxy.toml: {out.stdout.strip()}')
    failed |= out.returncode != 0
    grace = durations(toml, "shutdown_grace")
    for dep in kinds.get("Deployment", []):
        spec = dep["spec"]["template"]["spec"]
        if any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in spec["volumes"]):
            tgps = spec.get("terminationGracePeriodSeconds", 30)
            if tgps <= grace:
                print(f'{dep["metadata"]["name"]}: terminationGracePeriodSeconds {tgps} <= shutdown_grace {grace}s')
                failed = True
            # SPEC §4.1: RSS stays under max_inflight_bytes + 64 MiB; the limit must allow it.
            need = inflight(toml) + 64 * 2**20
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                if not c["image"].startswith("influx-write-proxy"):
                    continue
                limit = c.get("resources", {}).get("limits", {}).get("memory")
                if limit is None or size(limit) < need:
                    print(f'{dep["metadata"]["name"]}/{c["name"]}: memory limit {limit} < max_inflight_bytes + 64 MiB ({need // 2**20} MiB)')
                    failed = True
                else:
                    print(f'{dep["metadata"]["name"]}/{c["name"]}: memory limit {limit} >= max_inflight_bytes + 64 MiB ({need // 2**20} MiB)')

services = kinds.get("Service", [])
for sm in kinds.get("ServiceMonitor", []):
    ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in ports or ep.get("path") != "/metrics":
            print(f'ServiceMonitor {sm["metadata"]["name"]}: endpoint {ep} matches no Service port /metrics')
            failed = True

for dep in kinds.get("Deployment", []):
    spec = dep["spec"]["template"]["spec"]
    proxies = [c for c in spec.get("containers", []) + spec.get("initContainers", [])
               if c["image"].startswith("influx-write-proxy")]
    for c in proxies:
        sc = c.get("securityContext", {})
        probes = {c.get("readinessProbe", {}).get("httpGet", {}).get("path"),
                  c.get("livenessProbe", {}).get("httpGet", {}).get("path")}
        if not (sc.get("readOnlyRootFilesystem") and sc.get("capabilities", {}).get("drop") == ["ALL"]
                and probes == {"/ready", "/live"}):
            print(f'{dep["metadata"]["name"]}/{c["name"]}: needs read-only root, dropped capabilities, /ready and /live probes')
            failed = True

print("deploy: FAILED" if failed else "deploy: manifests and configs OK")
sys.exit(1 if failed else 0)
PY
