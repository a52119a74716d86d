"""What every process of the two-phase-commit prototype shares: a durable log, faults, serving.

The coordinator and both participants are separate programs with separate
SQLite files; this module holds the plumbing they have in common, so that
Coordinator.py and twopc_participant.py read as the protocol and nothing else.
See the README's "Durability: when is a write a promise?" and "Break it".
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

MAX_BODY_BYTES = 16 * 1024  # an order is a few hundred bytes; anything larger is a mistake
MAX_QUANTITY = 100  # one order cannot empty a warehouse by a typo
MAX_TEXT = 200  # longest item name or address we accept
TXID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
CRASH_EXIT_CODE = 75  # what an injected crash exits with, so a test can tell it from a bug
MAX_DELAY_MS = 60_000  # longest injected delay: a minute is "very late", more is a typo
MAX_SECONDS = 3600.0  # longest timeout, back-off or interval any flag accepts
OUT_DIR = Path(__file__).resolve().parent / "out"  # git-ignored: databases of runs by hand


# -- the durable log -------------------------------------------------------------


class DurableStore:
    """One SQLite file, written only through `transaction()`, which is durable on return.

    WAL journal + synchronous=FULL: every COMMIT fsyncs the write-ahead log
    before it returns, so a change that `transaction()` has finished survives a
    kill -9 or a power cut. That is what lets a participant promise "yes" and a
    coordinator record a decision. `fsyncs` counts those commits (each one
    fsync of the WAL; checkpoints add a few more that we do not count).
    """

    def __init__(self, path: str | Path, schema: str) -> None:
        try:
            Path(path).parent.mkdir(exist_ok=True)  # the default out/ on a first run
            self.db = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=10
            )
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(schema)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open database {path}: {err}") from None
        # One connection, one writer at a time: every request thread takes this
        # lock for its whole read-check-write, so two orders can never both see
        # the last pizza as available.
        self.lock = threading.Lock()
        self.fsyncs = 0

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; rolled back if the block raises."""
        with self.lock:
            changes_before = self.db.total_changes
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            if self.db.total_changes != changes_before:  # a read-only COMMIT writes nothing
                self.fsyncs += 1

    def read(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(row) for row in self.db.execute(sql, params).fetchall()]

    def close(self) -> None:
        with self.lock:
            self.db.close()


class StoreError(RuntimeError):
    """The database file cannot be opened or has the wrong shape."""


# -- messages between processes ----------------------------------------------------


class Unreachable(Exception):
    """The other process did not answer: refused, timed out, or replied with garbage."""


class Messenger:
    """Sends protocol messages as HTTP requests and counts them.

    Each request is one message and its reply another; `sent` counts requests.
    Connections are kept open in a small pool of sessions, each used by one
    thread at a time (requests.Session is not thread-safe), so a message costs
    a round trip, not a TCP handshake, even from a short-lived request thread.
    """

    def __init__(self) -> None:
        self._idle: list[requests.Session] = []  # list.pop/append are atomic
        self._lock = threading.Lock()
        self.sent = 0

    def call(
        self, method: str, url: str, timeout: float, body: dict | None = None
    ) -> tuple[int, dict]:
        """Send one request; return (status, JSON reply) or raise Unreachable."""
        with self._lock:
            self.sent += 1
        try:
            session = self._idle.pop()
        except IndexError:
            session = requests.Session()
        try:
            reply = session.request(method, url, json=body, timeout=timeout)
            result = reply.status_code, reply.json()
        except (requests.RequestException, ValueError) as err:
            session.close()  # its connection may be half-dead: do not reuse it
            raise Unreachable(f"{method} {url}: {type(err).__name__}") from None
        self._idle.append(session)
        return result


# -- faults a learner (or a test) switches on ---------------------------------------


class Faults:
    """Injected faults: set by flags at start, changed at run time by POST /admin/faults.

    crash_at  a named point in the protocol where the process exits at once
              (os._exit: no cleanup, no flushing, like a power cut)
    vote_no   a participant refuses every prepare
    delay_ms  a participant waits this long before it handles a prepare
    """

    def __init__(
        self, crash_points: tuple[str, ...], crash_at: str | None = None, **faults: Any
    ) -> None:
        self.crash_points = crash_points
        self.crash_at = crash_at
        # A participant passes vote_no and delay_ms; the coordinator only crashes,
        # so it refuses the faults it would silently ignore.
        self.kinds = ("crash_at", *faults)
        self.vote_no = bool(faults.get("vote_no", False))
        self.delay_ms = int(faults.get("delay_ms", 0))

    def as_dict(self) -> dict[str, Any]:
        return {kind: getattr(self, kind) for kind in self.kinds}

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
        delay_ms = changes.get("delay_ms", self.delay_ms)
        if (
            isinstance(delay_ms, bool)
            or not isinstance(delay_ms, int)
            or not 0 <= delay_ms <= MAX_DELAY_MS
        ):
            raise ValueError(f"delay_ms must be a whole number 0..{MAX_DELAY_MS}")
        self.crash_at, self.vote_no, self.delay_ms = crash_at, vote_no, delay_ms

    def crash_if(self, point: str, txid: str) -> None:
        if self.crash_at == point:
            crash_now(point, txid)

    def delay(self) -> None:
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)


def crash_now(point: str, txid: str) -> None:
    print(f"CRASH at {point} (tx {txid}): injected fault, exiting with no cleanup", flush=True)
    os._exit(CRASH_EXIT_CODE)


# -- HTTP: JSON in, JSON out ---------------------------------------------------------


def new_app(name: str, store: DurableStore | None, messenger: Messenger, faults: Faults) -> Flask:
    """A Flask app that answers every error as JSON and exposes /stats and /admin/faults."""
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
        fsyncs = store.fsyncs if store else 0  # the bench's baseline keeps no log
        return jsonify(service=name, fsyncs=fsyncs, messages_sent=messenger.sent)

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
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, "the body must be a JSON object (Content-Type: application/json)")
    return body


def check_txid(txid: Any) -> str:
    if not isinstance(txid, str) or not TXID_PATTERN.fullmatch(txid):
        abort(400, "txid must be 1-64 characters of letters, digits, '-' or '_'")
    return txid


def check_order(body: dict[str, Any]) -> dict[str, Any]:
    """An order from a client: item, quantity, address; 400 for anything else."""
    expected = {"item", "quantity", "address"}
    missing = sorted(expected - set(body))
    if missing:
        abort(400, f"missing field {missing[0]!r} (an order needs item, quantity, address)")
    unknown = sorted(set(body) - expected)
    if unknown:
        abort(400, f"unknown field {unknown[0]!r}")
    item, quantity, address = body["item"], body["quantity"], body["address"]
    if not isinstance(item, str) or not 0 < len(item.strip()) <= MAX_TEXT:
        abort(400, f"item must be a non-empty string of at most {MAX_TEXT} characters")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        abort(400, "quantity must be a whole number")
    if not 1 <= quantity <= MAX_QUANTITY:
        abort(400, f"quantity must be 1..{MAX_QUANTITY}, got {quantity}")
    if not isinstance(address, str) or not 0 < len(address.strip()) <= MAX_TEXT:
        abort(400, f"address must be a non-empty string of at most {MAX_TEXT} characters")
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
        print(f"Listening on {server_url(server)}", flush=True)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
