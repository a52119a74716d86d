"""What every process of the two-phase-commit prototype shares: a durable log, faults, serving.

The coordinator and both participants are separate programs with separate
SQLite files; this module holds the plumbing they have in common, so that
Coordinator.py and twopc_participant.py read as the protocol and nothing else.
See the README's "Durability: when is a write a promise?" and "Break it".
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import apsw
import twopc_disk
from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

MAX_BODY_BYTES = 16 * 1024  # an order is a few hundred bytes; anything larger is a mistake
MAX_QUANTITY = 100  # one order cannot empty a warehouse by a typo
MAX_TEXT = 200  # longest item name or address we accept
ORDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,48}")  # chosen by the client, or by us
TXID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # "<order_id>.<attempt>", or any id
MAX_BATCH = 200  # txids in one phase-2 message: 200 of the longest fit in MAX_BODY_BYTES
CRASH_EXIT_CODE = 75  # what an injected crash exits with, so a test can tell it from a bug
MAX_DELAY_MS = 60_000  # longest injected delay: a minute is "very late", more is a typo
REORDER_HOLD_MS = 300  # longest a reordered message is held back while later ones pass it
MAX_PARTITIONS = 16  # peers one process can be cut off from at once
MAX_SECONDS = 3600.0  # longest timeout, back-off or interval any flag accepts
JSON_HEADERS = {"Content-Type": "application/json"}  # of every message with a body
OUT_DIR = Path(__file__).resolve().parent / "out"  # git-ignored: databases of runs by hand


# -- the durable log -------------------------------------------------------------


CHECKPOINT_EVERY = 500  # forced commits between two checkpoints of the write-ahead log


class DurableStore:
    """One SQLite file, written only through `transaction()`; a forced one is durable on return.

    WAL journal + synchronous=FULL: a forced commit fsyncs the write-ahead log
    before it returns, so it survives a kill -9 and a power cut. That is what
    lets a participant promise "yes" and a coordinator record a decision. An
    unforced commit (`forced=False`) runs with synchronous=NORMAL: it is
    written, visible, and survives a kill, but a power cut may take it, until
    the next forced commit's fsync carries it to the disk too. Not OFF: after
    a checkpoint, OFF leaves the restarted log's header unsynced, and a power
    cut that keeps the new frames but not that header can replay an old log
    over newer pages, losing forced commits (README, "Durability"). Presumed
    abort forces only the writes recovery needs (README, "Presumed abort").

    All file I/O goes through `disk` (twopc_disk.Disk), which counts the
    fsyncs and, when volatile, loses unsynced writes with the process.
    """

    def __init__(
        self,
        path: str | Path,
        schema: str,
        disk: twopc_disk.Disk,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.path = str(Path(path).resolve())
        self.disk = disk
        self.checkpoint_every = checkpoint_every
        # One connection, one writer at a time: every request thread takes this
        # lock for its whole read-check-write, so two orders can never both see
        # the last pizza as available.
        self.lock = threading.Lock()
        self.forced_commits = 0  # commits that had to be on disk before returning
        self.checkpoint_syncs = 0
        # After a checkpoint the next write starts the write-ahead log afresh, and a
        # forced one fsyncs the log's new header as well as its commit: a checkpoint's cost.
        self._log_restarts = False
        try:
            Path(path).parent.mkdir(exist_ok=True)  # the default out/ on a first run
            self.db = apsw.Connection(self.path, vfs=disk.vfs_name)
            self.db.set_busy_timeout(10_000)
            self.db.row_trace = row_as_dict
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # Checkpoints are ours (below), always with fsyncs: an automatic one
            # could run after an unforced commit, without them.
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self.db.execute("PRAGMA mmap_size=0")  # every read through the disk's cache
            with self.transaction() as db:
                db.execute(schema)
        except (apsw.Error, OSError) as err:
            raise StoreError(f"cannot open database {path}: {err}") from None
        self.syncs_at_open = disk.syncs_of(self.path)

    @contextmanager
    def transaction(self, forced: bool = True) -> Iterator[apsw.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; rolled back if the block raises.

        forced=False: the commit is not fsynced (see the class docstring).
        """
        with self.lock:
            changes_before = self.db.total_changes()
            syncs_before = self.disk.syncs_of(self.path) if self._log_restarts else 0
            if not forced:
                self.db.execute("PRAGMA synchronous=NORMAL")
            try:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise
                self.db.execute("COMMIT")
            finally:
                if not forced:
                    self.db.execute("PRAGMA synchronous=FULL")
            wrote = self.db.total_changes() != changes_before  # a read-only COMMIT writes nothing
            if wrote and self._log_restarts:  # all but a forced commit's own fsync
                self._log_restarts = False
                syncs = self.disk.syncs_of(self.path) - syncs_before
                self.checkpoint_syncs += max(0, syncs - forced)
            if forced and wrote:
                self.forced_commits += 1
                if self.forced_commits % self.checkpoint_every == 0:
                    self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database file (fsyncing both); not a protocol write."""
        before = self.disk.syncs_of(self.path)
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.checkpoint_syncs += self.disk.syncs_of(self.path) - before
        self._log_restarts = True

    @property
    def forced_writes(self) -> int:
        """fsyncs since open that forced a commit to disk (checkpoints and the log header
        each one makes the next commit sync again are left out): one per forced commit."""
        return self.disk.syncs_of(self.path) - self.syncs_at_open - self.checkpoint_syncs

    def stats(self) -> dict[str, int]:
        fsyncs = self.disk.syncs_of(self.path) - self.syncs_at_open
        return {"forced_writes": self.forced_writes, "fsyncs": fsyncs}

    def read(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        with self.lock:
            return self.db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self.lock:
            self.db.close()


def row_as_dict(cursor: apsw.Cursor, row: tuple) -> dict[str, Any]:
    return {column: value for (column, *_), value in zip(cursor.description, row, strict=True)}


class StoreError(RuntimeError):
    """The database file cannot be opened or has the wrong shape."""


# -- doing many at once ----------------------------------------------------------------


class Batcher:
    """Group whatever arrives while a batch is in flight: one flush carries all of it.

    A thread calls `submit(item)` and blocks. Whoever finds no flush running
    becomes the leader: it takes everything queued, calls `flush(items)` once
    (one fsync, one message), hands each waiter its result, and passes the
    lead to the first thread that arrived meanwhile, whose batch is next.
    Alone, a batch is one item and costs what it did before; under load, one
    flush carries many. This is group commit (the coordinator's log) and
    batching (phase 1's and phase 2's messages). Each waiter has its own
    lock, so a flush wakes only its own batch and the next leader, not every
    thread waiting.
    A flush takes at most `most` items, and items whose `size` adds up to at
    most `budget` (a message must fit what a participant accepts); the rest
    go in the next.
    """

    def __init__(
        self,
        flush: Callable[[list[Any]], list[Any]],
        most: int = 10_000,
        size: Callable[[Any], int] = lambda item: 0,
        budget: int = 0,
    ) -> None:
        self._flush = flush  # items -> one result per item, in order
        self.most = most  # items in one flush; the rest wait for the next (may change)
        self._size, self._budget = size, budget
        self._lock = threading.Lock()  # guards _queue and _flushing
        self._queue: list[_Waiter] = []
        self._flushing = False
        self.batches = 0

    def submit(self, item: Any) -> Any:
        me = _Waiter(item, self._size(item))  # (a size that fails, fails here, unqueued)
        with self._lock:
            self._queue.append(me)
            if not self._flushing:
                self._flushing = me.leads = True
        if not me.leads:
            me.woken.acquire()  # released by our batch's leader: our result, or the lead
        if me.leads:
            self._lead()
        if me.error is not None:
            raise me.error
        return me.result

    def _lead(self) -> None:
        with self._lock:
            taken, used = 0, 0
            for waiter in self._queue[: self.most]:
                used += waiter.size
                if taken and used > self._budget:
                    break
                taken += 1
            batch, self._queue = self._queue[:taken], self._queue[taken:]
        results: list[Any] = [None] * len(batch)
        error = None
        try:
            answered = self._flush([w.item for w in batch])
            if len(answered) != len(batch):
                raise RuntimeError(f"a flush of {len(batch)} answered {len(answered)}")
            results = answered
        except Exception as err:  # every waiter in the batch hears it, and the lead moves on
            error = err
        with self._lock:
            self.batches += 1
            for waiter, result in zip(batch, results, strict=True):
                waiter.result, waiter.error, waiter.leads = result, error, False
                waiter.woken.release()
            if self._queue:  # arrived during the flush: the first of them leads the next
                self._queue[0].leads = True
                self._queue[0].woken.release()
            else:
                self._flushing = False


class _Waiter:
    def __init__(self, item: Any, size: int) -> None:
        self.item, self.size = item, size
        self.leads = False
        # Held until a leader wakes us (a bare lock: cheaper than an Event, and
        # each waiter is woken at most once per wait).
        self.woken = threading.Lock()
        self.woken.acquire()
        self.result: Any = None
        self.error: Exception | None = None


# -- messages between processes ----------------------------------------------------


class Unreachable(Exception):
    """The other process did not answer: refused, timed out, or replied with garbage."""


class MessageFaults:
    """Seeded faults on every message this process sends, and on the replies it waits for.

    drop       probability that a request is lost, and, separately, that its reply is
    duplicate  probability that a request arrives twice (the copy a little later)
    delay_ms   every message leaves this much later
    reorder    probability that a message is held back (up to REORDER_HOLD_MS) while
               later ones overtake it
    partition  {"peer": URL, "ms": n}: nothing reaches that peer or comes back from it
               for n ms (set it on both ends to cut a link both ways; "ms": 0 heals it)
    seed       the random sequence: the same seed, the same coin tosses in the same order
    heal       true: every message fault off at once
    """

    PROBABILITIES = ("drop", "duplicate", "reorder")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the generator and the partitions
        self.heal()

    def heal(self) -> None:
        self.drop = self.duplicate = self.reorder = 0.0
        self.delay_ms = 0
        self.seed = 0
        self.random = random.Random(0)
        self.partitions: dict[str, float] = {}  # peer URL -> time.monotonic() it heals

    def as_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        partitions = {peer: round((end - now) * 1000) for peer, end in self.partitions.items()}
        return {
            **{name: getattr(self, name) for name in self.PROBABILITIES},
            "delay_ms": self.delay_ms,
            "seed": self.seed,
            "partitions_ms_left": {peer: ms for peer, ms in partitions.items() if ms > 0},
        }

    def update(self, changes: Any) -> None:
        """Apply a JSON change; raise ValueError with a message for a bad one."""
        if not isinstance(changes, dict):
            raise ValueError("messages must be a JSON object")
        known = {*self.PROBABILITIES, "delay_ms", "partition", "seed", "heal"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown message fault {unknown[0]!r}: one of {sorted(known)}")
        new = {}
        for name in self.PROBABILITIES:
            value = changes.get(name, getattr(self, name))
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"messages.{name} must be a probability 0..1")
            new[name] = float(value)
        delay_ms = milliseconds(changes, "delay_ms", self.delay_ms)
        seed = changes.get("seed", self.seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError("messages.seed must be a whole number 0..2**32-1")
        partition = changes.get("partition")
        if partition is not None:
            if not isinstance(partition, dict) or set(partition) != {"peer", "ms"}:
                raise ValueError('messages.partition must be {"peer": URL, "ms": n}')
            peer = partition["peer"]
            if not isinstance(peer, str) or not peer.startswith("http") or len(peer) > MAX_TEXT:
                raise ValueError("messages.partition.peer must be an http:// URL")
            ms = milliseconds(partition, "ms", 0)
        heal = changes.get("heal", False)
        if not isinstance(heal, bool):
            raise ValueError("messages.heal must be true or false")
        with self._lock:
            if heal:
                self.heal()
                return
            now = time.monotonic()
            self.partitions = {p: end for p, end in self.partitions.items() if end > now}
            if partition is not None:
                peer = peer.rstrip("/")
                if len(self.partitions) >= MAX_PARTITIONS and peer not in self.partitions:
                    raise ValueError(f"at most {MAX_PARTITIONS} partitions at a time")
            for name, value in new.items():
                setattr(self, name, value)
            self.delay_ms = delay_ms
            if "seed" in changes:
                self.seed, self.random = seed, random.Random(seed)
            if partition is not None:
                self.partitions[peer] = now + ms / 1000

    def roll(self, fault: str) -> bool:
        """One toss of the seeded coin for `fault` (drop, duplicate, reorder)."""
        probability = getattr(self, fault)
        if not probability:
            return False
        with self._lock:
            return self.random.random() < probability

    def hold_seconds(self) -> float:
        with self._lock:
            return self.random.uniform(0, REORDER_HOLD_MS / 1000)

    def partitioned(self, url: str) -> bool:
        with self._lock:
            return any(  # "http://h:500" must not match "http://h:5001/...": whole URLs only
                (url == peer or url.startswith(peer + "/")) and time.monotonic() < end
                for peer, end in self.partitions.items()
            )

    def on_the_way(self, method: str, url: str) -> None:
        """What happens to a request before it arrives: raise Unreachable if it never does."""
        if self.partitioned(url):
            raise Unreachable(f"{method} {url}: partitioned (injected)")
        if self.roll("drop"):
            raise Unreachable(f"{method} {url}: the request was lost (injected)")
        wait = self.delay_ms / 1000 + (self.hold_seconds() if self.roll("reorder") else 0.0)
        if wait:
            time.sleep(wait)

    def reply_lost(self, url: str) -> bool:
        return self.partitioned(url) or self.roll("drop")


class Messenger:
    """Sends protocol messages as HTTP requests and counts them.

    `call` is a message that expects an answer (a request and its reply: two
    messages); `notify` is one the sender never waits for (one message: the
    HTTP reply exists, but nobody reads it).

    Plain http.client, not requests: a message here is a small JSON body to
    a URL we were given, and requests spent more CPU on each one than the
    HTTP itself (merging proxy settings from the environment, .netrc
    lookups, its adapters): two thirds of the coordinator's time in a call,
    profiled. Connections wait in a pool per peer, each used by one thread at
    a time; Werkzeug's server closes every connection after its reply, so in
    practice each message opens a new one (http.client reconnects by itself).
    """

    def __init__(self, faults: MessageFaults | None = None) -> None:
        self._idle: dict[tuple[str, str], list[HTTPConnection]] = {}  # pop, append: atomic
        self._lock = threading.Lock()
        self.messages = 0
        self.faults = faults or MessageFaults()
        self._background = ThreadPoolExecutor(16, thread_name_prefix="notify")

    def call(
        self, method: str, url: str, timeout: float, body: dict | None = None
    ) -> tuple[int, dict]:
        """Send one request; return (status, JSON reply) or raise Unreachable."""
        self._count(2)
        return self._send(method, url, timeout, body)

    def notify(self, url: str, timeout: float, body: dict) -> None:
        """POST and forget: no waiting, no retry; a lost one is simply lost."""
        self._count(1)
        self._background.submit(self._send_quietly, url, timeout, body)

    def _send_quietly(self, url: str, timeout: float, body: dict) -> None:
        try:
            self._send("POST", url, timeout, body)
        except Unreachable:
            pass

    def _count(self, messages: int) -> None:
        with self._lock:
            self.messages += messages

    def _send(self, method: str, url: str, timeout: float, body: dict | None) -> tuple[int, dict]:
        self.faults.on_the_way(method, url)  # lost, partitioned, late or overtaken
        if self.faults.roll("duplicate"):
            self._background.submit(self._send_copy, method, url, timeout, body)
        result = self._http(method, url, timeout, body)
        if self.faults.reply_lost(url):
            raise Unreachable(f"{method} {url}: the reply was lost (injected)")
        return result

    def _send_copy(self, method: str, url: str, timeout: float, body: dict | None) -> None:
        """The duplicate of a message: it arrives a little later, and nobody reads its reply."""
        time.sleep(self.faults.hold_seconds())
        try:
            self._http(method, url, timeout, body)
        except Unreachable:
            pass

    def _http(self, method: str, url: str, timeout: float, body: dict | None) -> tuple[int, dict]:
        try:
            target = urlsplit(url)
            peer = (target.scheme, target.netloc)
            try:
                connection = self._idle[peer].pop()
            except (KeyError, IndexError):
                kind = HTTPSConnection if target.scheme == "https" else HTTPConnection
                connection = kind(target.netloc, timeout=timeout)
        except (ValueError, http.client.InvalidURL) as err:  # not a URL we can reach
            raise Unreachable(f"{method} {url}: {type(err).__name__}") from None
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        data = None if body is None else json.dumps(body).encode()
        try:
            connection.timeout = timeout  # for the next connect
            if connection.sock is not None:  # and for one still open
                connection.sock.settimeout(timeout)
            connection.request(method, path, data, JSON_HEADERS if data is not None else {})
            reply = connection.getresponse()
            result = reply.status, json.loads(reply.read())
        except (OSError, http.client.HTTPException, ValueError) as err:
            connection.close()  # it may be half-dead: do not reuse it
            raise Unreachable(f"{method} {url}: {type(err).__name__}") from None
        self._idle.setdefault(peer, []).append(connection)
        return result


# -- faults a learner (or a test) switches on ---------------------------------------


class Faults:
    """Injected faults: set by flags at start, changed at run time by POST /admin/faults.

    crash_at  a named point in the protocol where the process exits at once
              (os._exit: no cleanup; a power cut too under --volatile-cache)
    vote_no   a participant refuses every prepare
    delay_ms  a participant waits this long before it handles a prepare
    slow_fsync_ms  the coordinator's disk takes this long to force a group of commits
    messages  faults on the messages this process sends (MessageFaults), in every process
    """

    def __init__(
        self, crash_points: tuple[str, ...], crash_at: str | None = None, **faults: Any
    ) -> None:
        self.crash_points = crash_points
        self.crash_at = crash_at
        # A participant passes vote_no and delay_ms; the coordinator only crashes,
        # so it refuses the faults it would silently ignore.
        self.kinds = ("crash_at", *faults, "messages")
        self.messages = MessageFaults()
        self.vote_no = bool(faults.get("vote_no", False))
        self.delay_ms = int(faults.get("delay_ms", 0))
        self.slow_fsync_ms = int(faults.get("slow_fsync_ms", 0))

    def as_dict(self) -> dict[str, Any]:
        return {kind: getattr(self, kind) for kind in self.kinds if kind != "messages"} | {
            "messages": self.messages.as_dict()
        }

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a JSON change; raise ValueError with a message for a bad one."""
        unknown = set(changes) - set(self.kinds)
        if unknown:
            raise ValueError(
                f"unknown fault {sorted(unknown)[0]!r}: this process takes {', '.join(self.kinds)}"
            )
        crash_at = changes.get("crash_at", self.crash_at)
        if crash_at is not None and crash_at not in self.crash_points:
            raise ValueError(f"crash_at must be one of {list(self.crash_points)} or null")
        vote_no = changes.get("vote_no", self.vote_no)
        if not isinstance(vote_no, bool):
            raise ValueError("vote_no must be true or false")
        delay_ms = milliseconds(changes, "delay_ms", self.delay_ms)
        slow_fsync_ms = milliseconds(changes, "slow_fsync_ms", self.slow_fsync_ms)
        if "messages" in changes:
            self.messages.update(changes["messages"])
        self.crash_at, self.vote_no = crash_at, vote_no
        self.delay_ms, self.slow_fsync_ms = delay_ms, slow_fsync_ms

    def crash_if(self, point: str, txid: str) -> None:
        if self.crash_at == point:
            crash_now(point, txid)

    def delay(self) -> None:
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)


