"""The Coordinator: takes a food order and makes the two services agree on it, durably.

    python TwoPhaseCommit/Coordinator.py --port 5000 \\
        --inventory http://127.0.0.1:5001 --delivery http://127.0.0.1:5002

POST /orders runs two-phase commit with presumed abort:
  phase 1  ask every participant to prepare, in parallel, each with a timeout;
  decide   commit only if every one voted yes. A commit is forced to our log
           (fsynced, in a group with any others waiting: the commit point);
           an abort is written but not forced, since no record means abort;
  phase 2  tell every participant: a commit is retried until each one
           acknowledges, an abort is sent once and never acknowledged.
The log has an identity, made with it; participants record it at prepare,
and a coordinator never presumes abort for a transaction of another log.
On start it resends unacknowledged commits and asks every participant for
its in-doubt transactions (XA's recover). See the README's "The protocol",
"Presumed abort" and "A coordinator that lost its log".
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import twopc_disk
from flask import Flask, abort, jsonify, request
from twopc_node import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    OUT_DIR,
    Batcher,
    DurableStore,
    Faults,
    Messenger,
    StoreError,
    Unreachable,
    add_participant_url_args,
    add_server_args,
    bind,
    check_order,
    check_order_id,
    check_seconds,
    check_server_args,
    json_object,
    new_app,
    participant_urls,
    say,
    serve_until_signalled,
    server_url,
)

DEFAULT_PORT = 5000
DEFAULT_DB = OUT_DIR / "coordinator.db"  # git-ignored, created on first use
CRASH_POINTS = ("before-decision", "after-decision", "after-first-commit")
COMMITTED, ABORTED = "COMMITTED", "ABORTED"
PREPARE_ENVELOPE = 1024  # bytes of a batch of prepares besides the prepares themselves
MAX_PARALLEL_MESSAGES = 128  # threads sending prepares; 2 per order in flight
ORDER_WAIT = 30.0  # s a retry waits for the same order's attempt still running here

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,  -- 'log_id': this log's identity; 'incarnation': starts so far
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    txid       TEXT PRIMARY KEY,  -- '<order_id>.<incarnation>': one attempt at an order
    order_id   TEXT NOT NULL,
    order_json TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('COMMITTED', 'ABORTED')),
    reason     TEXT NOT NULL DEFAULT '',
    votes      TEXT NOT NULL DEFAULT '{}',
    done       INTEGER NOT NULL DEFAULT 0,  -- 1 once every participant acknowledged a commit
    decided_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_order ON log (order_id);
"""


class OrderConflict(Exception):
    """An order_id already used for a different order."""


# -- the decision log -------------------------------------------------------------------


