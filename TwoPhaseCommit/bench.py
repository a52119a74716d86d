"""What 2PC costs and what it buys: against calling the two services one after the other.

    python TwoPhaseCommit/bench.py                 # about a minute
    python TwoPhaseCommit/bench.py --orders 100    # quicker

Part 1, throughput and latency: the same orders through the 2PC Coordinator
and through sequential_baseline.py (no votes, no log), at 1, 8 and 32
concurrent clients, with messages and fsyncs per order counted by the services.
Part 2, crashes: orders at 8 clients while the participants, taking turns, are
killed -9 and restarted at random intervals of a few hundred milliseconds; afterwards, count the
orders that ended half done (committed at one service, not at the other).
Fresh databases for every run (in out/bench/, git-ignored); everything on
this machine, in this run. Each target prints PASS or FAIL, then a
`headline:` line and `targets: N of M met`; exits 1 when any target is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from twopc_cluster import OUT_DIR, Cluster, ServiceDown, fresh_workdir

CONCURRENCY = (1, 8, 32)
STOCK = "pizza=1000000"
RIDERS = 20_000
CRASH_CLIENTS = 8
PROTOCOLS = {"2PC": "Coordinator.py", "sequential": "sequential_baseline.py"}
PARTICIPANT_ARGS = ("--in-doubt-after", "0.3", "--ask-max", "1")
COORDINATOR_ARGS = ("--retry-interval", "0.1", "--retry-max", "1")
ORDER = {"item": "pizza", "quantity": 1, "address": "1 Bench Road"}
TARGET_RATIO_AT_32 = 0.8  # 2PC's throughput at 32 clients, as a fraction of the baseline's


@dataclass
class Run:
    protocol: str
    clients: int
    orders: int
    seconds: float
    latencies_ms: list[float]
    messages: int
    fsyncs: int
    committed: int

    @property
    def rate(self) -> float:
        return self.orders / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def new_cluster(protocol: str, workdir: Path) -> Cluster:
    return Cluster(
        workdir,
        STOCK,
        RIDERS,
        PARTICIPANT_ARGS,
        COORDINATOR_ARGS if protocol == "2PC" else (),
        coordinator_script=PROTOCOLS[protocol],
    )


def post_order(session: requests.Session, url: str) -> dict:
    """One ORDER; no answer becomes {"outcome": "error"}, which counts as not committed."""
    try:
        return session.post(url + "/orders", json=ORDER, timeout=30).json()
    except (requests.RequestException, ValueError) as err:
        return {"outcome": "error", "reason": str(err)}


def place_orders(url: str, orders: int, clients: int) -> tuple[float, list[float], list[dict]]:
    """`orders` orders from `clients` threads, each with its own keep-alive session."""
    local = threading.local()

    def one(_: int) -> tuple[float, dict]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        reply = post_order(local.session, url)
        return (time.perf_counter() - started) * 1000, reply

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(orders)))
    return time.perf_counter() - started, [ms for ms, _ in results], [r for _, r in results]


def measure(protocol: str, clients: int, orders: int, workdir: Path) -> Run:
    with new_cluster(protocol, workdir) as cluster:
        place_orders(cluster.coordinator.url, max(10, clients), clients)  # warm up connections
        fsyncs_before, messages_before = cluster.fsyncs_and_messages()
        seconds, latencies, replies = place_orders(cluster.coordinator.url, orders, clients)
        fsyncs_after, messages_after = cluster.fsyncs_and_messages()
    return Run(
        protocol,
        clients,
        orders,
        seconds,
        latencies,
        messages_after - messages_before,
        fsyncs_after - fsyncs_before,
        sum(r.get("outcome") == "committed" for r in replies),
    )


@dataclass
class CrashRun:
    protocol: str
    orders: int
    kills: int
    committed: int
    half_done: int
    stuck_prepared: bool


def under_crashes(
    protocol: str, seconds: float, kill_every: float, seed: int, workdir: Path
) -> CrashRun:
    """Orders from CRASH_CLIENTS clients for `seconds` while participants die and reboot."""
    rng = random.Random(seed)
    cluster = new_cluster(protocol, workdir)
    replies: list[dict] = []
    with cluster:
        deadline = time.monotonic() + seconds

        def client() -> None:
            session = requests.Session()
            while time.monotonic() < deadline:
                replies.append(post_order(session, cluster.coordinator.url))

        clients = [threading.Thread(target=client) for _ in range(CRASH_CLIENTS)]
        for c in clients:
            c.start()
        kills = 0
        while time.monotonic() + kill_every < deadline:
            time.sleep(rng.uniform(0.5, 1.5) * kill_every)
            # Take turns, so both services die equally often whatever the seed.
            victim = (cluster.inventory, cluster.delivery)[kills % 2]
            victim.kill()
            kills += 1
            victim.start()  # same port, same database: a reboot
        for c in clients:
            c.join()
        # 2PC finishes what was in doubt; the baseline has nothing to finish.
        settled = cluster.wait_until_settled(timeout=30)
        half_done = len(cluster.half_done())
    committed = sum(r.get("outcome") == "committed" for r in replies)
    return CrashRun(protocol, len(replies), kills, committed, half_done, not settled)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}"
    )


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        first, *rest = (
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print(("  " + "  ".join([first, *rest])).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300, help="orders per run (default 300)")
    parser.add_argument(
        "--crash-seconds", type=float, default=8.0, help="length of each crash run (default 8)"
    )
    parser.add_argument(
        "--kill-every", type=float, default=0.5, help="mean seconds between kills (default 0.5)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed for the kill schedule")
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR / "bench",
        help="folder for the runs' databases (default TwoPhaseCommit/out/bench)",
    )
    args = parser.parse_args(argv)
    if not 10 <= args.orders <= 100_000:
        parser.error(f"--orders must be 10..100000, got {args.orders}")
    if not 0.05 <= args.kill_every <= 60 or not 1 <= args.crash_seconds <= 600:
        parser.error("--kill-every must be 0.05..60 s and --crash-seconds 1..600 s")

    print(f"Machine: {machine()}")
    runs: dict[tuple[str, int], Run] = {}
    crash_runs = []
    try:
        for clients in CONCURRENCY:
            for protocol in PROTOCOLS:
                print(f"  {protocol}, {clients} client(s), {args.orders} orders ...", flush=True)
                workdir = fresh_workdir(args.out / f"{protocol}-{clients}")
                runs[protocol, clients] = measure(protocol, clients, args.orders, workdir)
        for protocol in PROTOCOLS:
            print(f"  {protocol}, {args.crash_seconds:g} s of orders with kills ...", flush=True)
            workdir = fresh_workdir(args.out / f"{protocol}-crashes")
            crash_runs.append(
                under_crashes(protocol, args.crash_seconds, args.kill_every, args.seed, workdir)
            )
    except ServiceDown as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    print(f"\n1. Throughput and latency: {args.orders} orders per row, fresh databases")
    rows = []
    for clients in CONCURRENCY:
        tpc, seq = runs["2PC", clients], runs["sequential", clients]
        for run in (tpc, seq):
            rows.append(
                [
                    run.protocol,
                    str(clients),
                    f"{run.rate:,.0f}",
                    f"{run.percentile(0.5):.1f}",
                    f"{run.percentile(0.99):.1f}",
                    f"{run.messages / run.orders:.1f}",
                    f"{run.fsyncs / run.orders:.1f}",
                    f"{run.committed}/{run.orders}",
                ]
            )
        rows.append(
            [
                "2PC / sequential",
                str(clients),
                f"{tpc.rate / seq.rate:.2f}x",
                f"{tpc.percentile(0.5) / seq.percentile(0.5):.2f}x",
                f"{tpc.percentile(0.99) / seq.percentile(0.99):.2f}x",
                f"{tpc.messages / seq.messages:.2f}x",
                f"{tpc.fsyncs / seq.fsyncs:.2f}x",
                "",
            ]
        )
    print_table(
        [
            "protocol",
            "clients",
            "orders/s",
            "p50 ms",
            "p99 ms",
            "messages/order",
            "fsyncs/order",
            "committed",
        ],
        rows,
    )
    print("  (a message is one request or one reply between services; fsyncs are SQLite commits)")

    print(
        f"\n2. Under crashes: {CRASH_CLIENTS} clients order for {args.crash_seconds:g} s while a "
        f"participant (taking turns) is killed -9 and restarted about every {args.kill_every:g} s "
        f"(seed {args.seed})"
    )
    print_table(
        [
            "protocol",
            "orders",
            "kills",
            "committed",
            "not committed",
            "half done",
            "still PREPARED",
        ],
        [
            [
                c.protocol,
                str(c.orders),
                str(c.kills),
                str(c.committed),
                str(c.orders - c.committed),
                str(c.half_done),
                "yes" if c.stuck_prepared else "no",
            ]
            for c in crash_runs
        ],
    )
    tpc_crash, seq_crash = crash_runs
    ratio_at_32 = runs["2PC", 32].rate / runs["sequential", 32].rate
    targets = [
        (tpc_crash.half_done == 0, f"2PC left {tpc_crash.half_done} orders half done under kills"),
        (not tpc_crash.stuck_prepared, "2PC left nothing PREPARED once every process was back"),
        (
            ratio_at_32 >= TARGET_RATIO_AT_32,
            f"2PC ran at {ratio_at_32:.2f}x the baseline's throughput at 32 clients "
            f"(target >= {TARGET_RATIO_AT_32:g}x)",
        ),
    ]
    print()
    for met, claim in targets:
        print(f"{'PASS' if met else 'FAIL'}  {claim}")
    print(
        f"headline: under kills 2PC left {tpc_crash.half_done} orders half done, the sequential "
        f"calls {seq_crash.half_done}; at 32 clients 2PC ran at {ratio_at_32:.2f}x their "
        f"throughput, paying {runs['2PC', 32].fsyncs / runs['sequential', 32].fsyncs:.1f}x the "
        "fsyncs"
    )
    met = sum(ok for ok, _ in targets)
    print(f"targets: {met} of {len(targets)} met")
    return 0 if met == len(targets) else 1


if __name__ == "__main__":
    sys.exit(main())
