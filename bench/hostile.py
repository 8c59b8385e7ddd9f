#!/usr/bin/env python3
"""Hostile clients against a proxy binary, on loopback: the figures of the README's
"Hostile input" paragraph and of issue 15.

    bench/hostile.py target/release/influx-write-proxy

Starts the binary (auth mode `proxy`: a token, an argon2 user, a plain-password user;
`header_read_timeout = "2s"` for the first measurement, "60s" for the others; no upstream is needed, nothing is forwarded) and measures:

1. connections held past the head deadline: 500 that send `PRI` and then nothing, 500 that
   send a whole HTTP/2 preface and SETTINGS but never a stream, and 100 that send
   `PRIX /ping HTTP/1.1` and then a byte every 0.5 s; counted 5 s later;
2. argon2 hashes spent on 1,000 concurrent unknown-user guesses from one address (the
   proxy's CPU time over the CPU time of one failed check), and how long a first login from
   another address waits meanwhile;
3. the median 401 latency (200 each, interleaved, each from an address of its own) for a
   wrong token, a plain-password user, an argon2 user and an unknown user.

Every request goes to 127.0.0.1; clients bind to 127.1.x.y so the per-address login throttle
sees them as distinct where the measurement needs it. Bounded in count and time.
"""

import base64
import http.client
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PLAIN_PASSWORD = "bob-plain-password"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hash_password(binary, password):
    out = subprocess.run([binary, "hash-secret"], input=password.encode(), capture_output=True, check=True)
    return out.stdout.decode().strip()


def start(binary, workdir, header_read_timeout):
    port = free_port()
    config = os.path.join(workdir, f"proxy-{port}.toml")
    with open(config, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{port}"
header_read_timeout = "{header_read_timeout}"
[auth]
mode = "proxy"
[[auth.tokens]]
name = "t"
token = "a-token-of-the-bench-0123456789"
databases = ["*"]
[[auth.users]]
username = "alice"
password = "{hash_password(binary, 'alice-password')}"
databases = ["*"]
[[auth.users]]
username = "bob"
password = "{PLAIN_PASSWORD}"
databases = ["*"]
[clusters.default]
nodes = ["http://127.0.0.1:9"]
"""
        )
    proc = subprocess.Popen([binary, "--config", config], stderr=open(os.environ.get("HOSTILE_LOG", os.devnull), "w"), stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("the proxy did not start")


def source(n):
    """The n-th client address, 127.1.x.y."""
    return f"127.1.{(n // 250) % 250}.{n % 250 + 1}"


def still_open(sockets):
    """How many of `sockets` the peer has not closed (whatever it sent is read first)."""
    open_ = 0
    for s in sockets:
        s.setblocking(False)
        try:
            while True:
                if not s.recv(65536):
                    break
        except BlockingIOError:
            open_ += 1
        except OSError:
            pass
    return open_


def held_connections(port):
    results = {}
    for name, first in [
        ("PRI", b"PRI"),
        ("h2 preface, no stream", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    ]:
        socks = []
        for _ in range(500):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(first)
            socks.append(s)
        time.sleep(5)
        results[name] = (still_open(socks), len(socks))
        for s in socks:
            s.close()
    socks = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"PRIX /ping HTTP/1.1\r\n")
        socks.append(s)
    deadline = time.time() + 5
    while time.time() < deadline:
        for s in socks:
            try:
                s.send(b"X")
            except OSError:
                pass
        time.sleep(0.5)
    results["PRIX drip"] = (still_open(socks), len(socks))
    for s in socks:
        s.close()
    return results


def request(port, headers, src, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(src, 0))
    started = time.perf_counter()
    try:
        conn.request("POST", "/write?db=d", body=b"m v=1 1", headers=headers)
        status = conn.getresponse().status
    except OSError:
        status = None
    finally:
        conn.close()
    return status, time.perf_counter() - started


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hash_cost(pid, port):
    """CPU seconds one failed password check costs the proxy (20 in a row, each from an
    address of its own)."""
    before = cpu_seconds(pid)
    for n in range(20):
        request(port, basic("mallory", "x"), source(5000 + n))
    return (cpu_seconds(pid) - before) / 20


def flood(pid, port):
    """1,000 guesses whose heads all arrive within a few milliseconds: every connection is
    opened and sent all but the end of its head first, then the ends go out in one loop."""
    per_hash = hash_cost(pid, port)
    socks = []
    for i in range(1000):
        auth = basic(f"nobody-{i}", "x")["Authorization"]
        head = (
            f"POST /write?db=d HTTP/1.1\r\nHost: proxy\r\nAuthorization: {auth}\r\n"
            "Content-Length: 7\r\n\r\nm v=1 1"
        ).encode()
        s = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source(1), 0))
        s.sendall(head[:-11])
        socks.append((s, head[-11:]))
    before = cpu_seconds(pid)
    for s, rest in socks:
        s.sendall(rest)
    time.sleep(0.05)
    # A first login from another address, on an endpoint that needs no upstream.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source(2), 0))
    started = time.perf_counter()
    conn.request("POST", "/query?q=CREATE+DATABASE+d", headers=basic("alice", "alice-password"))
    status = conn.getresponse().status
    waited = time.perf_counter() - started
    conn.close()
    statuses = []
    for s, _ in socks:
        try:
            answer = s.recv(64)
            statuses.append(int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else None)
        except OSError:
            statuses.append(None)
        s.close()
    hashes = (cpu_seconds(pid) - before) / per_hash
    return hashes, statuses.count(401), statuses.count(429), status, waited


def medians(port):
    kinds = {
        "wrong token": lambda: {"Authorization": "Token not-the-token-0123456789"},
        "plain user": lambda: basic("bob", "wrong"),
        "argon2 user": lambda: basic("alice", "wrong"),
        "unknown user": lambda: basic("mallory", "wrong"),
    }
    samples = {k: [] for k in kinds}
    n = 10
    for _ in range(200):
        for kind, headers in kinds.items():
            n += 1
            status, took = request(port, headers(), source(n))
            assert status == 401, (kind, status)
            samples[kind].append(took)
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start(binary, workdir, "2s")
        try:
            for name, (open_, total) in held_connections(port).items():
                print(f"held past header_read_timeout (2 s) after 5 s: {name}: {open_} of {total}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        # Opening 1,000 connections takes seconds: give their heads the time.
        proc, port = start(binary, workdir, "60s")
        try:
            hashes, unauthorized, throttled, status, waited = flood(proc.pid, port)
            print(
                f"1,000 concurrent unknown-user guesses from one address: ~{hashes:.0f} argon2 hashes "
                f"(proxy CPU / CPU per hash), answered {unauthorized} x 401 and {throttled} x 429; "
                f"a first login from another address meanwhile: {status} after {waited * 1000:.0f} ms"
            )
            for kind, ms in medians(port).items():
                print(f"median 401 latency, {kind}: {ms:.2f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
