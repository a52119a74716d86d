"""Reshard real Redis servers live: a ring on the client side, then Redis Cluster's hash slots.

1. Client-side sharding: three redis-server processes, 100,000 keys placed by
   the ring. A fourth server joins, then leaves again, while clients read and
   write: exactly the keys whose owner changed move (MIGRATE), every read
   returns the last value written, and the clients see no errors.
2. The same keyspace on a local Redis Cluster of three masters: a fourth
   master joins (`redis-cli --cluster add-node`, then `rebalance`) and leaves
   (`rebalance` to weight 0, then `del-node`), under the same load.
Then one table: keys, bytes and slots moved, seconds, client operations,
errors and wrong reads, for both. Every server runs on a private port with
its files in a temporary directory, and is stopped at the end, whatever
happens. README section "Resharding real Redis" shows a run.

    python ConsistentHashing/reshard_redis.py                  # about a minute
    python ConsistentHashing/reshard_redis.py --keys 10000 --skip-cluster
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
import redis_shards
from ConsistentHashRing import ConsistentHashRing
from redis.cluster import PRIMARY, ClusterNode, RedisCluster
from redis.crc import key_slot
from redis_shards import LoadGenerator, LoadReport, ShardedStore
from simulate_resharding import format_table

DEFAULT_KEYS = 100_000
DEFAULT_VALUE_BYTES = 100
DEFAULT_WORKERS = 4
DEFAULT_RATE = 500.0  # operations per second per worker
LIMITS = {"keys": 2_000_000, "value_bytes": 1_000_000, "workers": 64, "rate": 100_000}
MAX_DATA_BYTES = 1 << 30  # keys x value bytes: 1 GiB at most
START_TIMEOUT = 15.0  # seconds a redis-server may take to answer PING
CLI_TIMEOUT = 300.0  # seconds a redis-cli --cluster command may take
SETTLE_SECONDS = 0.5  # load runs this long before and after each move
CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on port + 10000
CLUSTER_NODE_TIMEOUT_MS = 5000


class RedisServer:
    """One private redis-server on 127.0.0.1: a free port, its own directory, no persistence."""

    def __init__(self, directory: Path, cluster: bool = False) -> None:
        self.directory = directory
        self.cluster = cluster
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self, attempts: int = 5) -> RedisServer:
        """Start it on a free port (another, if someone takes the port first) and wait for PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = free_port(CLUSTER_BUS_OFFSET if self.cluster else 0)
            command = [
                redis_binary("redis-server"),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
            ]  # fmt: skip
            if self.cluster:
                command += [
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                ]  # fmt: skip
            log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (kept for the process)
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            log.close()
            if self._wait_until_ready():
                return self
            self.stop()
        raise RuntimeError(f"redis-server would not start; see {self.directory / 'redis.log'}")

    def _wait_until_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client(socket_timeout=1)
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # it exited: most likely the port was taken meanwhile
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.05)
        return False

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port(bus_offset: int = 0) -> int:
    """A port free on 127.0.0.1 now (and port + bus_offset too, for a cluster node)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not bus_offset:
            return port
        if port + bus_offset <= 65535:
            with socket.socket() as bus, contextlib.suppress(OSError):
                bus.bind(("127.0.0.1", port + bus_offset))
                return port


def redis_binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"error: {name} is not installed (make setup installs it with apt-get)")
    return found


@contextlib.contextmanager
def servers_in(directory: Path) -> Iterator[Callable[..., RedisServer]]:
    """A factory of RedisServers under `directory`; every one is stopped on the way out."""
    started: list[RedisServer] = []

    def start(name: str, cluster: bool = False) -> RedisServer:
        server = RedisServer(directory / name, cluster)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


def say(text: str) -> None:
    print(text, flush=True)


def progress(text: str) -> None:
    """One updating line on stderr when it is a terminal (piped: nothing)."""
    if sys.stderr.isatty():
        print(f"\r   {text}".ljust(70), end="", file=sys.stderr, flush=True)


def done_progress() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)


@dataclass
class Step:
    """One row of the final table."""

    name: str
    keys_moved: int
    should_move: int  # what had to move: keys the rings, or the moved slots, place elsewhere
    bytes_moved: int
    slots_moved: int | None
    seconds: float
    load: LoadReport  # what the clients saw during this step only

    def row(self) -> list[str]:
        return [
            self.name,
            f"{self.keys_moved:,}",
            f"{self.should_move:,}",
            size_text(self.bytes_moved),
            "" if self.slots_moved is None else f"{self.slots_moved:,}",
            f"{self.seconds:.2f}",
            f"{self.load.operations:,}",
            str(self.load.errors),
            str(self.load.wrong_reads),
        ]


def size_text(count: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


HEADER = [
    "step",
    "keys moved",
    "had to move",
    "bytes moved",
    "slots moved",
    "seconds",
    "client ops",
    "client errors",
    "wrong reads",
]


class LoadWindow:
    """The load generator's counts between two moments (it runs through every step)."""

    def __init__(self, load: LoadGenerator) -> None:
        self.load = load
        self.mark = self._snapshot()

    def _snapshot(self) -> LoadReport:
        report = self.load.report
        return LoadReport(report.reads, report.writes, report.errors, report.wrong_reads)

    def take(self) -> LoadReport:
        now = self._snapshot()
        window = LoadReport(
            now.reads - self.mark.reads,
            now.writes - self.mark.writes,
            now.errors - self.mark.errors,
            now.wrong_reads - self.mark.wrong_reads,
        )
        self.mark = now
        return window