OUTPUT_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print one whole line and flush it. Server threads print while the main thread
    prints its Listening line, and print() writes the text and the newline apart:
    two lines could be glued into one that a test or a demo waiting for
    "Listening on" would not recognise."""
    with OUTPUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def milliseconds(changes: dict[str, Any], name: str, current: int) -> int:
    value = changes.get(name, current)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DELAY_MS:
        raise ValueError(f"{name} must be a whole number 0..{MAX_DELAY_MS}")
    return value


def crash_now(point: str, txid: str) -> None:
    say(f"CRASH at {point} (tx {txid}): injected fault, exiting with no cleanup")
    os._exit(CRASH_EXIT_CODE)


# -- HTTP: JSON in, JSON out ---------------------------------------------------------


def new_app(name: str, store: Any, messenger: Messenger, faults: Faults) -> Flask:
    """A Flask app that answers every error as JSON and exposes /stats and /admin/faults.

    `store` is anything with `stats()` (a DurableStore, or PostgreSQL's), or None.
    """
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify(error=err.description), err.code

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        app.logger.exception("unexpected error")
        return jsonify(error=f"internal error: {type(err).__name__}"), 500

    @app.get("/stats")
    def stats():
        disk = store.stats() if store else {"forced_writes": 0, "fsyncs": 0}  # (the baseline)
        return jsonify(service=name, **disk, messages=messenger.messages)

    @app.route("/admin/faults", methods=["GET", "POST"])
    def admin_faults():
        if request.method == "POST":
            try:
                faults.update(json_object())
            except ValueError as err:
                abort(400, str(err))
        return jsonify(faults.as_dict())

    return app


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # [[[[...]]]]: 16 KB of brackets nests deeper than json will go
        abort(400, "the JSON body nests too deeply")
    if not isinstance(body, dict):
        abort(400, "the body must be a JSON object (Content-Type: application/json)")
    return body


def text_error(field: str) -> str:
    return f"{field} must be a non-empty string of at most {MAX_TEXT} characters (UTF-8, no NUL)"


def is_text(value: Any) -> bool:
    """A non-blank string of at most MAX_TEXT characters that every store can keep.

    No NUL (PostgreSQL's text refuses it) and no lone surrogate such as the
    JSON escape "\\ud800" (not UTF-8: SQLite and PostgreSQL both refuse it).
    """
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT or "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_txid(txid: Any) -> str:
    if not isinstance(txid, str) or not TXID_PATTERN.fullmatch(txid):
        abort(400, "txid must be 1-64 characters of letters, digits, '.', '-' or '_'")
    return txid


def order_and_attempt(txid: str) -> tuple[str, int]:
    """ "a1b2.3" -> ("a1b2", 3): the order a transaction is for, and which attempt at it.

    The coordinator names each attempt at an order `<order_id>.<incarnation>`
    (README, "Idempotent orders"); any other id is an order of its own, attempt 0.
    """
    order_id, dot, attempt = txid.rpartition(".")
    if dot and order_id and attempt.isdigit():
        return order_id, int(attempt)
    return txid, 0


def check_order_id(value: Any) -> str:
    if not isinstance(value, str) or not ORDER_ID_PATTERN.fullmatch(value):
        abort(400, "order_id must be 1-48 characters of letters, digits, '-' or '_'")
    return value


def check_order(body: dict[str, Any]) -> dict[str, Any]:
    """An order from a client: item, quantity, address (and an optional order_id,
    which the caller reads itself); 400 for anything else."""
    expected = {"item", "quantity", "address"}
    body = {k: v for k, v in body.items() if k != "order_id"}
    missing = sorted(expected - set(body))
    if missing:
        abort(400, f"missing field {missing[0]!r} (an order needs item, quantity, address)")
    unknown = sorted(set(body) - expected)
    if unknown:
        abort(400, f"unknown field {unknown[0]!r}")
    item, quantity, address = body["item"], body["quantity"], body["address"]
    if not is_text(item):
        abort(400, text_error("item"))
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        abort(400, "quantity must be a whole number")
    if not 1 <= quantity <= MAX_QUANTITY:
        abort(400, f"quantity must be 1..{MAX_QUANTITY}, got {quantity}")
    if not is_text(address):
        abort(400, text_error("address"))
    return {"item": item, "quantity": quantity, "address": address}


# -- serving ---------------------------------------------------------------------------


def add_server_args(parser: argparse.ArgumentParser, default_port: int, default_db: Path) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"port (default {default_port}; 0 = free)"
    )
    parser.add_argument(
        "--db", type=Path, default=default_db, help=f"SQLite file (default {default_db})"
    )
    parser.add_argument(
        "--volatile-cache",
        action="store_true",
        help="keep writes that are not yet fsynced in this process, like a disk's volatile "
        "cache: a kill -9 then loses them, as a power cut would",
    )


def check_server_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if not args.db.parent.is_dir() and args.db.parent != OUT_DIR:  # OUT_DIR: made on first use
        parser.error(f"--db: directory {args.db.parent} does not exist")


def check_seconds(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Each named flag must be a number of seconds in (0, MAX_SECONDS]; nan and inf are refused."""
    for name in names:
        if not 0 < getattr(args, name) <= MAX_SECONDS:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be > 0 and at most {MAX_SECONDS:g} s")


def add_participant_url_args(parser: argparse.ArgumentParser) -> None:
    """--inventory and --delivery, for the coordinator and the sequential baseline."""
    parser.add_argument("--inventory", default="http://127.0.0.1:5001", help="InventoryService URL")
    parser.add_argument("--delivery", default="http://127.0.0.1:5002", help="DeliveryService URL")


def participant_urls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Name -> base URL, inventory first: the order in which both callers visit them."""
    urls = {"inventory": args.inventory, "delivery": args.delivery}
    for name, url in urls.items():
        if not url.startswith(("http://", "https://")):
            parser.error(f"--{name} must be an http:// URL")
    return {name: url.rstrip("/") for name, url in urls.items()}


def bind(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """Bind now (so --port 0 knows its port), serve later with `serve_until_signalled`.

    threaded=True: a thread per request. The coordinator holds a request open
    while it waits for votes, and a participant may be told to answer slowly;
    one thread per request keeps one slow order from stalling all the others.
    Werkzeug's server is a teaching server (no worker processes, no limits);
    the README's "In production" names what replaces it.
    """
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no log line per request
    return make_server(host, port, app, threaded=True)


def server_url(server: BaseWSGIServer) -> str:
    """http://host:port of a bound server, with an IPv6 host in brackets (http://[::1]:5000)."""
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_until_signalled(server: BaseWSGIServer) -> None:
    """Print the Listening line, serve, and return cleanly on SIGINT or SIGTERM."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:  # a signal may arrive the moment the line is out: already inside the try
        say(f"Listening on {server_url(server)}")
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
