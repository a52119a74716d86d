"""Client-side sharding over real Redis servers, and moving keys live when the ring changes.

The ring (ConsistentHashRing) names the Redis server that holds each key.
When a server joins or leaves, `ShardedStore.begin_move` switches every
client to the new ring, `move_keys` migrates exactly the keys whose owner
changed, with Redis' MIGRATE, and reads stay correct throughout. The
`LoadGenerator` reads and writes meanwhile and counts what went wrong. README
section "Resharding real Redis" explains the protocol and shows a run.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import redis
from ConsistentHashRing import ConsistentHashRing

SCAN_BATCH = 1000  # keys asked of SCAN at a time
MIGRATE_BATCH = 200  # keys sent in one MIGRATE ... KEYS command
MIGRATE_TIMEOUT_MS = 5000  # how long the source waits on the target, per MIGRATE
BARRIER_TIMEOUT = 30.0  # seconds begin_move waits for operations under the old ring


class KeyValueClient(Protocol):
    """What the load generator needs: a Redis client, a RedisCluster, or a ShardedStore."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> object: ...


class ShardedStore:
    """Keys spread over Redis servers by a consistent-hash ring, decided by the client.

    Between `begin_move(new_ring)` and `finish_move()` a key may still sit on
    its old owner, so:
    - writes go to the new owner only;
    - reads ask the new owner, then the old one, then the new one again;
    - deletes go to the old owner first, then to the new one.
    The third read covers a key that moved between the first two: MIGRATE
    writes it on the new owner before deleting it from the old, so a read that
    found neither copy will find the new one. Nothing else writes to the old
    owner, so what it returns was the key's value when the first read ran.

    The assumption this rests on: once a move begins, no write under the old
    ring is still in flight. `begin_move` waits for every operation started
    under the old ring to finish. Here the clients are threads of one process;
    across processes the same barrier is a configuration epoch that every
    client must acknowledge before the first key moves.
    """

    def __init__(self, ring: ConsistentHashRing, servers: dict[str, redis.Redis]) -> None:
        missing = set(ring.nodes) - set(servers)
        if missing:
            raise ValueError(f"no Redis client for ring nodes {sorted(missing)}")
        self._servers = dict(servers)  # node name -> client (thread-safe: one pool each)
        self._ring = ring  # the ring writes follow
        self._previous: ConsistentHashRing | None = None  # the ring before a move in progress
        self._epoch = 0  # bumped by every change of rings
        self._in_flight: Counter[int] = Counter()  # epoch -> operations still running
        # Operations note their epoch in _in_flight; begin_move waits on it
        # until no operation of an older epoch is left.
        self._changed = threading.Condition()
        # Reads that found their key only on its old owner, and only on the
        # third try (after it moved between the first two): proof that the
        # fallback did its job while a move ran.
        self.reads_from_old_owner = 0
        self.reads_after_the_key_moved = 0

    @property
    def ring(self) -> ConsistentHashRing:
        return self._ring

    def server(self, node: str) -> redis.Redis:
        return self._servers[node]

    def get(self, key: str) -> bytes | None:
        epoch, ring, previous, servers = self._enter()
        try:
            owner = ring.get_node(key)
            value = servers[owner].get(key)
            if value is None and previous is not None:
                before = previous.get_node(key)
                if before != owner:
                    value = servers[before].get(key)
                    if value is not None:
                        self._note("reads_from_old_owner")
                    else:  # it moved between the two reads
                        value = servers[owner].get(key)
                        if value is not None:
                            self._note("reads_after_the_key_moved")
            return value
        finally:
            self._leave(epoch)

    def set(self, key: str, value: bytes) -> None:
        epoch, ring, _, servers = self._enter()
        try:
            servers[ring.get_node(key)].set(key, value)
        finally:
            self._leave(epoch)

    def delete(self, key: str) -> None:
        """Delete `key`; during a move, from its old owner first, then from its new one.

        In that order a move cannot bring it back: MIGRATE either ran before
        the first delete (the key is on the new owner, and the second delete
        finds it there) or after it (there is nothing left to move).
        """
        epoch, ring, previous, servers = self._enter()
        try:
            owner = ring.get_node(key)
            if previous is not None and previous.get_node(key) != owner:
                servers[previous.get_node(key)].delete(key)
            servers[owner].delete(key)
        finally:
            self._leave(epoch)

    def begin_move(
        self, ring: ConsistentHashRing, servers: dict[str, redis.Redis] | None = None
    ) -> ConsistentHashRing:
        """Switch writes to `ring` (adding the clients of new nodes); returns the old ring.

        Returns once no operation started under the old ring is still running.
        """
        clients = {**self._servers, **(servers or {})}
        missing = set(ring.nodes) - set(clients)
        if missing:
            raise ValueError(f"no Redis client for ring nodes {sorted(missing)}")
        for node in sorted(set(ring.nodes) - set(self._ring.nodes)):
            # Keys already on a joining server are stale or strangers: MIGRATE
            # would take one for a client's newer write and drop the live copy.
            held = clients[node].dbsize()
            if held:
                raise ValueError(
                    f"{node} joins the ring but already holds {held:,} "
                    f"key{'' if held == 1 else 's'}; "
                    "a joining server must be empty (FLUSHDB it first)"
                )
        with self._changed:
            if self._previous is not None:
                raise RuntimeError("a move is already in progress; finish_move() it first")
            self._servers = clients  # a new dict: operations in flight keep theirs
            self._previous, self._ring = self._ring, ring
            self._epoch += 1
            deadline = time.monotonic() + BARRIER_TIMEOUT
            while any(count for epoch, count in self._in_flight.items() if epoch < self._epoch):
                if not self._changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("operations under the old ring did not finish in time")
            return self._previous

    def finish_move(self) -> None:
        """Every key is on its new owner: stop falling back to the old ring."""
        with self._changed:
            self._previous = None
            self._epoch += 1
            self._servers = {node: self._servers[node] for node in self._ring.nodes}

    def _enter(
        self,
    ) -> tuple[int, ConsistentHashRing, ConsistentHashRing | None, dict[str, redis.Redis]]:
        """Note one more operation of this epoch; its rings and its clients.

        An operation keeps the clients it started with: finish_move drops a
        departed node's client, and a read that began mid-move may still
        have to ask that node.
        """
        with self._changed:
            self._in_flight[self._epoch] += 1
            return self._epoch, self._ring, self._previous, self._servers

    def _note(self, counter: str) -> None:
        with self._changed:
            setattr(self, counter, getattr(self, counter) + 1)

    def _leave(self, epoch: int) -> None:
        with self._changed:
            self._in_flight[epoch] -= 1
            if not self._in_flight[epoch]:
                del self._in_flight[epoch]
                self._changed.notify_all()