def keys_for(count: int) -> list[str]:
    return [f"key:{i:07d}" for i in range(count)]


# -- 1. client-side sharding with the ring -----------------------------------------------


def had_to_move(old_ring: ConsistentHashRing, new_ring: ConsistentHashRing, keys) -> int:
    """Keys the two rings place on different nodes."""
    before, after = old_ring.get_nodes(keys), new_ring.get_nodes(keys)
    return sum(a != b for a, b in zip(before, after, strict=True))


def ring_step(
    name: str,
    store: ShardedStore,
    new_ring: ConsistentHashRing,
    new_servers: dict[str, redis.Redis],
    keys: list[str],
    window: LoadWindow,
    problems: list[str],
) -> Step:
    """Reshard the store to `new_ring` under load; a disagreement goes into `problems`."""
    must = had_to_move(store.ring, new_ring, keys)
    # What moved is counted from the servers, not from the mover's own report:
    # where each key sits before and after (SCAN), and RESTOREs applied.
    servers = {node: store.server(node) for node in store.ring.nodes} | new_servers
    before = redis_shards.locations(servers)
    restores = sum(map(redis_shards.restores_applied, servers.values()))
    report = redis_shards.reshard(
        store, new_ring, new_servers, lambda r: progress(f"moved {len(r.moved):,} of {must:,} keys")
    )
    done_progress()
    after = redis_shards.locations(servers)
    restores = sum(map(redis_shards.restores_applied, servers.values())) - restores
    relocated = sum(before.get(key) != where for key, where in after.items())
    say(
        f"  the servers: {relocated:,} keys now on another server, {restores:,} of them brought "
        f"by MIGRATE; the mover: {len(report.moved):,} migrated, {len(report.superseded)} old "
        "copies dropped because a client had already written the key on its new owner"
    )
    if restores != len(report.moved):
        problems.append(
            f"{name}: the servers applied {restores:,} RESTOREs, the mover counted "
            f"{len(report.moved):,} keys migrated"
        )
    time.sleep(SETTLE_SECONDS)
    return Step(
        name,
        keys_moved=relocated,
        should_move=must,
        bytes_moved=report.bytes_moved,
        slots_moved=None,
        seconds=report.seconds,
        load=window.take(),
    )


