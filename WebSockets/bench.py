"""WebSockets, measured: echo round trips, fan-out to 1,000 clients, push vs polling.

1. Echo: round trips per second and p50/p99 latency over one connection to a
   Server.py subprocess (the server in its own process, as in production).
2. Broadcast fan-out: 1,000 clients connected to one Server.py process; one
   of them sends 50 messages one after another; for each, the time from send
   to the moment the last of the 1,000 clients has it, and a count of every
   message received (none may be lost or duplicated).
3. Push vs polling at P = 100 ms, 100 updates: latency and bytes, with the
   issue's targets (push p50 at least 50x lower, at least 4x fewer bytes).

    python WebSockets/bench.py                # about 20 s on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import polling_vs_websocket
import websockets
from polling_vs_websocket import percentile, print_rows
from websockets.asyncio.client import ClientConnection, connect

HERE = Path(__file__).resolve().parent
TARGET_LATENCY_RATIO = 50.0
TARGET_BYTE_RATIO = 4.0
CONNECT_CONCURRENCY = 50  # handshakes in flight at once, below the listen backlog
MAX_ROUND_TRIPS = 1_000_000
MAX_CLIENTS = 5_000  # one socket each in this process and in the server's: file descriptors
MAX_BROADCASTS = 10_000


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"websockets {websockets.__version__}, load average {load:.2f}"
    )


def progress(text: str) -> None:
    """One line rewritten in place on a terminal; silent when output is captured."""
    if sys.stdout.isatty():
        print(f"\r{text:<40}", end="" if text else "\r", flush=True)


class ServerUnderTest:
    """Server.py in its own process on a free port."""

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "Server.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("Listening on "):
            self.proc.kill()
            raise RuntimeError(f"Server.py did not start: {line!r}")
        return line.split()[-1]

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def echo_bench(url: str, count: int) -> dict[str, float]:
    message = "x" * 32
    async with connect(f"{url}/echo") as ws:
        for _ in range(200):  # warm up
            await ws.send(message)
            await ws.recv()
        latencies = []
        started = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            await ws.send(message)
            await ws.recv()
            latencies.append((time.perf_counter() - sent) * 1000)
        elapsed = time.perf_counter() - started
    return {
        "per_second": count / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


async def fan_out_bench(url: str, clients: int, broadcasts: int) -> dict[str, float]:
    """Connect `clients` to /broadcast, send `broadcasts` messages one at a time."""
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def join() -> ClientConnection:
        async with limit:
            return await connect(f"{url}/broadcast", open_timeout=30, ping_interval=None)

    print(f"  connecting {clients:,} clients...", end="", flush=True)
    connections = await asyncio.gather(*(join() for _ in range(clients)))
    print(" done", flush=True)
    # last_arrival[n]: when the slowest client so far got broadcast n;
    # got[n]: how many clients have it (each client counts each message once).
    got = [0] * broadcasts
    last_arrival = [0.0] * broadcasts
    extra = 0
    everyone_has = [asyncio.Event() for _ in range(broadcasts)]

    async def read(ws: ClientConnection) -> None:
        nonlocal extra
        seen: set[int] = set()
        async for message in ws:
            n = json.loads(message)["n"]
            if n in seen:
                extra += 1
                continue
            seen.add(n)
            got[n] += 1
            last_arrival[n] = time.perf_counter()
            if got[n] == clients:
                everyone_has[n].set()

    readers = [asyncio.create_task(read(ws)) for ws in connections]
    await asyncio.sleep(0.5)  # every handler has joined the room
    fan_out_ms = []
    sender = connections[0]
    try:
        for n in range(broadcasts):
            sent = time.perf_counter()
            await sender.send(json.dumps({"n": n, "pad": "x" * 64}))
            try:
                await asyncio.wait_for(everyone_has[n].wait(), timeout=10)
            except TimeoutError:
                break  # counted as lost below
            fan_out_ms.append((last_arrival[n] - sent) * 1000)
            progress(f"  broadcast {n + 1}/{broadcasts}")
        progress("")
        await asyncio.sleep(0.2)  # room for any duplicate to show up
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    expected = clients * broadcasts
    received = sum(got)
    return {
        "clients": clients,
        "broadcasts": broadcasts,
        "p50": percentile(fan_out_ms, 50) if fan_out_ms else float("nan"),
        "p99": percentile(fan_out_ms, 99) if fan_out_ms else float("nan"),
        "max": max(fan_out_ms, default=float("nan")),
        "expected": expected,
        "received": received,
        "lost": expected - received,
        "duplicates": extra,
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main_async(args: argparse.Namespace) -> int:
    print(f"Machine: {machine()}")
    with ServerUnderTest() as url:
        print(f"\n1. Echo round trips over one connection ({args.round_trips:,}, 32-byte text)")
        echo = await echo_bench(url, args.round_trips)
        print_rows(
            [
                ("round trips/s", "p50 (ms)", "p99 (ms)"),
                (f"{echo['per_second']:,.0f}", f"{echo['p50']:.3f}", f"{echo['p99']:.3f}"),
            ]
        )

    with ServerUnderTest() as url:
        print(
            f"\n2. Broadcast fan-out: {args.clients:,} clients, {args.broadcasts} broadcasts, "
            "one server process"
        )
        fan = await fan_out_bench(url, args.clients, args.broadcasts)
    print_rows(
        [
            ("clients", "p50 (ms)", "p99 (ms)", "max (ms)", "delivered", "lost", "duplicates"),
            (
                f"{fan['clients']:,}",
                f"{fan['p50']:.1f}",
                f"{fan['p99']:.1f}",
                f"{fan['max']:.1f}",
                f"{fan['received']:,}/{fan['expected']:,}",
                f"{fan['lost']:,}",
                f"{fan['duplicates']:,}",
            ),
        ]
    )
    print("  (time from send to the last client's receipt; the clients share one process)")

    print(f"\n3. Push vs polling: {args.updates} updates, polling every {args.poll_ms:g} ms")
    polling, push = await polling_vs_websocket.compare(args.updates, args.poll_ms)
    polling_vs_websocket.print_table(polling, push, args.poll_ms)

    latency_ratio = polling.percentile(50) / push.percentile(50)
    byte_ratio = polling.traffic.total / push.traffic.total
    checks = [
        (
            f"push p50 latency >= {TARGET_LATENCY_RATIO:g}x lower than polling",
            f"{latency_ratio:.0f}x",
            latency_ratio >= TARGET_LATENCY_RATIO,
        ),
        (
            f"push >= {TARGET_BYTE_RATIO:g}x fewer bytes than polling",
            f"{byte_ratio:.1f}x",
            byte_ratio >= TARGET_BYTE_RATIO,
        ),
        (
            f"{fan['clients']:,} clients: every broadcast reaches every client once",
            f"{fan['lost']} lost, {fan['duplicates']} duplicated",
            fan["lost"] == 0 and fan["duplicates"] == 0,
        ),
    ]
    print("\nTargets")
    print_rows([("target", "measured", "")] + [(t, m, verdict(ok)) for t, m, ok in checks])
    met = sum(ok for _, _, ok in checks)
    print(
        f"\nheadline: push p50 {push.percentile(50):.2f} ms vs {polling.percentile(50):.1f} ms "
        f"polling every {args.poll_ms:g} ms ({latency_ratio:.0f}x), {byte_ratio:.1f}x fewer bytes; "
        f"{fan['clients']:,} clients fan-out p99 {fan['p99']:.1f} ms, {fan['lost']} lost"
    )
    print(f"targets: {met} of {len(checks)} met")
    return 0 if met == len(checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--round-trips", type=int, default=10_000, help="echo round trips")
    parser.add_argument("--clients", type=int, default=1000, help="clients in the fan-out")
    parser.add_argument("--broadcasts", type=int, default=50, help="broadcasts in the fan-out")
    parser.add_argument("--updates", type=int, default=100, help="updates in push vs polling")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="polling interval")
    args = parser.parse_args(argv)
    for flag, value, most in (
        ("--round-trips", args.round_trips, MAX_ROUND_TRIPS),
        ("--clients", args.clients, MAX_CLIENTS),
        ("--broadcasts", args.broadcasts, MAX_BROADCASTS),
    ):
        if not 1 <= value <= most:
            parser.error(f"{flag} must be in 1..{most:,}, got {value}")
    polling_vs_websocket.check_run(
        parser, args.updates, args.poll_ms, polling_vs_websocket.DEFAULT_MEAN_GAP_MS
    )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