@dataclass
class MoveReport:
    """What one move did: counted by move_keys, key by key."""

    moved: set[bytes] = field(default_factory=set)  # keys MIGRATE carried to their new owner
    # Keys whose old copy was dropped because a client had already written a
    # newer value on the new owner (MIGRATE refused: BUSYKEY).
    superseded: set[bytes] = field(default_factory=set)
    bytes_moved: int = 0  # key and value bytes of the moved keys (strings; others: the key)
    scanned: int = 0  # keys looked at on the old owners
    seconds: float = 0.0


def address(client: redis.Redis) -> tuple[str, int]:
    """(host, port) a Redis client connects to, for MIGRATE's target."""
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379))


def move_keys(
    store: ShardedStore,
    old_ring: ConsistentHashRing,
    progress: Callable[[MoveReport], None] | None = None,
) -> MoveReport:
    """Move every key whose owner differs between `old_ring` and the store's ring.

    Each old owner is SCANned; a key the new ring places elsewhere is sent
    there with MIGRATE (atomic on the source: the key is on the target before
    it leaves the source). MIGRATE never replaces a key, so a newer value a
    client already wrote on the new owner wins, and the stale copy is dropped.
    """
    report = MoveReport()
    started = time.perf_counter()
    new_ring = store.ring
    for source_name in old_ring.nodes:
        source = store.server(source_name)
        cursor = 0
        while True:
            cursor, keys = source.scan(cursor=cursor, count=SCAN_BATCH)
            report.scanned += len(keys)
            leaving: dict[str, list[bytes]] = defaultdict(list)
            for key, owner in zip(keys, new_ring.get_nodes(keys), strict=True):
                if owner != source_name:
                    leaving[owner].append(key)
            for target, batch in leaving.items():
                for start in range(0, len(batch), MIGRATE_BATCH):
                    chunk = batch[start : start + MIGRATE_BATCH]
                    migrate(source, store.server(target), chunk, report)
            if progress:
                progress(report)
            if cursor == 0:
                break
    report.seconds = time.perf_counter() - started
    return report


