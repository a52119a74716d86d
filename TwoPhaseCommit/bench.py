"""What 2PC costs and what it buys: against calling the two services one after the other.

    python TwoPhaseCommit/bench.py                 # about two minutes
    python TwoPhaseCommit/bench.py --orders 100    # quicker

1. Cost per order, counted: forced writes (fsyncs the VFS saw) and messages
   for a committed and an aborted order, beside presumed abort's theory.
2. Throughput and latency at 1, 8 and 32 concurrent clients, 2PC against
   sequential_baseline.py (no votes, no log), same run, fresh databases.
3. Chaos: 8 clients order while the participants, taking turns, lose power
   (kill -9 with --volatile-cache) and messages are dropped, duplicated and
   reordered; afterwards, count orders half done (committed at one service only).
4. The PostgreSQL participant's latency beside SQLite's (if PostgreSQL 15 is
   installed: the bench starts a private cluster under out/bench/).
Databases go to out/bench/ (git-ignored). Each target prints PASS or FAIL,
then a `headline:` line and `targets: N of M met`; exits 1 when any is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from twopc_cluster import OUT_DIR, Cluster, ServiceDown, fresh_workdir

CONCURRENCY = (1, 8, 32)
ROUNDS = 2  # interleaved runs per protocol and concurrency; the best is kept
STOCK = "pizza=1000000"
RIDERS = 20_000
CHAOS_CLIENTS = 8
PROTOCOLS = {"2PC": "Coordinator.py", "sequential": "sequential_baseline.py"}
# In doubt after 3 s: well above a loaded order's latency, so nobody asks in vain.
PARTICIPANT_ARGS = ("--in-doubt-after", "3", "--ask-max", "5")
# Under chaos, doubt is worth asking about quickly, and every kill is a power cut.
CHAOS_PARTICIPANT_ARGS = ("--in-doubt-after", "0.3", "--ask-max", "1", "--volatile-cache")
COORDINATOR_ARGS = ("--retry-interval", "0.1", "--retry-max", "1")
MESSAGE_FAULTS = {"drop": 0.05, "duplicate": 0.1, "reorder": 0.2}
ORDER = {"item": "pizza", "quantity": 1, "address": "1 Bench Road"}
TARGET_RATIO_AT_32 = 0.8  # 2PC's throughput at 32 clients, as a fraction of the baseline's
COST_ORDERS = 20  # orders counted, committed and aborted each, for part 1
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin/"


# -- placing orders -----------------------------------------------------------------------


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def new_cluster(protocol: str, workdir: Path, participant_args=PARTICIPANT_ARGS, **kw) -> Cluster:
    return Cluster(
        workdir,
        STOCK,
        RIDERS,
        participant_args,
        COORDINATOR_ARGS if protocol == "2PC" else (),
        coordinator_script=PROTOCOLS[protocol],
        **kw,
    )


# -- 1. what one order costs --------------------------------------------------------------


@dataclass
class Cost:
    what: str
    forced_writes: float  # per order, all three processes
    messages: float  # per order, between the services
    theory: str


def cost_per_order(workdir: Path) -> list[Cost]:
    """Orders one at a time, counted by the services themselves (forced writes: the VFS)."""
    costs = []
    for protocol, vote_no in (("2PC", False), ("2PC", True), ("sequential", False)):
        with new_cluster(protocol, fresh_workdir(workdir / f"{protocol}-{vote_no}")) as cluster:
            if vote_no:
                cluster.delivery.post("/admin/faults", {"vote_no": True})
            session = requests.Session()
            before = cluster.fsyncs_and_messages()
            replies = [post_order(session, cluster.coordinator.url) for _ in range(COST_ORDERS)]
            cluster.wait_until_settled()
            after = cluster.fsyncs_and_messages()
        expected = "aborted" if vote_no else "committed"
        if protocol == "2PC" and any(r.get("outcome") != expected for r in replies):
            raise ServiceDown(f"part 1 expected every order {expected}: {replies[:3]}")
        forced, messages = ((a - b) / COST_ORDERS for a, b in zip(after, before, strict=True))
        if protocol == "sequential":
            costs.append(Cost("sequential, done", forced, messages, "2 writes, 4 messages"))
        elif vote_no:
            theory = "1 write (the yes), 5 messages (2 prepares, 2 votes, 1 abort)"
            costs.append(Cost("2PC, aborted (a no)", forced, messages, theory))
        else:
            theory = "N+1 = 3 writes; 4N = 8 messages (prepare, vote, commit, ack)"
            costs.append(Cost("2PC, committed", forced, messages, theory))
    return costs


# -- 2. throughput and latency ------------------------------------------------------------


@dataclass
class Run:
    protocol: str
    clients: int
    orders: int
    seconds: float
    latencies_ms: list[float]
    messages: int
    forced_writes: int
    committed: int

    @property
    def rate(self) -> float:
        return self.orders / self.seconds


def measure(protocol: str, clients: int, orders: int, workdir: Path, **kw) -> Run:
    with new_cluster(protocol, workdir, **kw) as cluster:
        place_orders(cluster.coordinator.url, max(10, clients), clients)  # warm up connections
        forced_before, messages_before = cluster.fsyncs_and_messages()
        seconds, latencies, replies = place_orders(cluster.coordinator.url, orders, clients)
        forced_after, messages_after = cluster.fsyncs_and_messages()
    return Run(
        protocol,
        clients,
        orders,
        seconds,
        latencies,
        messages_after - messages_before,
        forced_after - forced_before,
        sum(r.get("outcome") == "committed" for r in replies),
    )


# -- 3. chaos: power cuts and message faults -----------------------------------------------


@dataclass
class ChaosRun:
    protocol: str
    orders: int
    power_cuts: int
    committed: int
    half_done: int
    stuck_prepared: bool


def under_chaos(
    protocol: str, seconds: float, kill_every: float, seed: int, workdir: Path
) -> ChaosRun:
    """Orders from CHAOS_CLIENTS clients for `seconds` while participants lose power and
    every process's messages are dropped, duplicated and reordered."""
    rng = random.Random(seed)
    cluster = new_cluster(protocol, workdir, participant_args=CHAOS_PARTICIPANT_ARGS)
    replies: list[dict] = []
    with cluster:
        for n, service in enumerate(cluster.services.values()):
            service.post("/admin/faults", {"messages": {**MESSAGE_FAULTS, "seed": seed + n}})
        deadline = time.monotonic() + seconds

        def client() -> None:
            session = requests.Session()
            while time.monotonic() < deadline:
                replies.append(post_order(session, cluster.coordinator.url))

        clients = [threading.Thread(target=client) for _ in range(CHAOS_CLIENTS)]
        for c in clients:
            c.start()
        cuts = 0
        while time.monotonic() + kill_every < deadline:
            time.sleep(rng.uniform(0.5, 1.5) * kill_every)
            # Take turns, so both services lose power equally often whatever the seed.
            victim = (cluster.inventory, cluster.delivery)[cuts % 2]
            victim.kill()  # with --volatile-cache: a power cut
            cuts += 1
            victim.start()  # same port, same database: a reboot
            victim.post("/admin/faults", {"messages": {**MESSAGE_FAULTS, "seed": seed + cuts}})
        for c in clients:
            c.join()
        for service in cluster.services.values():  # heal, then let 2PC finish what is in doubt
            service.post("/admin/faults", {"messages": {"heal": True}})
        settled = cluster.wait_until_settled(timeout=30)
        half_done = len(cluster.half_done())
    committed = sum(r.get("outcome") == "committed" for r in replies)
    return ChaosRun(protocol, len(replies), cuts, committed, half_done, not settled)


