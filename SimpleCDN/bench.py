"""SimpleCDN benchmark: what the edge saves, how fast it hits beside nginx and Varnish, its memory.

    python SimpleCDN/bench.py                      # the whole run, about 2 minutes
    python SimpleCDN/bench.py --requests 5000      # a quicker Zipf part

Runs, in one go and on this machine:
  1. what a CDN saves: a Zipf workload straight to an origin 80 ms away (the
     peer: no CDN), then through a cold edge, then the same edge warm; and
     100 clients asking for one uncached object at the same moment;
  2. how fast a hit is: warm-hit requests/s and p50/p99 for this edge, nginx
     `proxy_cache` and Varnish, each a private instance on a free port in
     front of the same origin_server.py, all driven by the same load
     generator (wrk), for a 512 B and a 1 MiB object (installs nginx,
     varnish and wrk with apt on first use if they are missing);
  3. memory: 20 clients download a 100 MB object at once through an edge
     with a 16 MB cache and a 16 MB in-flight budget; its peak RSS.
Prints the tables, PASS/FAIL for each target, a `headline:` line and
`targets: N of M met` (exit 1 when any target is missed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psutil

HERE = Path(__file__).resolve().parent
ORIGIN_LATENCY_MS = 80
OBJECT_BYTES = 2048
ZIPF_EXPONENT = 1.0  # popularity of the k-th object ~ 1/k: a few pages get most traffic
CLIENT_SWITCH_INTERVAL = 0.0002  # seconds a client thread may hold the GIL (see drive)
DIRECT_REQUESTS = 2000  # direct runs cost 80 ms each; this many give a stable p50/p99
COALESCE_CLIENTS = 100
# Upper bounds on the workload options, so a typo cannot ask for a billion-entry
# list or a hundred thousand threads.
MAX_REQUESTS = 1_000_000  # also the most --objects and --direct-requests
MAX_CLIENTS = 1_000
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


class LeanClient:
    """One kept-alive HTTP/1.1 connection that sends GETs and reads exactly each answer.

    The load generator must cost little beside what it measures. http.client
    parses every answer's header block with the email package: 406 us of CPU
    per request on this machine, three times what the edge spent answering
    it, so 16 such clients in one process spent the run queueing for their
    own interpreter lock, and the warm edge's p50 was mostly theirs. This
    reads the status line, the two fields it needs and the body, nothing
    more. Every answer in these runs has a Content-Length; one without is an
    error, not a guess.
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}".encode()
        self.buffer = b""

    def get(self, path: str) -> tuple[int, str]:
        """GET `path`; its status and X-Cache (empty if none), the body read and dropped."""
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), self.host))
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._receive()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.split(b"\r\n")
        status, length, cache = int(lines[0].split(b" ", 2)[1]), None, ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-cache":
                cache = value.strip().decode("latin-1")
        if length is None:
            raise ConnectionError(f"an answer without Content-Length: {head[:200]!r}")
        while len(self.buffer) < length:
            self._receive()
        self.buffer = self.buffer[length:]
        return status, cache

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


def drive(name: str, base_url: str, paths: list[str], clients: int, origin_url: str) -> Run:
    """`clients` threads, each with one kept-alive connection (a LeanClient), share the paths.

    The threads hand the interpreter lock to each other every 0.2 ms instead
    of Python's default 5 ms, so a client thread busy parsing an answer does
    not add its time slice to another's measured latency.
    """
    sys.setswitchinterval(CLIENT_SWITCH_INTERVAL)
    parts = urlsplit(base_url)
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    hits = 0
    before = origin_requests(origin_url)

    def client() -> None:
        nonlocal next_index, hits
        conn = LeanClient(parts.hostname or "127.0.0.1", parts.port or 80)
        mine: list[float] = []
        my_hits = 0
        while True:
            with lock:
                index, next_index = next_index, next_index + 1
            if index >= len(paths):
                break
            started = time.perf_counter()
            status, cache = conn.get(paths[index])
            mine.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise ConnectionError(f"{name}: {paths[index]} answered {status}")
            my_hits += cache in ("HIT", "STALE")
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


# --- part 2: warm hits beside nginx and Varnish ------------------------------------