def reshard(
    store: ShardedStore,
    new_ring: ConsistentHashRing,
    new_servers: dict[str, redis.Redis] | None = None,
    progress: Callable[[MoveReport], None] | None = None,
) -> MoveReport:
    """Switch the store to `new_ring` and move every key whose owner changed, under load.

    begin_move (writes follow the new ring from here on), move_keys, then
    finish_move (reads stop falling back to the old owners). If the move
    fails half-way, the store stays in its moving state, where every read
    still finds its key, and move_keys(store, old_ring) can be run again.
    """
    old_ring = store.begin_move(new_ring, new_servers)
    report = move_keys(store, old_ring, progress)
    store.finish_move()
    return report


def migrate(
    source: redis.Redis, target: redis.Redis, keys: list[bytes], report: MoveReport
) -> None:
    """MIGRATE `keys` from source to target; sort out any the target already had.

    Keys no longer on the source are skipped: SCAN may return a key twice (the
    source's table shrinks as keys leave), and a client may have deleted one.
    (A key deleted between that check and the MIGRATE of a batch is still
    counted as moved: MIGRATE skips it without saying so.)
    """
    with source.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
            pipe.strlen(key)
        # A key that is not a string (a hash, a list) counts its name only.
        replies = pipe.execute(raise_on_error=False)
    sizes = {
        key: length if isinstance(length, int) else 0
        for key, there, length in zip(keys, replies[::2], replies[1::2], strict=True)
        if there
    }
    if not sizes:
        return
    keys = list(sizes)
    host, port = address(target)
    try:
        reply = source.migrate(host, port, keys, 0, MIGRATE_TIMEOUT_MS)
        carried = [] if nothing_to_migrate(reply) else keys
    except redis.ResponseError as error:
        if "BUSYKEY" not in str(error):
            raise
        # MIGRATE carried every key it could and reports only the first
        # error. The keys still on the source may have failed for another
        # reason (the target out of memory), so each goes again on its own,
        # where its own error is seen: BUSYKEY means a client has written a
        # newer value on the target since the move began, and the old copy
        # is dropped; any other error stops the move with the key still safe.
        with source.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            on_source = pipe.execute()
        left = [key for key, there in zip(keys, on_source, strict=True) if there]
        carried = [key for key, there in zip(keys, on_source, strict=True) if not there]
        for key in left:
            try:
                if not nothing_to_migrate(source.migrate(host, port, [key], 0, MIGRATE_TIMEOUT_MS)):
                    carried.append(key)
            except redis.ResponseError as error:
                if "BUSYKEY" not in str(error):
                    raise
                source.delete(key)
                report.superseded.add(key)
    for key in carried:
        report.moved.add(key)
        report.bytes_moved += len(key) + sizes[key]


def nothing_to_migrate(reply: object) -> bool:
    """MIGRATE's reply when none of its keys was on the source (a client deleted them)."""
    return reply in (b"NOKEY", "NOKEY")


# -- the load generator --------------------------------------------------------------


@dataclass
class LoadReport:
    """What the clients saw while the load generator ran."""

    reads: int = 0
    writes: int = 0
    errors: int = 0  # exceptions from the client library
    wrong_reads: int = 0  # a key missing, or not the value last written
    examples: list[str] = field(default_factory=list)  # the first few problems, for the reader

    @property
    def operations(self) -> int:
        return self.reads + self.writes


def value_for(key: str, version: int, size: int) -> bytes:
    """A value that names its key and version, padded to `size` bytes."""
    head = f"{key}|{version}|".encode()
    return head + b"x" * max(0, size - len(head))