# -- 4. PostgreSQL as the participant --------------------------------------------------------


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port, under out/bench/.

    PostgreSQL refuses to run as root, so under root it runs as nobody, in a
    fresh folder of /tmp that nobody owns (and that stop() deletes): nobody
    may not be able to reach out/ at all, and opening the way to it would
    mean loosening the permissions of every folder above the repository.
    """

    def __init__(self, directory: Path) -> None:
        bins = sorted(Path("/").glob(POSTGRES_GLOB.lstrip("/")))
        if not bins:
            raise FileNotFoundError("PostgreSQL is not installed (make setup installs it)")
        self.bin = bins[-1]
        self.as_user: dict = {}
        self.temporary: Path | None = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            directory = self.temporary = Path(tempfile.mkdtemp(prefix="twopc-bench-postgres-"))
            os.chown(directory, user.pw_uid, user.pw_gid)
            self.as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        else:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        self.data = directory / "data"
        try:
            initdb = [self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust"]
            subprocess.run(
                [*initdb, "--no-sync"],
                capture_output=True,
                check=True,
                timeout=120,
                **self.as_user,
            )
        except (OSError, subprocess.SubprocessError):
            if self.temporary is not None:
                shutil.rmtree(self.temporary, ignore_errors=True)
            raise
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        settings = ["-c", "max_prepared_transactions=64", "-c", "unix_socket_directories="]
        self.proc = subprocess.Popen(
            [self.bin / "postgres", "-D", self.data, "-p", str(self.port), *settings],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **self.as_user,
        )
        import psycopg  # only here: the rest of the bench never needs it

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)


def postgres_beside_sqlite(orders: int, workdir: Path) -> tuple[Run, Run] | str:
    """2PC at 1 client with inventory on SQLite, then on PostgreSQL; or why it was skipped."""
    sqlite = measure("2PC", 1, orders, fresh_workdir(workdir / "sqlite"))
    try:
        postgres = PrivatePostgres(workdir / "postgres")
    except (OSError, subprocess.SubprocessError) as err:
        return f"skipped: {err}"
    try:
        on_postgres = measure(
            "2PC", 1, orders, fresh_workdir(workdir / "pg-run"), inventory_dsn=postgres.dsn
        )
    finally:
        postgres.stop()
    return sqlite, on_postgres


# -- output ---------------------------------------------------------------------------------


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


def print_costs(costs: list[Cost]) -> None:
    print(f"\n1. What one order costs: {COST_ORDERS} orders one at a time, counted by the services")
    print_table(
        ["order", "forced writes", "messages", "presumed abort's theory (N = 2 participants)"],
        [[c.what, f"{c.forced_writes:.1f}", f"{c.messages:.1f}", c.theory] for c in costs],
    )
    print(
        "  (Gray & Lamport, Consensus on Transaction Commit: 2PC forces N+1 writes on the "
        "commit path; the messages here include the acknowledgements)"
    )


def print_throughput(runs: dict[tuple[str, int], Run], orders: int) -> None:
    print(
        f"\n2. Throughput and latency: {orders} orders per run, fresh databases, "
        f"best of {ROUNDS} interleaved runs"
    )
    rows = []
    for clients in CONCURRENCY:
        tpc, seq = runs["2PC", clients], runs["sequential", clients]
        for run in (tpc, seq):
            rows.append(
                [
                    run.protocol,
                    str(clients),
                    f"{run.rate:,.0f}",
                    f"{percentile(run.latencies_ms, 0.5):.1f}",
                    f"{percentile(run.latencies_ms, 0.99):.1f}",
                    f"{run.messages / run.orders:.1f}",
                    f"{run.forced_writes / run.orders:.1f}",
                    f"{run.committed}/{run.orders}",
                ]
            )
        rows.append(
            [
                "2PC / sequential",
                str(clients),
                f"{tpc.rate / seq.rate:.2f}x",
                f"{percentile(tpc.latencies_ms, 0.5) / percentile(seq.latencies_ms, 0.5):.2f}x",
                f"{percentile(tpc.latencies_ms, 0.99) / percentile(seq.latencies_ms, 0.99):.2f}x",
                f"{tpc.messages / seq.messages:.2f}x",
                f"{tpc.forced_writes / seq.forced_writes:.2f}x",
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
            "forced/order",
            "committed",
        ],
        rows,
    )
    print(
        "  (under load, one message carries the prepares or the commits of several orders "
        "(batching) and one fsync their votes or decisions (group commit): 2PC falls below 3 and 8)"
    )


def print_chaos(chaos: list[ChaosRun], seconds: float, kill_every: float, seed: int) -> None:
    faults = ", ".join(f"{k} {v:g}" for k, v in MESSAGE_FAULTS.items())
    print(
        f"\n3. Chaos: {CHAOS_CLIENTS} clients order for {seconds:g} s while a participant "
        f"(taking turns) loses power about every {kill_every:g} s; messages: {faults} "
        f"(seed {seed})"
    )
    print_table(
        ["protocol", "orders", "power cuts", "committed", "half done", "still PREPARED"],
        [
            [
                c.protocol,
                str(c.orders),
                str(c.power_cuts),
                str(c.committed),
                str(c.half_done),
                "yes" if c.stuck_prepared else "no",
            ]
            for c in chaos
        ],
    )


def print_postgres(result: tuple[Run, Run] | str, orders: int) -> None:
    print(f"\n4. The inventory on SQLite and on PostgreSQL: 2PC, 1 client, {orders} orders")
    if isinstance(result, str):
        print(f"  {result}")
        return
    print_table(
        ["inventory store", "orders/s", "p50 ms", "p99 ms", "forced/order"],
        [
            [
                name,
                f"{run.rate:,.0f}",
                f"{percentile(run.latencies_ms, 0.5):.1f}",
                f"{percentile(run.latencies_ms, 0.99):.1f}",
                f"{run.forced_writes / run.orders:.1f}",
            ]
            for name, run in zip(("SQLite (our VFS)", "PostgreSQL 2PC"), result, strict=True)
        ],
    )
    print("  (on PostgreSQL, inventory's forced writes are its WAL fsyncs: pg_stat_wal.wal_sync)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300, help="orders per run (default 300)")
    parser.add_argument(
        "--chaos-seconds", type=float, default=8.0, help="length of each chaos run (default 8)"
    )
    parser.add_argument(
        "--kill-every", type=float, default=0.5, help="mean seconds between power cuts (0.5)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed for the chaos")
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR / "bench",
        help="folder for the runs' databases (default TwoPhaseCommit/out/bench)",
    )
    args = parser.parse_args(argv)
    if not 10 <= args.orders <= 100_000:
        parser.error(f"--orders must be 10..100000, got {args.orders}")
    if not 0.05 <= args.kill_every <= 60 or not 1 <= args.chaos_seconds <= 600:
        parser.error("--kill-every must be 0.05..60 s and --chaos-seconds 1..600 s")
    if not 0 <= args.seed < 2**32:
        parser.error("--seed must be 0..2**32-1")

    try:
        fresh_workdir(args.out)
    except OSError as err:
        parser.error(f"--out: cannot use {args.out}: {err.strerror}")
    print(f"Machine: {machine()}")
    runs: dict[tuple[str, int], Run] = {}
    try:
        print("  counting the cost of single orders ...", flush=True)
        costs = cost_per_order(args.out / "cost")
        for clients in CONCURRENCY:
            # Interleaved rounds, each protocol's best kept: a burst of load from
            # elsewhere on the machine then hurts both, not whichever ran during it.
            for round_ in range(1, ROUNDS + 1):
                for protocol in PROTOCOLS:
                    print(
                        f"  {protocol}, {clients} client(s), {args.orders} orders, "
                        f"round {round_} of {ROUNDS} ...",
                        flush=True,
                    )
                    workdir = fresh_workdir(args.out / f"{protocol}-{clients}")
                    run = measure(protocol, clients, args.orders, workdir)
                    best = runs.get((protocol, clients))
                    if best is None or run.rate > best.rate:
                        runs[protocol, clients] = run
        chaos = []
        for protocol in PROTOCOLS:
            print(f"  {protocol}, {args.chaos_seconds:g} s of chaos ...", flush=True)
            workdir = fresh_workdir(args.out / f"{protocol}-chaos")
            chaos.append(
                under_chaos(protocol, args.chaos_seconds, args.kill_every, args.seed, workdir)
            )
        print("  the inventory on SQLite, then on PostgreSQL ...", flush=True)
        postgres = postgres_beside_sqlite(min(args.orders, 200), args.out / "postgres")
    except ServiceDown as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    print_costs(costs)
    print_throughput(runs, args.orders)
    print_chaos(chaos, args.chaos_seconds, args.kill_every, args.seed)
    print_postgres(postgres, min(args.orders, 200))

    committed_cost = costs[0]
    tpc_chaos, seq_chaos = chaos
    # Three decimals where it is judged: 0.795 printed as "0.80x" beside FAIL looked met.
    ratio_at_32 = runs["2PC", 32].rate / runs["sequential", 32].rate
    targets = [
        (
            committed_cost.forced_writes == 3,
            f"2PC forced {committed_cost.forced_writes:g} writes per committed order "
            "(presumed abort, N+1 = 3)",
        ),
        (costs[1].forced_writes <= 1, f"2PC forced {costs[1].forced_writes:g} per aborted order"),
        (tpc_chaos.half_done == 0, f"2PC left {tpc_chaos.half_done} orders half done in chaos"),
        (not tpc_chaos.stuck_prepared, "2PC left nothing PREPARED once the chaos was healed"),
        (
            ratio_at_32 >= TARGET_RATIO_AT_32,
            f"2PC ran at {ratio_at_32:.3f}x the baseline's throughput at 32 clients "
            f"(target >= {TARGET_RATIO_AT_32:g}x)",
        ),
    ]
    print()
    for met, claim in targets:
        print(f"{'PASS' if met else 'FAIL'}  {claim}")
    print(
        f"headline: power cuts and lossy messages left 2PC with {tpc_chaos.half_done} orders "
        f"half done and the sequential calls with {seq_chaos.half_done}; 2PC forced "
        f"{committed_cost.forced_writes:g} writes per order and ran at {ratio_at_32:.3f}x their "
        "throughput at 32 clients"
    )
    met = sum(ok for ok, _ in targets)
    print(f"targets: {met} of {len(targets)} met")
    return 0 if met == len(targets) else 1


if __name__ == "__main__":
    sys.exit(main())