def run_ring(
    start: Callable[..., RedisServer], args: argparse.Namespace
) -> tuple[list[Step], list[str]]:
    say(f"\n== 1. Client-side sharding: a ring over 3 Redis servers, {args.keys:,} keys")
    names = ["redis-1", "redis-2", "redis-3"]
    store = ShardedStore(ConsistentHashRing(names), {name: start(name).client() for name in names})
    keys = keys_for(args.keys)
    started = time.perf_counter()
    redis_shards.load_keys(store, keys, args.value_bytes)
    say(f"loaded {args.keys:,} keys in {time.perf_counter() - started:.1f} s")

    load = LoadGenerator(lambda: store, keys, args.value_bytes, args.workers, args.rate).start()
    window = LoadWindow(load)
    steps: list[Step] = []
    problems: list[str] = []
    try:
        time.sleep(SETTLE_SECONDS)
        say("redis-4 joins; moving the keys it now owns ...")
        joined = {"redis-4": start("redis-4").client()}
        grown = ConsistentHashRing([*names, "redis-4"])
        steps.append(
            ring_step("ring: 3 -> 4 servers", store, grown, joined, keys, window, problems)
        )
        say("redis-4 leaves; moving its keys to the others ...")
        shrunk = ConsistentHashRing(names)
        steps.append(ring_step("ring: 4 -> 3 servers", store, shrunk, {}, keys, window, problems))
    finally:
        final = load.stop()
    misplaced = redis_shards.placement_problems(store, load)
    say(
        f"clients: {final.operations:,} operations in all, {final.errors} errors, "
        f"{final.wrong_reads} wrong reads; {store.reads_from_old_owner:,} reads found their key "
        f"on its old owner mid-move, {store.reads_after_the_key_moved} only on a third try"
    )
    say(
        "placement check: "
        f"{'every key on its owner, holding its last value' if not misplaced else misplaced[0]}"
    )
    return steps, [*problems, *misplaced, *final.examples]


# -- 2. Redis Cluster ----------------------------------------------------------------------