class LoadGenerator:
    """Threads that read and write keys while they move, checking every answer.

    Worker t is the only writer of the keys whose index is t modulo the number
    of workers, so it knows exactly what a read of them must return: the last
    value it wrote. Half its operations write one of its own keys, half read a
    random key (its own: the exact value; another's: present, with the right
    name). `rate` caps each worker's operations per second, so the move under
    test gets its share of the machine.
    """

    def __init__(
        self,
        make_client: Callable[[], KeyValueClient],
        keys: list[str],
        value_size: int,
        workers: int = 4,
        rate: float = 500.0,
        seed: int = 1,
    ) -> None:
        if not 1 <= workers <= len(keys):
            raise ValueError(
                f"workers must be between 1 and the number of keys ({len(keys)}): "
                f"each writes keys of its own, got {workers}"
            )
        self.keys = keys
        self.value_size = value_size
        self.rate = rate
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards report
        self.report = LoadReport()
        # key index -> version last written (0: the initial load); each worker owns its slots
        self.versions = [0] * len(keys)
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(make_client(), number, workers, random.Random(seed + number)),
                name=f"load-{number}",
                daemon=True,
            )
            for number in range(workers)
        ]

    def start(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.report

    def expected(self, index: int) -> bytes:
        return value_for(self.keys[index], self.versions[index], self.value_size)

    def _work(self, client: KeyValueClient, number: int, workers: int, rng: random.Random) -> None:
        mine = range(number, len(self.keys), workers)
        pause = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if rng.random() < 0.5:
                    index = rng.choice(mine)
                    version = self.versions[index] + 1
                    value = value_for(self.keys[index], version, self.value_size)
                    client.set(self.keys[index], value)
                    self.versions[index] = version
                    self._count("writes")
                else:
                    index = rng.randrange(len(self.keys))
                    value = client.get(self.keys[index])
                    self._check(index, value, index % workers == number)
            except Exception as error:  # counted, not fatal: the point is to see them
                self._count("errors", f"{type(error).__name__}: {error}")
            if pause:
                next_at += pause
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = time.monotonic()

    def _check(self, index: int, value: bytes | None, own: bool) -> None:
        key = self.keys[index]
        self._count("reads")
        if value is None:
            self._count("wrong_reads", f"{key} was missing")
        elif own and value != self.expected(index):
            wrote = self.expected(index)[:30]
            self._count("wrong_reads", f"{key}: read {value[:30]!r}, last wrote {wrote!r}")
        elif not value.startswith(f"{key}|".encode()):
            self._count("wrong_reads", f"{key}: read another key's value {value[:30]!r}")

    def _count(self, what: str, example: str | None = None) -> None:
        with self._lock:
            setattr(self.report, what, getattr(self.report, what) + 1)
            if example and len(self.report.examples) < 5:
                self.report.examples.append(example)


def load_keys(store: ShardedStore, keys: Iterable[str], value_size: int) -> None:
    """Write every key with version 0 onto its owner, in pipelined batches."""
    by_owner: dict[str, list[str]] = defaultdict(list)
    keys = list(keys)
    for key, owner in zip(keys, store.ring.get_nodes(keys), strict=True):
        by_owner[owner].append(key)
    for owner, owned in by_owner.items():
        for start in range(0, len(owned), SCAN_BATCH):
            with store.server(owner).pipeline(transaction=False) as pipe:
                for key in owned[start : start + SCAN_BATCH]:
                    pipe.set(key, value_for(key, 0, value_size))
                pipe.execute()


def locations(servers: dict[str, redis.Redis]) -> dict[bytes, list[str]]:
    """Key -> the servers holding it, as the servers themselves list their keys (SCAN)."""
    where: dict[bytes, list[str]] = defaultdict(list)
    for node, client in servers.items():
        for key in client.scan_iter(count=SCAN_BATCH):
            where[key].append(node)
    return dict(where)


def restores_applied(client: redis.Redis) -> int:
    """RESTOREs the server has applied since it started: the keys MIGRATE brought it.

    Counted by the server (INFO commandstats), not by this module: the calls
    run, less those that failed (BUSYKEY). Calls refused before they ran
    (out of memory) are not among the calls.
    """
    stats = client.info("commandstats").get("cmdstat_restore", {})
    return stats.get("calls", 0) - stats.get("failed_calls", 0)


def placement_problems(store: ShardedStore, load: LoadGenerator) -> list[str]:
    """Every key on exactly its ring owner, holding the last value written; else what is wrong."""
    problems = []
    where = locations({node: store.server(node) for node in store.ring.nodes})
    owners = store.ring.get_nodes(load.keys)
    for index, (key, owner) in enumerate(zip(load.keys, owners, strict=True)):
        found = where.pop(key.encode(), [])
        if found != [owner]:
            problems.append(f"{key} is on {found or 'no node'}, its owner is {owner}")
        elif store.server(owner).get(key) != load.expected(index):
            problems.append(f"{key} on {owner} does not hold the last value written")
        if len(problems) >= 5:
            break
    if where and len(problems) < 5:
        problems.append(f"{len(where)} keys nobody wrote, e.g. {next(iter(where))!r}")
    return problems