class DecisionLog:
    """The coordinator's log: its identity, and one record per decided transaction.

    Commit records are forced in groups (group commit, a Batcher): commits
    that arrive while one group is being fsynced go together in the next.
    """

    def __init__(self, store: DurableStore, faults: Faults) -> None:
        self.store = store
        self.faults = faults  # slow_fsync_ms: a slow disk, to watch groups form
        with store.transaction() as db:
            meta = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM meta")}
            self.log_id = meta.get("log_id") or uuid.uuid4().hex
            # Every start is a new incarnation, so a retried order gets a new
            # txid and no message meant for an older attempt can touch it.
            self.incarnation = int(meta.get("incarnation", "0")) + 1
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('log_id', ?), ('incarnation', ?)",
                (self.log_id, str(self.incarnation)),
            )
        self.commits = Batcher(self._write_commits)  # group commit
        self.done = Batcher(self._write_done)

    def force_commit(self, txid: str, order_id: str, order: dict, votes: dict) -> None:
        """Return once this commit record is on disk: THE COMMIT POINT."""
        record = (txid, order_id, json.dumps(order), COMMITTED, "", json.dumps(votes), time.time())
        self.commits.submit(record)

    def _write_commits(self, records: list[tuple]) -> list[None]:
        time.sleep(self.faults.slow_fsync_ms / 1000)  # a slow disk: more join the next group
        with self.store.transaction() as db:  # forced: one fsync for the whole group
            db.executemany(INSERT_DECISION, records)
        return [None] * len(records)

    @property
    def groups(self) -> int:
        """fsyncs that carried commit decisions."""
        return self.commits.batches

    def note_abort(self, txid: str, order_id: str, order: dict, reason: str, votes: dict) -> None:
        """Written, not forced: lost in a power cut, an abort is still an abort (presumed)."""
        order_text, votes_text = json.dumps(order), json.dumps(votes)
        record = (txid, order_id, order_text, ABORTED, reason, votes_text, time.time())
        with self.store.transaction(forced=False) as db:
            db.execute(INSERT_DECISION, record)
            db.execute("UPDATE log SET done = 1 WHERE txid = ?", (txid,))  # nothing to deliver

    def mark_done(self, txid: str) -> None:
        """Every participant acknowledged: not forced (lost, we just resend the commit)."""
        self.done.submit(txid)

    def _write_done(self, txids: list[str]) -> list[None]:
        with self.store.transaction(forced=False) as db:  # one write for a whole batch
            db.executemany("UPDATE log SET done = 1 WHERE txid = ?", [(t,) for t in txids])
        return [None] * len(txids)

    def state_of(self, txid: str) -> str | None:
        rows = self.store.read("SELECT state FROM log WHERE txid = ?", (txid,))
        return rows[0]["state"] if rows else None

    def order(self, order_id: str) -> dict | None:
        """The order's record: its committed attempt if any, else its latest abort."""
        rows = self.store.read(
            "SELECT * FROM log WHERE order_id = ? "
            "ORDER BY state = 'COMMITTED' DESC, decided_at DESC LIMIT 1",
            (order_id,),
        )
        return rows[0] if rows else None

    def undelivered_commits(self) -> list[str]:
        rows = self.store.read("SELECT txid FROM log WHERE state = ? AND done = 0", (COMMITTED,))
        return [r["txid"] for r in rows]