HIT_OBJECTS = {  # name -> path on the origin; both cacheable for an hour
    "512 B": "/respond?bench=small&cc=max-age%3D3600&size=512",
    "1 MiB": "/respond?bench=large&cc=max-age%3D3600&size=1048576",
}
APT_PACKAGES = {"nginx": "nginx", "varnishd": "varnish", "wrk": "wrk"}  # binary -> package
TARGET_VS_VARNISH_SMALL = 0.5  # small-object hits/s at least half Varnish's
TARGET_VS_NGINX_SMALL = 0.25  # and a quarter of nginx's
TARGET_VS_NGINX_LARGE = 1.0  # 1 MiB hits/s at least nginx's
NGINX_CONF = """
daemon off;
master_process on;
worker_processes auto;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=edge:10m max_size=256m use_temp_path=off;
  upstream origin {{ server {origin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache edge;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"""


@dataclass
class HitRun:
    proxy: str
    obj: str
    rate: float
    p50_ms: float
    p99_ms: float
    origin_requests: int  # during the run: 0 if every request was a hit
    cpu_us: float  # CPU time the proxy spent per request, all its processes and threads


def ensure_peers() -> None:
    """Install nginx, varnish and wrk with apt if any is missing (tests never need them)."""
    missing = [package for binary, package in APT_PACKAGES.items() if not shutil.which(binary)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"bench needs {', '.join(missing)}: sudo apt-get install {' '.join(missing)}"
        )
    print(f"installing {', '.join(missing)} with apt (first run only)...", flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start listening on {port}")


def start_nginx(workdir: Path, origin_url: str) -> tuple[subprocess.Popen, str]:
    """A private nginx: its own config, cache and pid file in `workdir`, never the system's."""
    port, origin = free_port(), urlsplit(origin_url).netloc
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, origin=origin, port=port))
    proc = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(port, proc, "nginx")
    return proc, f"http://127.0.0.1:{port}"


