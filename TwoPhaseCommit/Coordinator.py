"""The Coordinator: takes a food order and makes the two services agree on it, durably.

    python TwoPhaseCommit/Coordinator.py --port 5000 \\
        --inventory http://127.0.0.1:5001 --delivery http://127.0.0.1:5002

POST /orders runs two-phase commit:
  phase 1  ask every participant to prepare, in parallel, each with a timeout;
  decide   commit only if every one voted yes; write the decision to our own
           log and fsync it (the commit point: from here the outcome is fixed);
  phase 2  tell every participant, retrying until each acknowledges.
On start it reads its log: undecided transactions are aborted (presumed
abort), decided ones are told again. Participants in doubt may ask
GET /decisions/<txid>. See the README's "The protocol" and "Recovery".
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import twopc_disk
from flask import Flask, abort, jsonify
from twopc_node import (
    OUT_DIR,
    DurableStore,
    Faults,
    Messenger,
    StoreError,
    Unreachable,
    add_participant_url_args,
    add_server_args,
    bind,
    check_order,
    check_seconds,
    check_server_args,
    json_object,
    new_app,
    participant_urls,
    serve_until_signalled,
    server_url,
)

DEFAULT_PORT = 5000
DEFAULT_DB = OUT_DIR / "coordinator.db"  # git-ignored, created on first use
CRASH_POINTS = ("before-decision", "after-decision", "after-first-commit")
STARTED, COMMITTED, ABORTED = "STARTED", "COMMITTED", "ABORTED"
MAX_PARALLEL_MESSAGES = 128  # threads sending prepares; 2 per order in flight

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    txid       TEXT PRIMARY KEY,
    order_json TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('STARTED', 'COMMITTED', 'ABORTED')),
    reason     TEXT NOT NULL DEFAULT '',
    done       INTEGER NOT NULL DEFAULT 0,  -- 1 once every participant acknowledged phase 2
    started_at REAL NOT NULL
);
"""


@dataclass
class Unfinished:
    """A decided transaction some participant has not yet acknowledged."""

    decision: str  # "commit" or "abort"
    waiting_for: set[str]  # participant names
    retry_at: float  # time.monotonic() of the next attempt
    backoff: float  # seconds until the attempt after that; doubles up to retry_max