def redis_cli(*args: str) -> str:
    """Run `redis-cli --cluster ...`; its output, or RuntimeError with it."""
    result = subprocess.run(
        [redis_binary("redis-cli"), "--cluster", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        raise RuntimeError(f"redis-cli --cluster {' '.join(args)} failed:\n{output}")
    return result.stdout


def node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port)


def node_id(port: int) -> str:
    value = node(port).cluster("myid")
    return value.decode() if isinstance(value, bytes) else value


def slots_of(port: int) -> set[int]:
    """The hash slots the node at `port` serves, from CLUSTER SLOTS: [first, last, master, ...]."""
    me = node_id(port).encode()
    ranges = node(port).execute_command("CLUSTER SLOTS")
    return {
        slot
        for first, last, master, *_ in ranges
        if master[2] == me
        for slot in range(first, last + 1)
    }


def wait_for_cluster(ports: list[int], timeout: float = 60.0) -> None:
    """Until every node says cluster_state:ok and knows all the others."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [node(port).cluster("info") for port in ports]
        if all(
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_known_nodes", 0)) == len(ports)
            for info in infos
        ):
            return
        time.sleep(0.1)
    raise RuntimeError("the Redis Cluster did not settle (cluster_state:ok on every node)")


def keys_in_slots(keys: list[str], slots: set[int]) -> int:
    """How many of `keys` hash (CRC16 mod 16384) into `slots`."""
    return sum(key_slot(key.encode()) in slots for key in keys)


def bytes_on(port: int) -> int:
    """Key plus value bytes of everything the node at `port` holds."""
    client, total = node(port), 0
    batch: list[bytes] = []
    for key in [*client.scan_iter(count=1000), None]:  # None: the end, flush the rest
        if key is not None:
            batch.append(key)
        if batch and (key is None or len(batch) == 1000):
            with client.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.strlen(name)
                total += sum(pipe.execute()) + sum(map(len, batch))
            batch = []
    return total


def cluster_join(seed: int, newcomer: int, ports: list[int], slots: int | None) -> float:
    """Add the empty node at `newcomer` and give it slots; returns the seconds moving took.

    slots=None: `rebalance --cluster-use-empty-masters`, its equal share;
    otherwise `reshard` that many slots to it, taken from every master.
    """
    redis_cli("add-node", f"127.0.0.1:{newcomer}", f"127.0.0.1:{seed}")
    wait_for_cluster([*ports, newcomer])
    pipeline = ("--cluster-pipeline", str(redis_shards.MIGRATE_BATCH))
    began = time.perf_counter()
    if slots is None:
        redis_cli("rebalance", f"127.0.0.1:{seed}", "--cluster-use-empty-masters", *pipeline)
    else:
        redis_cli(
            "reshard", f"127.0.0.1:{seed}", "--cluster-from", "all",
            "--cluster-to", node_id(newcomer), "--cluster-slots", str(slots),
            "--cluster-yes", *pipeline,
        )  # fmt: skip
    return time.perf_counter() - began


def cluster_leave(seed: int, leaving: int, slots: int | None) -> float:
    """Move every slot off the node at `leaving`, then del-node it; returns the seconds.

    slots=None: `rebalance` with its weight at 0 (its slots spread over the
    others); otherwise `reshard` them all to the seed node.
    """
    leaving_id = node_id(leaving)
    pipeline = ("--cluster-pipeline", str(redis_shards.MIGRATE_BATCH))
    began = time.perf_counter()
    if slots is None:
        redis_cli(
            "rebalance", f"127.0.0.1:{seed}", "--cluster-weight", f"{leaving_id}=0", *pipeline
        )
    else:
        redis_cli(
            "reshard", f"127.0.0.1:{seed}", "--cluster-from", leaving_id,
            "--cluster-to", node_id(seed), "--cluster-slots", str(len(slots_of(leaving))),
            "--cluster-yes", *pipeline,
        )  # fmt: skip
    seconds = time.perf_counter() - began
    redis_cli("del-node", f"127.0.0.1:{seed}", leaving_id)
    return seconds


class ClusterClient(RedisCluster):
    """redis-py's RedisCluster, able to follow an ASK to a master that holds no slot yet.

    While the first slot moves to a new master, the old owner answers a key
    that has already moved with `ASK <slot> <new master>`. redis-py 8.1 looks
    that master up among the nodes CLUSTER SLOTS listed, where a master with
    no slot is absent, and fails with "AttributeError: 'NoneType' object has
    no attribute 'redis_connection'" (redis/redis-py#4015; the fix, #4214, was
    still open). This client meets an unknown name by adding the node, as that
    fix does. Used here for GET and SET only.
    """

    def get_node(self, host=None, port=None, node_name=None):
        node = super().get_node(host, port, node_name)
        if node is None and node_name and not (host or port):  # the ASK path asks by name
            host, _, port = node_name.rpartition(":")
            node = ClusterNode(host, int(port), PRIMARY)
            with self.nodes_manager._lock:
                node = self.nodes_manager.nodes_cache.setdefault(node.name, node)
        return node


def load_cluster(port: int, keys: list[str], value_bytes: int) -> None:
    client = ClusterClient(host="127.0.0.1", port=port)
    try:
        for begin in range(0, len(keys), 1000):
            with client.pipeline() as pipe:
                for key in keys[begin : begin + 1000]:
                    pipe.set(key, redis_shards.value_for(key, 0, value_bytes))
                pipe.execute()
    finally:
        client.close()


def run_cluster(
    start: Callable[..., RedisServer], args: argparse.Namespace
) -> tuple[list[Step], list[str]]:
    say(f"\n== 2. Redis Cluster: 3 masters, the same {args.keys:,} keys")
    ports = [start(f"cluster-{i}", cluster=True).port for i in range(1, 4)]
    redis_cli(
        "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"
    )
    wait_for_cluster(ports)
    seed = ports[0]
    keys = keys_for(args.keys)
    started = time.perf_counter()
    load_cluster(seed, keys, args.value_bytes)
    say(f"loaded {args.keys:,} keys in {time.perf_counter() - started:.1f} s")

    def connect() -> ClusterClient:
        return ClusterClient(host="127.0.0.1", port=seed)

    load = LoadGenerator(connect, keys, args.value_bytes, args.workers, args.rate).start()
    window = LoadWindow(load)
    steps = []
    how = "rebalance" if args.cluster_slots is None else f"reshard {args.cluster_slots} slots"
    try:
        time.sleep(SETTLE_SECONDS)
        say(f"a fourth master joins (add-node), then {how} ...")
        newcomer = start("cluster-4", cluster=True).port
        seconds = cluster_join(seed, newcomer, ports, args.cluster_slots)
        slots = slots_of(newcomer)
        moved = node(newcomer).dbsize()
        time.sleep(SETTLE_SECONDS)
        steps.append(
            Step(
                "cluster: 3 -> 4 masters",
                moved,
                keys_in_slots(keys, slots),
                bytes_on(newcomer),
                len(slots),
                seconds,
                window.take(),
            )
        )
        say("the fourth master leaves: its slots go back, then del-node ...")
        moved, size, slots = node(newcomer).dbsize(), bytes_on(newcomer), slots_of(newcomer)
        seconds = cluster_leave(seed, newcomer, args.cluster_slots)
        left = node(newcomer).dbsize()
        time.sleep(SETTLE_SECONDS)
        steps.append(
            Step(
                "cluster: 4 -> 3 masters",
                moved - left,
                keys_in_slots(keys, slots),
                size,
                len(slots),
                seconds,
                window.take(),
            )
        )
    finally:
        final = load.stop()
    client = connect()
    problems = cluster_problems(client, load)
    client.close()
    say(
        f"clients: {final.operations:,} operations in all, {final.errors} errors, "
        f"{final.wrong_reads} wrong reads; final check: "
        f"{'every key holds its last value' if not problems else problems[0]}"
    )
    return steps, [*problems, *final.examples]


def cluster_problems(client: RedisCluster, load: LoadGenerator) -> list[str]:
    """Every key holds the last value written; else the first few that do not."""
    problems = []
    for begin in range(0, len(load.keys), 1000):
        chunk = load.keys[begin : begin + 1000]
        for offset, value in enumerate(client.mget_nonatomic(chunk)):
            if value != load.expected(begin + offset):
                problems.append(f"{chunk[offset]} does not hold the last value written")
                if len(problems) >= 5:
                    return problems
    return problems


# -- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reshard real Redis servers live: a consistent-hash ring from the client "
        "side, then a Redis Cluster, under a read/write load."
    )
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, help="keys to load")
    parser.add_argument(
        "--value-bytes", type=int, default=DEFAULT_VALUE_BYTES, help="size of each value"
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="client threads reading and writing"
    )
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="operations per second per client thread"
    )
    parser.add_argument("--skip-cluster", action="store_true", help="run the ring part only")
    parser.add_argument(
        "--cluster-slots",
        type=int,
        help="move this many slots with `reshard` instead of a full `rebalance` (faster)",
    )
    args = parser.parse_args(argv)
    for name, most in LIMITS.items():
        value = getattr(args, name)
        if not 1 <= value <= most:  # also refuses nan
            parser.error(f"--{name.replace('_', '-')} must be between 1 and {most:,}")
    if args.workers > args.keys:
        parser.error("--workers must be at most --keys: each client thread writes keys of its own")
    if args.cluster_slots is not None and not 1 <= args.cluster_slots <= 16383:
        parser.error("--cluster-slots must be between 1 and 16,383")
    if args.keys * args.value_bytes > MAX_DATA_BYTES:
        parser.error(
            f"--keys x --value-bytes is {args.keys * args.value_bytes:,} bytes; "
            f"the limit is {MAX_DATA_BYTES:,} (each server set holds it all)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redis_binary("redis-server")
    # SIGTERM unwinds like an exception, so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    steps: list[Step] = []
    problems: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="reshard-redis-") as scratch,
        servers_in(Path(scratch)) as start,
    ):
        try:
            ring_steps, ring_problems = run_ring(start, args)
            steps += ring_steps
            problems += ring_problems
            if not args.skip_cluster:
                cluster_steps, cluster_problems_found = run_cluster(start, args)
                steps += cluster_steps
                problems += cluster_problems_found
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the servers", file=sys.stderr)
            return 130
        except (redis.RedisError, RuntimeError) as error:  # e.g. a server killed mid-move
            print(
                f"\nerror: the run cannot go on: {type(error).__name__}: {error}\n"
                "(a server that dies keeps nothing: these run without persistence); "
                "stopping the servers",
                file=sys.stderr,
            )
            return 1
    say(
        f"\n== Resharding {args.keys:,} keys of {args.value_bytes} bytes under load "
        f"({args.workers} clients x {args.rate:g} ops/s)"
    )
    say(format_table(HEADER, [step.row() for step in steps]))
    exact = all(step.keys_moved == step.should_move for step in steps)
    clean = all(s.load.errors == 0 and s.load.wrong_reads == 0 for s in steps)
    for problem in problems[:5]:
        say(f"problem: {problem}")
    if exact and clean and not problems:
        say(
            "OK: exactly the keys whose owner changed moved; "
            "no client error, no wrong read, every key holds its last value"
        )
        return 0
    say("NOT OK: see the table and the problems above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
