"""SimpleCDN benchmark: a Zipf workload straight to an 80 ms origin vs through the edge.

    python SimpleCDN/bench.py                      # 20,000 requests, 2,000 objects, 16 clients
    python SimpleCDN/bench.py --requests 5000      # a quicker run

Runs, in one go and on this machine:
  direct      the clients ask the origin themselves (the peer: no CDN at all)
  edge, cold  the same workload through a freshly started edge
  edge, warm  the same workload again, now that the edge holds the popular objects
  coalescing  100 clients ask for one uncached object at the same moment
and prints hit ratio, origin requests, requests/s and p50/p99 latency, the
ratios to direct, PASS/FAIL for each target, a `headline:` line and
`targets: N of M met` (exit 1 when any target is missed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ORIGIN_LATENCY_MS = 80
OBJECT_BYTES = 2048
ZIPF_EXPONENT = 1.0  # popularity of the k-th object ~ 1/k: a few pages get most traffic
DIRECT_REQUESTS = 2000  # direct runs cost 80 ms each; this many give a stable p50/p99
COALESCE_CLIENTS = 100
TARGET_P50_RATIO = 20.0  # warm-edge p50 at least 20x lower than direct
TARGET_ORIGIN_SHARE = 0.15  # origin requests at most 15% of client requests


@dataclass
class Run:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    hits: int
    origin_requests: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start(script: str, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("Listening on "):
        proc.kill()
        raise SystemExit(f"{script} did not start: {line!r}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    return proc, line.split()[-1]


def object_path(number: int) -> str:
    return f"/respond?obj={number}&cc=max-age%3D3600&size={OBJECT_BYTES}"


def zipf_workload(requests: int, objects: int, seed: int) -> list[str]:
    weights = [1 / (rank**ZIPF_EXPONENT) for rank in range(1, objects + 1)]
    return [
        object_path(n) for n in random.Random(seed).choices(range(objects), weights, k=requests)
    ]


def origin_requests(origin_url: str) -> int:
    parts = urlsplit(origin_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/__origin/stats")
    total = int(json.loads(conn.getresponse().read())["requests"])
    conn.close()
    return total


def drive(name: str, base_url: str, paths: list[str], clients: int, origin_url: str) -> Run:
    """`clients` threads, each with one kept-alive connection, share the list of paths."""
    parts = urlsplit(base_url)
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    hits = 0
    before = origin_requests(origin_url)

    def client() -> None:
        nonlocal next_index, hits
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine: list[float] = []
        my_hits = 0
        while True:
            with lock:
                index, next_index = next_index, next_index + 1
            if index >= len(paths):
                break
            started = time.perf_counter()
            conn.request("GET", paths[index])
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            my_hits += response.getheader("X-Cache") in ("HIT", "STALE")
        conn.close()
        with lock:
            latencies.extend(mine)
            hits += my_hits

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    run = Run(name, len(paths), seconds, latencies, hits, origin_requests(origin_url) - before)
    print(f"  {name:<11} {len(paths):>6} requests in {seconds:5.1f} s", flush=True)
    return run


def coalescing(edge_url: str, origin_url: str) -> int:
    """100 clients, released together, ask the edge for one object nobody has asked for."""
    parts = urlsplit(edge_url)
    path = f"/respond?coalesce={random.random()}&cc=max-age%3D3600&size={OBJECT_BYTES}"
    barrier = threading.Barrier(COALESCE_CLIENTS)
    statuses: list[int] = []
    before = origin_requests(origin_url)

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.connect()
        barrier.wait()
        conn.request("GET", path)
        statuses.append(conn.getresponse().status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(COALESCE_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if statuses.count(200) != COALESCE_CLIENTS:
        print(f"  coalescing: only {statuses.count(200)} of {COALESCE_CLIENTS} got a 200")
    return origin_requests(origin_url) - before


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Zipf workload: direct to origin vs via the edge.")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per edge run")
    parser.add_argument("--objects", type=int, default=2_000, help="distinct objects")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--direct-requests",
        type=int,
        default=DIRECT_REQUESTS,
        help="requests for the direct run (each waits 80 ms)",
    )
    parser.add_argument("--seed", type=int, default=1, help="workload random seed")
    args = parser.parse_args(argv)
    if min(args.requests, args.objects, args.clients, args.direct_requests) < 1:
        parser.error("--requests, --objects, --clients and --direct-requests must be positive")

    print(f"machine: {machine()}")
    print(
        f"workload: Zipf s={ZIPF_EXPONENT} over {args.objects} objects of {OBJECT_BYTES} B, "
        f"{args.clients} clients, origin latency {ORIGIN_LATENCY_MS} ms"
    )
    origin, origin_url = start("origin_server.py", "--latency-ms", str(ORIGIN_LATENCY_MS))
    edge, edge_url = start("cdn_server.py", "--origin", origin_url)
    try:
        workload = zipf_workload(args.requests, args.objects, args.seed)
        direct_paths = zipf_workload(args.direct_requests, args.objects, args.seed + 1)
        runs = [
            drive("direct", origin_url, direct_paths, args.clients, origin_url),
            drive("edge, cold", edge_url, workload, args.clients, origin_url),
            drive("edge, warm", edge_url, workload, args.clients, origin_url),
        ]
        coalesced = coalescing(edge_url, origin_url)
    finally:
        for proc in (edge, origin):
            proc.terminate()
            proc.wait(timeout=10)

    direct = runs[0]
    print()
    print(
        "| run | requests | hit ratio | origin requests | req/s | p50 ms | p99 ms "
        "| p50 vs direct | req/s vs direct |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        share = f"{run.origin_requests} ({run.origin_requests / run.requests:.1%})"
        p50_vs = f"{direct.percentile(0.5) / run.percentile(0.5):.1f}x lower"
        rate_vs = f"{run.rate / direct.rate:.1f}x"
        if run is direct:
            p50_vs = rate_vs = "(the peer)"
        print(
            f"| {run.name} | {run.requests} | {run.hits / run.requests:.1%} | {share} "
            f"| {run.rate:,.0f} | {run.percentile(0.5):.2f} | {run.percentile(0.99):.2f} "
            f"| {p50_vs} | {rate_vs} |"
        )
    print(
        f"| coalescing: {COALESCE_CLIENTS} concurrent cold requests | {COALESCE_CLIENTS} | "
        f"| {coalesced} | | | | | |"
    )

    cold, warm = runs[1], runs[2]
    p50_ratio = direct.percentile(0.5) / warm.percentile(0.5)
    origin_share = cold.origin_requests / cold.requests
    checks = [
        (
            f"warm-edge p50 >= {TARGET_P50_RATIO:.0f}x lower than direct",
            p50_ratio >= TARGET_P50_RATIO,
            f"{p50_ratio:.1f}x ({warm.percentile(0.5):.2f} ms vs {direct.percentile(0.5):.1f} ms)",
        ),
        (
            f"origin requests <= {TARGET_ORIGIN_SHARE:.0%} of client requests (cold edge)",
            origin_share <= TARGET_ORIGIN_SHARE,
            f"{origin_share:.1%}",
        ),
        (
            f"{COALESCE_CLIENTS} concurrent cold requests -> exactly 1 origin request",
            coalesced == 1,
            f"{coalesced} origin request(s)",
        ),
    ]
    print()
    for label, ok, measured in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {measured}")
    met = sum(ok for _, ok, _ in checks)
    print(
        f"headline: a warm edge answers in {statistics.median(warm.latencies_ms):.2f} ms "
        f"vs {statistics.median(direct.latencies_ms):.1f} ms straight from the origin "
        f"({p50_ratio:.0f}x lower p50), and a cold one sends the origin {origin_share:.1%} "
        "of requests"
    )
    print(f"targets: {met} of {len(checks)} met")
    return 0 if met == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