@dataclass
class Coordinator:
    """Runs each order's two phases; owns the decision log and the phase-2 retries."""

    store: DurableStore
    participants: dict[str, str]  # name -> base URL, in the order phase 2 visits them
    faults: Faults
    messenger: Messenger = field(default_factory=Messenger)
    # Timing: how long a vote may take; how often phase 2 is retried (doubling up to retry_max).
    vote_timeout: float = 2.0
    retry_interval: float = 0.5
    retry_max: float = 5.0
    self_url: str = ""  # known once bound; participants use it to ask for decisions

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(MAX_PARALLEL_MESSAGES, thread_name_prefix="message")
        # Transactions this process is deciding right now: their answer to
        # GET /decisions is "pending", not a presumed abort.
        self.in_progress: set[str] = set()
        self.unfinished: dict[str, Unfinished] = {}
        # Guards unfinished; the finisher thread waits on it, place_order
        # notifies it when it hands over a decision still to deliver, and
        # main when the process stops.
        self.unfinished_changed = threading.Condition()

    # -- one order, start to finish -------------------------------------------------------

    def place_order(self, order: dict) -> dict:
        txid = uuid.uuid4().hex[:12]
        self.in_progress.add(txid)
        try:
            with self.store.transaction() as db:  # so recovery knows this transaction existed
                db.execute(
                    "INSERT INTO log (txid, order_json, state, started_at) VALUES (?, ?, ?, ?)",
                    (txid, json.dumps(order), STARTED, time.time()),
                )

            votes = self.collect_votes(txid, order)  # phase 1
            no_votes = [f"{name}: {v['reason']}" for name, v in votes.items() if v["vote"] != "yes"]
            decision = "abort" if no_votes else "commit"
            reason = "; ".join(no_votes)

            self.faults.crash_if("before-decision", txid)
            self.log_decision(txid, decision, reason)  # THE COMMIT POINT
        finally:
            self.in_progress.discard(txid)
        self.faults.crash_if("after-decision", txid)

        # Phase 2. A participant that voted no has already aborted on its own.
        targets = [n for n in self.participants if decision == "commit" or votes[n]["vote"] != "no"]
        waiting_for = self.send_decision(txid, decision, targets)
        if waiting_for:
            self.hand_to_finisher(txid, decision, waiting_for)
        else:
            self.mark_done(txid)
        return {
            "txid": txid,
            "outcome": "committed" if decision == "commit" else "aborted",
            "reason": reason,
            "votes": votes,
            "complete": not waiting_for,  # false: the outcome is fixed, delivery of it is not
        }

    def collect_votes(self, txid: str, order: dict) -> dict[str, dict]:
        """Phase 1: prepare everywhere at once; no answer in time counts as a no."""
        message = {"txid": txid, "order": order, "coordinator": self.self_url}
        futures = {
            name: self.pool.submit(
                self.messenger.call, "POST", f"{url}/prepare", self.vote_timeout, message
            )
            for name, url in self.participants.items()
        }
        deadline = time.monotonic() + self.vote_timeout
        votes = {}
        for name, future in futures.items():
            try:
                status, reply = future.result(timeout=max(0.0, deadline - time.monotonic()))
                if status == 200 and reply.get("vote") in ("yes", "no"):
                    votes[name] = {"vote": reply["vote"], "reason": reply.get("reason", "")}
                else:
                    votes[name] = {"vote": "none", "reason": f"bad reply {status}: {reply}"}
            except FutureTimeout:
                votes[name] = {"vote": "none", "reason": f"no vote within {self.vote_timeout:g} s"}
            except Unreachable as err:
                votes[name] = {"vote": "none", "reason": f"no vote: {err}"}
        return votes

    def log_decision(self, txid: str, decision: str, reason: str) -> None:
        """Write the decision durably *before* anyone hears it.

        If we told a participant "commit" first and crashed before writing, we
        would come back with no record, presume abort, and abort the others:
        one side committed, one aborted. Writing first makes the decision the
        same before and after any crash.
        """
        state = COMMITTED if decision == "commit" else ABORTED
        with self.store.transaction() as db:
            db.execute("UPDATE log SET state = ?, reason = ? WHERE txid = ?", (state, reason, txid))

    def send_decision(self, txid: str, decision: str, targets: list[str]) -> set[str]:
        """Phase 2, one attempt each, in order; return who has not acknowledged."""
        waiting_for = set()
        for name in targets:
            if not self.tell(name, txid, decision):
                waiting_for.add(name)
            elif decision == "commit":
                self.faults.crash_if("after-first-commit", txid)
        return waiting_for

    def tell(self, name: str, txid: str, decision: str) -> bool:
        url = f"{self.participants[name]}/{decision}"
        try:
            status, _ = self.messenger.call("POST", url, self.vote_timeout, {"txid": txid})
        except Unreachable:
            return False
        return status == 200

    def mark_done(self, txid: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE log SET done = 1 WHERE txid = ?", (txid,))

    # -- phase 2 until everyone has heard ----------------------------------------------

    def hand_to_finisher(self, txid: str, decision: str, waiting_for: set[str]) -> None:
        with self.unfinished_changed:
            self.unfinished[txid] = Unfinished(
                decision,
                set(waiting_for),
                time.monotonic() + self.retry_interval,
                self.retry_interval,
            )
            self.unfinished_changed.notify()

    def finish_forever(self, stop: threading.Event) -> None:
        """Background thread: retry phase 2 with back-off until every participant acknowledges.

        A decision once logged is never changed, so retrying is always safe:
        commit and abort are idempotent at the participants.
        """
        while not stop.is_set():
            with self.unfinished_changed:
                now = time.monotonic()
                due = [(t, u) for t, u in self.unfinished.items() if u.retry_at <= now]
                if not due:
                    soonest = min((u.retry_at for u in self.unfinished.values()), default=now + 0.5)
                    self.unfinished_changed.wait(timeout=max(0.01, min(0.5, soonest - now)))
                    continue
            for txid, job in due:
                job.waiting_for = {
                    n for n in job.waiting_for if not self.tell(n, txid, job.decision)
                }
                if job.waiting_for:
                    job.backoff = min(job.backoff * 2, self.retry_max)
                    job.retry_at = time.monotonic() + job.backoff
                else:
                    self.mark_done(txid)
                    with self.unfinished_changed:
                        del self.unfinished[txid]

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """On start: abort what was never decided, and re-send what was decided but not done."""
        with self.store.transaction() as db:
            undecided = db.execute("SELECT txid FROM log WHERE state = ?", (STARTED,)).fetchall()
            db.execute(
                "UPDATE log SET state = ?, reason = ? WHERE state = ?",
                (ABORTED, "coordinator restarted before deciding (presumed abort)", STARTED),
            )
        pending = self.store.read("SELECT txid, state FROM log WHERE done = 0")
        for row in pending:
            decision = "commit" if row["state"] == COMMITTED else "abort"
            # We do not know who acknowledged before the crash: tell everyone again.
            self.unfinished[row["txid"]] = Unfinished(
                decision, set(self.participants), retry_at=0.0, backoff=self.retry_interval
            )
        return len(undecided), len(pending)

    def decision_for(self, txid: str) -> str:
        """What a participant in doubt is told: commit, abort, or pending (ask again)."""
        # Look at in_progress before the log: place_order logs the decision
        # first and leaves in_progress after, so "not in progress, still
        # STARTED" really means nobody is deciding it.
        deciding = txid in self.in_progress
        rows = self.store.read("SELECT state FROM log WHERE txid = ?", (txid,))
        if not rows:
            return "abort"  # presumed abort: no record means it was never committed
        state = rows[0]["state"]
        if state == STARTED:
            return "pending" if deciding else "abort"
        return "commit" if state == COMMITTED else "abort"


def order_json(row: dict) -> dict:
    outcome = {STARTED: "in progress", COMMITTED: "committed", ABORTED: "aborted"}[row["state"]]
    return {
        "txid": row["txid"],
        "order": json.loads(row["order_json"]),
        "outcome": outcome,
        "reason": row["reason"],
        "complete": bool(row["done"]),
    }


def create_app(coordinator: Coordinator) -> Flask:
    app = new_app("coordinator", coordinator.store, coordinator.messenger, coordinator.faults)

    @app.post("/orders")
    def place_order():
        order = check_order(json_object())
        return jsonify(coordinator.place_order(order))

    @app.get("/orders")
    def orders():
        rows = coordinator.store.read("SELECT * FROM log ORDER BY started_at")
        return jsonify(orders=[order_json(r) for r in rows])

    @app.get("/orders/<txid>")
    def order(txid: str):
        rows = coordinator.store.read("SELECT * FROM log WHERE txid = ?", (txid,))
        if not rows:
            abort(404, f"no order {txid}")
        return jsonify(order_json(rows[0]))

    @app.get("/decisions/<txid>")
    def decision(txid: str):
        return jsonify(txid=txid, decision=coordinator.decision_for(txid))

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The 2PC coordinator for food orders.")
    add_server_args(parser, DEFAULT_PORT, DEFAULT_DB)
    add_participant_url_args(parser)
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--vote-timeout", type=float, default=2.0, help="seconds to wait for votes (default 2)"
    )
    timing.add_argument(
        "--retry-interval",
        type=float,
        default=0.5,
        help="first phase-2 retry after (default 0.5 s)",
    )
    timing.add_argument(
        "--retry-max", type=float, default=5.0, help="longest phase-2 back-off (default 5 s)"
    )
    parser.add_argument(
        "--crash-at",
        choices=CRASH_POINTS,
        help="fault injection: exit at once at this point of an order (also POST /admin/faults)",
    )
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    check_seconds(parser, args, "vote_timeout", "retry_interval", "retry_max")
    participants = participant_urls(parser, args)
    try:
        store = DurableStore(args.db, SCHEMA, twopc_disk.disk(args.volatile_cache))
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    coordinator = Coordinator(
        store,
        participants,
        Faults(CRASH_POINTS, args.crash_at),
        vote_timeout=args.vote_timeout,
        retry_interval=args.retry_interval,
        retry_max=args.retry_max,
    )
    aborted, resending = coordinator.recover()
    if aborted or resending:
        print(
            f"recovered from the log: {aborted} undecided transaction(s) aborted, "
            f"{resending} decision(s) to deliver again",
            flush=True,
        )
    server = bind(create_app(coordinator), args.host, args.port)
    coordinator.self_url = server_url(server)
    stop = threading.Event()
    finisher = threading.Thread(target=coordinator.finish_forever, args=(stop,), daemon=True)
    finisher.start()
    try:
        serve_until_signalled(server)
    finally:
        stop.set()
        with coordinator.unfinished_changed:  # wake the finisher now, not at its next timeout
            coordinator.unfinished_changed.notify()
        finisher.join(timeout=2)
        coordinator.pool.shutdown(wait=False, cancel_futures=True)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