def start_varnish(workdir: Path, origin_url: str) -> tuple[subprocess.Popen, str]:
    """A private varnishd in the foreground, its working directory in `workdir`."""
    port = free_port()
    proc = subprocess.Popen(
        ["varnishd", "-F", "-a", f"127.0.0.1:{port}", "-b", urlsplit(origin_url).netloc]
        + ["-n", str(workdir / "varnish"), "-s", "malloc,256m", "-j", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(port, proc, "varnishd")
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and everything it started (nginx's workers, Varnish's child)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def is_hit(response: http.client.HTTPResponse) -> bool:
    """Each proxy says "hit" its own way; Varnish names two transactions on a hit."""
    if response.getheader("X-Cache") == "HIT":
        return True
    return len((response.getheader("X-Varnish") or "").split()) == 2


def warm_up(base_url: str, path: str) -> None:
    parts = urlsplit(base_url)
    for _ in range(3):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        if is_hit(response):
            return
        time.sleep(0.2)
    raise SystemExit(f"{base_url}{path} never became a hit")


WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: float, connections: int) -> tuple[float, float, float]:
    """requests/s, p50 ms and p99 ms from one wrk run (one thread: the other core serves)."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    rate = WRK_RATE.search(result.stdout)
    latency = {q: float(v) * UNIT_MS[u] for q, v, u in WRK_LATENCY.findall(result.stdout)}
    if rate is None or len(latency) != 2 or "Non-2xx" in result.stdout:
        raise SystemExit(f"wrk failed against {url}:\n{result.stdout}{result.stderr}")
    return float(rate.group(1)), latency["50"], latency["99"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its children (nginx's workers...)."""
    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def hit_throughput(
    proxies: dict[str, tuple[str, int]],
    origin_url: str,
    seconds: float,
    connections: int,
    rounds: int,
) -> list[HitRun]:
    """Each proxy (name -> url, pid), each object, `rounds` times interleaved; the best counts.

    Interleaving and keeping the best treat the three alike when other work
    on the machine comes and goes. CPU time per request is the figure that
    other work on the machine does not move: requests/s is what a proxy
    does with the CPU share it gets, CPU per request is what each costs.
    """
    best: dict[tuple[str, str], HitRun] = {}
    for obj, path in HIT_OBJECTS.items():
        for url, _ in proxies.values():
            warm_up(url, path)
        for round_number in range(rounds):
            for name, (url, pid) in proxies.items():
                before, cpu_before = origin_requests(origin_url), cpu_seconds(pid)
                rate, p50, p99 = wrk(url + path, seconds, connections)
                cpu_us = (cpu_seconds(pid) - cpu_before) / (rate * seconds) * 1e6
                fetched = origin_requests(origin_url) - before
                run = HitRun(name, obj, rate, p50, p99, fetched, cpu_us)
                print(
                    f"  {obj:>6}  {name:<8} round {round_number + 1}: {rate:>9,.0f} req/s, "
                    f"{cpu_us:.0f} us CPU per request",
                    flush=True,
                )
                if (name, obj) not in best or rate > best[name, obj].rate:
                    best[name, obj] = run
    return list(best.values())


# --- part 3: memory while 20 clients stream 100 MB -----------------------------------

STREAM_CLIENTS = 20
STREAM_BYTES = 100 * 1024 * 1024
STREAM_CACHE = STREAM_INFLIGHT = 16 * 1024 * 1024
# The allowance over cache + in-flight budget: the interpreter and its
# modules (~35 MB) and what each connection's socket buffer may pin.
STREAM_MARGIN = 64 * 1024 * 1024


def stream_memory(origin_url: str) -> tuple[int, int, int, float]:
    """Peak RSS, origin requests and clients served in full while 20 stream 100 MB; seconds."""
    edge, edge_url = start(
        "cdn_server.py",
        "--origin",
        origin_url,
        "--cache-size",
        str(STREAM_CACHE),
        "--max-object-size",
        str(STREAM_CACHE // 2),
        "--max-inflight-bytes",
        str(STREAM_INFLIGHT),
    )
    parts = urlsplit(edge_url)
    path = f"/respond?stream={random.random()}&cc=max-age%3D600&size={STREAM_BYTES}&sleep_ms=1500"
    process, peak, done = psutil.Process(edge.pid), [0], threading.Event()
    complete: list[bool] = []
    barrier = threading.Barrier(STREAM_CLIENTS)

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        conn.connect()
        barrier.wait()
        conn.request("GET", path)
        response = conn.getresponse()
        received = 0
        while chunk := response.read(1024 * 1024):
            received += len(chunk)
        complete.append(received == STREAM_BYTES)
        conn.close()

    before = origin_requests(origin_url)
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        threads = [threading.Thread(target=client) for _ in range(STREAM_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        done.set()
        sampler.join()
        edge.terminate()
        edge.wait(timeout=10)
    seconds = time.perf_counter() - started
    return peak[0], origin_requests(origin_url) - before, complete.count(True), seconds


def print_hit_table(runs: list[HitRun]) -> None:
    print(
        "| object | proxy | req/s | p50 ms | p99 ms | vs nginx | vs Varnish "
        "| CPU us/request | origin requests |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    by = {(run.proxy, run.obj): run for run in runs}
    for obj in HIT_OBJECTS:
        for name in ("edge", "nginx", "varnish"):
            run = by[name, obj]
            print(
                f"| {obj} | {name} | {run.rate:,.0f} | {run.p50_ms:.2f} | {run.p99_ms:.2f} "
                f"| {run.rate / by['nginx', obj].rate:.2f}x "
                f"| {run.rate / by['varnish', obj].rate:.2f}x | {run.cpu_us:.0f} "
                f"| {run.origin_requests} |"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="What the edge saves, how fast it hits beside nginx and Varnish, its memory."
    )
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
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of each wrk run (default 5)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="wrk's open connections (default 32)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="wrk rounds per proxy and object; best counts (default 3)",
    )
    args = parser.parse_args(argv)
    sizes = {
        "--requests": (args.requests, MAX_REQUESTS),
        "--objects": (args.objects, MAX_REQUESTS),
        "--direct-requests": (args.direct_requests, MAX_REQUESTS),
        "--clients": (args.clients, MAX_CLIENTS),  # a thread each
    }
    for name, (value, most) in sizes.items():
        if not 1 <= value <= most:
            parser.error(f"{name} must be 1..{most:,}, got {value:,}")
    if not 1 <= args.seconds <= 600 or not 1 <= args.connections <= 10_000 or args.rounds < 1:
        parser.error("--seconds 1..600, --connections 1..10000 and --rounds >= 1, please")
    ensure_peers()

    print(f"machine: {machine()}")
    print(
        f"1. workload: Zipf s={ZIPF_EXPONENT} over {args.objects} objects of {OBJECT_BYTES} B, "
        f"{args.clients} clients, origin latency {ORIGIN_LATENCY_MS} ms"
    )
    origin, origin_url = start("origin_server.py", "--latency-ms", str(ORIGIN_LATENCY_MS))
    edge, edge_url = start("cdn_server.py", "--origin", origin_url)
    peers: list[subprocess.Popen] = []
    try:
        workload = zipf_workload(args.requests, args.objects, args.seed)
        direct_paths = zipf_workload(args.direct_requests, args.objects, args.seed + 1)
        runs = [
            drive("direct", origin_url, direct_paths, args.clients, origin_url),
            drive("edge, cold", edge_url, workload, args.clients, origin_url),
            drive("edge, warm", edge_url, workload, args.clients, origin_url),
        ]
        coalesced = coalescing(edge_url, origin_url)

        print(
            f"2. warm hits: wrk -t1 -c{args.connections} -d{args.seconds:g}s, "
            f"best of {args.rounds} interleaved rounds"
        )
        with tempfile.TemporaryDirectory(prefix="simplecdn-bench-") as workdir:
            nginx, nginx_url = start_nginx(Path(workdir), origin_url)
            peers.append(nginx)
            varnish, varnish_url = start_varnish(Path(workdir), origin_url)
            peers.append(varnish)
            proxies = {
                "edge": (edge_url, edge.pid),
                "nginx": (nginx_url, nginx.pid),
                "varnish": (varnish_url, varnish.pid),
            }
            hits = hit_throughput(proxies, origin_url, args.seconds, args.connections, args.rounds)
            for proc in peers:
                stop(proc)

        print(f"3. memory: {STREAM_CLIENTS} clients download {STREAM_BYTES >> 20} MB at once")
        peak_rss, stream_fetches, stream_complete, stream_seconds = stream_memory(origin_url)
    finally:
        for proc in peers:
            stop(proc)
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
    by = {(run.proxy, run.obj): run for run in hits}
    small, large = "512 B", "1 MiB"
    vs_varnish = by["edge", small].rate / by["varnish", small].rate
    vs_nginx = by["edge", small].rate / by["nginx", small].rate
    vs_nginx_large = by["edge", large].rate / by["nginx", large].rate
    rss_limit = STREAM_CACHE + STREAM_INFLIGHT + STREAM_MARGIN
    checks += [
        (
            f"512 B hits/s >= {TARGET_VS_VARNISH_SMALL}x Varnish's",
            vs_varnish >= TARGET_VS_VARNISH_SMALL,
            f"{vs_varnish:.2f}x ({by['edge', small].rate:,.0f} vs "
            f"{by['varnish', small].rate:,.0f})",
        ),
        (
            f"512 B hits/s >= {TARGET_VS_NGINX_SMALL}x nginx's",
            vs_nginx >= TARGET_VS_NGINX_SMALL,
            f"{vs_nginx:.2f}x ({by['edge', small].rate:,.0f} vs {by['nginx', small].rate:,.0f})",
        ),
        (
            f"1 MiB hits/s >= {TARGET_VS_NGINX_LARGE}x nginx's",
            vs_nginx_large >= TARGET_VS_NGINX_LARGE,
            f"{vs_nginx_large:.2f}x ({by['edge', large].rate:,.0f} vs "
            f"{by['nginx', large].rate:,.0f})",
        ),
        (
            f"{STREAM_CLIENTS} x {STREAM_BYTES >> 20} MB: one origin fetch, all complete, "
            f"peak RSS <= cache {STREAM_CACHE >> 20} + in-flight {STREAM_INFLIGHT >> 20} "
            f"+ margin {STREAM_MARGIN >> 20} MB",
            stream_fetches == 1 and stream_complete == STREAM_CLIENTS and peak_rss <= rss_limit,
            f"{peak_rss / 2**20:.0f} MB, {stream_fetches} origin fetch(es), "
            f"{stream_complete} of {STREAM_CLIENTS} complete in {stream_seconds:.1f} s",
        ),
    ]
    print()
    print_hit_table(hits)
    print()
    for label, ok, measured in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}: {measured}")
    met = sum(ok for _, ok, _ in checks)
    print(
        f"headline: {by['edge', small].rate:,.0f} warm hits/s on one core "
        f"({vs_varnish:.2f}x Varnish, {vs_nginx:.2f}x nginx; 1 MiB: {vs_nginx_large:.2f}x nginx), "
        f"p50 {statistics.median(warm.latencies_ms):.2f} ms vs "
        f"{statistics.median(direct.latencies_ms):.0f} ms direct, and "
        f"{STREAM_CLIENTS} x {STREAM_BYTES >> 20} MB streamed in {peak_rss / 2**20:.0f} MB RSS"
    )
    print(f"targets: {met} of {len(checks)} met")
    return 0 if met == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