INSERT_DECISION = (
    "INSERT OR IGNORE INTO log (txid, order_id, order_json, state, reason, votes, decided_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def order_json(row: dict) -> dict:
    return {
        "order_id": row["order_id"],
        "txid": row["txid"],
        "order": json.loads(row["order_json"]),
        "outcome": "committed" if row["state"] == COMMITTED else "aborted",
        "reason": row["reason"],
        "votes": json.loads(row["votes"]),
        "complete": bool(row["done"]),
    }


# -- the coordinator ------------------------------------------------------------------


@dataclass
class Unfinished:
    """A commit some participant has not yet acknowledged."""

    waiting_for: set[str]  # participant names
    retry_at: float  # time.monotonic() of the next attempt
    backoff: float  # seconds until the attempt after that; doubles up to retry_max


@dataclass
class Coordinator:
    """Runs each order's two phases; owns the decision log and the phase-2 retries."""

    log: DecisionLog
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
        # Orders being placed right now (order_id -> set when done): a retry waits for it.
        self.running_orders: dict[str, threading.Event] = {}
        self.orders_lock = threading.Lock()
        # Prepares and commits to one participant travel in batches (README,
        # "Batching and group commit"), never larger than a participant takes.
        self.phase_one = {  # one prepare a message until the participant says it takes more
            name: Batcher(
                functools.partial(self._send_prepares, name),
                1,
                size=lambda prepare: len(json.dumps(prepare)) + 2,  # and ", "
                budget=MAX_BODY_BYTES - PREPARE_ENVELOPE,
            )
            for name in self.participants
        }
        self.phase_two = {
            name: Batcher(functools.partial(self._send_commits, name), MAX_BATCH)
            for name in self.participants
        }
        self.unfinished: dict[str, Unfinished] = {}
        # Guards unfinished; the finisher thread waits on it, place_order
        # notifies it when it hands over a commit still to deliver, and
        # main when the process stops.
        self.unfinished_changed = threading.Condition()

    # -- one order, start to finish (or the answer it already has) --------------------------

    def place_order(self, order: dict, order_id: str) -> dict:
        """Run the order once; a retry of the same order_id gets the first outcome."""
        while True:
            with self.orders_lock:
                running = self.running_orders.get(order_id)
                if running is None:
                    known = self.log.order(order_id)
                    if known is not None:
                        if json.loads(known["order_json"]) != order:
                            raise OrderConflict(f"order_id {order_id} was used for another order")
                        return {**order_json(known), "retry": True}
                    running = self.running_orders[order_id] = threading.Event()
                    break
            if not running.wait(ORDER_WAIT):
                raise TimeoutError(f"order {order_id} is still being decided; ask again later")
        try:
            return self.run_two_phase_commit(f"{order_id}.{self.log.incarnation}", order_id, order)
        finally:
            with self.orders_lock:
                del self.running_orders[order_id]
            running.set()

    def run_two_phase_commit(self, txid: str, order_id: str, order: dict) -> dict:
        self.in_progress.add(txid)
        try:
            votes = self.collect_votes(txid, order)  # phase 1
            no_votes = [f"{name}: {v['reason']}" for name, v in votes.items() if v["vote"] != "yes"]
            decision = "abort" if no_votes else "commit"
            reason = "; ".join(no_votes)
            self.faults.crash_if("before-decision", txid)
            if decision == "commit":
                self.log.force_commit(txid, order_id, order, votes)  # THE COMMIT POINT
            else:
                self.log.note_abort(txid, order_id, order, reason, votes)
        finally:
            self.in_progress.discard(txid)
        self.faults.crash_if("after-decision", txid)

        if decision == "abort":
            # Sent once, never acknowledged, never retried: a participant that
            # misses it asks, and hears "abort" whether or not we kept a record.
            for name, vote in votes.items():
                if vote["vote"] != "no":  # one that voted no has already let go
                    self.send_abort(name, txid)
            waiting_for: set[str] = set()
        else:
            waiting_for = self.send_commits(txid)  # phase 2
            if waiting_for:
                self.hand_to_finisher(txid, waiting_for)
            else:
                self.log.mark_done(txid)
        return {
            "order_id": order_id,
            "txid": txid,
            "outcome": "committed" if decision == "commit" else "aborted",
            "reason": reason,
            "votes": votes,
            "complete": not waiting_for,  # false: the outcome is fixed, delivery of it is not
        }

    def collect_votes(self, txid: str, order: dict) -> dict[str, dict]:
        """Phase 1: prepare everywhere at once; no answer in time counts as a no."""
        prepare = {"txid": txid, "order": order}
        futures = {
            name: self.pool.submit(self.phase_one[name].submit, prepare)
            for name in self.participants
        }
        deadline = time.monotonic() + self.vote_timeout
        votes = {}
        for name, future in futures.items():
            try:
                votes[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                votes[name] = {"vote": "none", "reason": f"no vote within {self.vote_timeout:g} s"}
        return votes

    def _send_prepares(self, name: str, prepares: list[dict]) -> list[dict]:
        """One message asks for the votes of every order in the batch; a vote each."""
        body = {
            "prepares": prepares,
            "coordinator": self.self_url,
            "coordinator_log": self.log.log_id,
        }
        url = f"{self.participants[name]}/prepare"
        try:
            status, reply = self.messenger.call("POST", url, self.vote_timeout, body)
        except Unreachable as err:
            return [{"vote": "none", "reason": f"no vote: {err}"}] * len(prepares)
        votes = reply.get("votes") if status == 200 and isinstance(reply, dict) else None
        if votes is not None:  # how many prepares its next messages may carry
            per_message = reply.get("prepares_per_message", 1)
            if isinstance(per_message, int) and not isinstance(per_message, bool):
                self.phase_one[name].most = max(1, min(MAX_BATCH, per_message))
        if not isinstance(votes, list) or len(votes) != len(prepares):
            return [{"vote": "none", "reason": f"bad reply {status}: {reply}"}] * len(prepares)
        return [
            {"vote": vote["vote"], "reason": str(vote.get("reason", ""))}
            if isinstance(vote, dict)
            and vote.get("txid") == asked["txid"]
            and vote.get("vote") in ("yes", "no")
            else {"vote": "none", "reason": f"bad vote: {vote}"}
            for asked, vote in zip(prepares, votes, strict=True)
        ]

    def send_commits(self, txid: str) -> set[str]:
        """Phase 2 for a commit, one attempt each, in order; return who has not acknowledged."""
        waiting_for = set()
        for name in self.participants:
            if not self.tell_commit(name, txid):
                waiting_for.add(name)
            else:
                self.faults.crash_if("after-first-commit", txid)
        return waiting_for

    def tell_commit(self, name: str, txid: str) -> bool:
        """True once the participant acknowledged (or refused for good: see below).

        Commits to one participant travel in batches: those asked for while
        one message is on its way go together in the next (README, "Batching and group commit").
        """
        return self.phase_two[name].submit(txid)

    def _send_commits(self, name: str, txids: list[str]) -> list[bool]:
        body = {"txids": txids, "coordinator_log": self.log.log_id}
        url = f"{self.participants[name]}/commit"
        try:
            status, reply = self.messenger.call("POST", url, self.vote_timeout, body)
        except Unreachable:
            return [False] * len(txids)
        results = reply.get("results") if status == 200 and isinstance(reply, dict) else None
        if not isinstance(results, dict):  # not an answer we can read: resend later
            return [False] * len(txids)
        acknowledged = []
        for txid in txids:
            result = results.get(txid)
            result = result if isinstance(result, dict) else {}
            if result.get("status") == 409:
                # It aborted the transaction on an operator's word (a heuristic
                # decision) and cannot commit it now: resending will not help.
                why = result.get("error", "")
                say(f"HEURISTIC DAMAGE: {name} refused commit of {txid}: {why}")
            acknowledged.append(result.get("status") in (200, 409))
        return acknowledged

    def send_abort(self, name: str, txid: str) -> None:
        body = {"txid": txid, "coordinator_log": self.log.log_id}
        self.messenger.notify(f"{self.participants[name]}/abort", self.vote_timeout, body)

    # -- phase 2 until everyone has heard ----------------------------------------------

    def hand_to_finisher(self, txid: str, waiting_for: set[str]) -> None:
        with self.unfinished_changed:
            self.unfinished[txid] = Unfinished(
                set(waiting_for), time.monotonic() + self.retry_interval, self.retry_interval
            )
            self.unfinished_changed.notify()

    def finish_forever(self, stop: threading.Event) -> None:
        """Background thread: resend commits with back-off until every participant acknowledges.

        A decision once logged is never changed, so resending is always safe:
        commit is idempotent at the participants.
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
                job.waiting_for = {n for n in job.waiting_for if not self.tell_commit(n, txid)}
                if job.waiting_for:
                    job.backoff = min(job.backoff * 2, self.retry_max)
                    job.retry_at = time.monotonic() + job.backoff
                else:
                    self.log.mark_done(txid)
                    with self.unfinished_changed:
                        del self.unfinished[txid]

    # -- recovery --------------------------------------------------------------------------

    def resend_logged_commits(self) -> int:
        """On start: every commit not known to be acknowledged is delivered again."""
        pending = self.log.undelivered_commits()
        for txid in pending:
            # We do not know who acknowledged before the crash: tell everyone again.
            self.unfinished[txid] = Unfinished(set(self.participants), 0.0, self.retry_interval)
        return len(pending)

    def recover_in_doubt(self, stop: threading.Event) -> None:
        """On start, in the background: ask each participant for its in-doubt transactions
        (XA's recover) and end the doubt of every one prepared under this log.

        With presumed abort nothing is logged before the decision, so this is
        how a crash before deciding gets cleaned up at once instead of when
        each participant next asks. Transactions of another coordinator log
        are left alone: this log cannot know their outcome.
        """
        waiting = dict(self.participants)
        backoff = self.retry_interval
        found = committed = aborted = foreign = 0
        while waiting and not stop.is_set():
            for name, url in list(waiting.items()):
                try:
                    status, reply = self.messenger.call(
                        "GET", f"{url}/transactions?state=PREPARED", self.vote_timeout
                    )
                except Unreachable:
                    continue
                if status != 200:
                    continue
                del waiting[name]
                for tx in reply.get("transactions", []):
                    found += 1
                    decision = self.decision_for(tx["txid"], tx.get("coordinator_log", ""))
                    if decision == "commit":
                        committed += 1  # delivered by the finisher (again, if its unforced
                        # COMMITTED was lost in a power cut at the participant)
                        with self.unfinished_changed:
                            known = tx["txid"] in self.unfinished
                        if not known:
                            self.hand_to_finisher(tx["txid"], {name})
                    elif decision == "abort":
                        aborted += 1
                        self.send_abort(name, tx["txid"])
                    elif decision == "unknown":
                        foreign += 1
            if waiting:
                stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max)
        if not stop.is_set():
            say(
                f"asked the participants for in-doubt transactions: {found} found, "
                f"{committed} committed, {aborted} aborted (presumed), "
                f"{foreign} of another coordinator log (left for the operator)"
            )

    def decision_for(self, txid: str, asker_log: str) -> str:
        """What a participant in doubt is told: commit, abort, pending (ask again), or
        unknown (the transaction was prepared under another coordinator log)."""
        if asker_log and asker_log != self.log.log_id:
            return "unknown"  # never presume abort for a log we are not
        # Look at in_progress before the log: run_two_phase_commit logs the
        # decision first and leaves in_progress after, so "not in progress,
        # no record" really means nobody is deciding it.
        deciding = txid in self.in_progress
        state = self.log.state_of(txid)
        if state is None:
            return "pending" if deciding else "abort"  # presumed abort: commits are logged
        return "commit" if state == COMMITTED else "abort"


def create_app(coordinator: Coordinator) -> Flask:
    log = coordinator.log
    app = new_app("coordinator", log.store, coordinator.messenger, coordinator.faults)

    @app.post("/orders")
    def place_order():
        body = json_object()
        order = check_order(body)
        order_id, key = body.get("order_id"), request.headers.get("Idempotency-Key")
        if order_id is not None and key is not None and order_id != key:
            abort(400, "the body's order_id and the Idempotency-Key header name different orders")
        order_id = order_id if order_id is not None else key
        order_id = uuid.uuid4().hex[:12] if order_id is None else check_order_id(order_id)
        try:
            return jsonify(coordinator.place_order(order, order_id))
        except OrderConflict as err:
            abort(422, str(err))
        except TimeoutError as err:
            abort(409, str(err))

    @app.get("/orders")
    def orders():
        rows = log.store.read("SELECT * FROM log ORDER BY decided_at")
        return jsonify(orders=[order_json(r) for r in rows])

    @app.get("/orders/<order_id>")
    def order(order_id: str):
        row = log.order(order_id)
        if row is None:
            with coordinator.orders_lock:
                running = order_id in coordinator.running_orders
            if running:
                return jsonify(order_id=order_id, outcome="in progress")
            # Presumed abort, as far as this log knows: an order of a lost log may
            # have committed (README, "A coordinator that lost its log").
            abort(
                404,
                f"no record of order {order_id} in log {log.log_id}: "
                "if it was placed under this log, it did not commit",
            )
        return jsonify(order_json(row))

    @app.get("/decisions/<txid>")
    def decision(txid: str):
        asker_log = request.args.get("log", "")
        answer = coordinator.decision_for(txid, asker_log)
        reply = {"txid": txid, "decision": answer, "coordinator_log": log.log_id}
        if answer == "unknown":
            reply["reason"] = (
                f"prepared under coordinator log {asker_log}, but this coordinator's log is "
                f"{log.log_id}: it cannot know the outcome"
            )
        return jsonify(reply)

    @app.get("/log")
    def identity():
        return jsonify(log_id=log.log_id, incarnation=log.incarnation, commit_groups=log.groups)

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
        faults = Faults(CRASH_POINTS, args.crash_at, slow_fsync_ms=0)
        log = DecisionLog(store, faults)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    coordinator = Coordinator(
        log,
        participants,
        faults,
        Messenger(faults.messages),
        vote_timeout=args.vote_timeout,
        retry_interval=args.retry_interval,
        retry_max=args.retry_max,
    )
    resending = coordinator.resend_logged_commits()
    say(
        f"coordinator log {log.log_id}, incarnation {log.incarnation}: "
        f"{resending} commit(s) to deliver again"
    )
    server = bind(create_app(coordinator), args.host, args.port)
    coordinator.self_url = server_url(server)
    stop = threading.Event()
    finisher = threading.Thread(target=coordinator.finish_forever, args=(stop,), daemon=True)
    finisher.start()
    threading.Thread(target=coordinator.recover_in_doubt, args=(stop,), daemon=True).start()
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
