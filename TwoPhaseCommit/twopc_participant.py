"""The participant's side of two-phase commit, shared by InventoryService and DeliveryService.

A participant holds a resource (stock, riders). It is asked to *prepare*: it
reserves what the order needs, forces the reservation to disk as PREPARED
(with the identity of the coordinator's log), and votes yes. From then on it
is *in doubt*: it may not give the reservation back on its own, not even
after a crash, until it learns the decision, from the coordinator's phase 2,
by asking `GET /decisions/<txid>`, or from an operator who decides by hand (a
heuristic decision). Only PREPARED is forced: with presumed abort, a lost
commit or abort record is learned again by asking. See the README's "The
participant's promise", "In doubt" and "A coordinator that lost its log".

What differs between the two services (what a reservation is) lives in a
`Resource`: reserve / make_permanent / release, like queue.Queue's _put/_get.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import apsw
import twopc_disk
from flask import Flask, abort, jsonify, request
from twopc_node import (
    MAX_BATCH,
    MAX_DELAY_MS,
    MAX_QUANTITY,
    MAX_TEXT,
    DurableStore,
    Faults,
    Messenger,
    StoreError,
    Unreachable,
    bind,
    check_seconds,
    check_txid,
    crash_now,
    is_text,
    json_object,
    new_app,
    order_and_attempt,
    say,
    serve_until_signalled,
    text_error,
)

PREPARED, COMMITTED, ABORTED = "PREPARED", "COMMITTED", "ABORTED"
CRASH_POINTS = ("before-vote", "after-vote")
ASK_TIMEOUT = 2.0  # s for one GET /decisions to the coordinator
LOG_ID_PATTERN = re.compile(r"[A-Za-z0-9]{1,64}")
# Where to ask when in doubt: kept in the row (and in PostgreSQL's gid), so plain ASCII.
URL_PATTERN = re.compile(rf"https?://[!-~]{{1,{MAX_TEXT - len('https://')}}}")
# resolved_by of a decision made by hand, until the coordinator's own decision is known
HEURISTIC = "heuristic {} by an operator"

TRANSACTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    txid        TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('PREPARED', 'COMMITTED', 'ABORTED')),
    detail      TEXT NOT NULL DEFAULT '{}',  -- what this participant holds for it, as JSON
    reason      TEXT NOT NULL DEFAULT '',    -- why it voted no or was aborted
    coordinator TEXT NOT NULL DEFAULT '',    -- whom to ask for the decision when in doubt
    coordinator_log TEXT NOT NULL DEFAULT '', -- the identity of the log that will decide it
    order_id    TEXT NOT NULL DEFAULT '',    -- txid = '<order_id>.<attempt>'
    attempt     INTEGER NOT NULL DEFAULT 0,
    resolved_by TEXT NOT NULL DEFAULT '',    -- how it learned the decision
    doubt       TEXT NOT NULL DEFAULT '',    -- while PREPARED: why it is still waiting
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_by_order ON transactions (order_id);
"""


class Refused(Exception):
    """The participant's reason to vote no (out of stock, no free rider, bad quantity)."""


class Resource(Protocol):
    """What a participant reserves. Each hook runs inside one durable transaction."""

    name: str

    def reserve(self, db: apsw.Connection, txid: str, order: dict) -> dict:
        """Set aside what `order` needs so no other order can take it; return the detail
        to remember (JSON-able). Raise Refused with a reason to vote no."""
        ...

    def make_permanent(self, db: apsw.Connection, txid: str, detail: dict) -> None: ...

    def release(self, db: apsw.Connection, txid: str, detail: dict) -> None: ...


class ProtocolConflict(Exception):
    """A decision that contradicts what this participant already did (commit after abort)."""


class Participant:
    """The state machine: (none) -> PREPARED -> COMMITTED | ABORTED, or (none) -> ABORTED."""

    # How many prepares one message to this participant should carry, said in
    # every vote reply: here a whole batch, voted on at once with one fsync.
    PREPARES_PER_MESSAGE = MAX_BATCH

    def __init__(
        self,
        resource: Resource,
        store: DurableStore,
        faults: Faults,
        messenger: Messenger,
        in_doubt_after: float,
        ask_max: float,
    ) -> None:
        self.resource = resource
        self.store = store
        self.faults = faults
        self.messenger = messenger
        # Resolving doubt: a PREPARED transaction older than in_doubt_after
        # seconds asks the coordinator, then again after 2x, 4x ... ask_max.
        self.in_doubt_after = in_doubt_after
        self.ask_max = ask_max

    # -- phase 1 ---------------------------------------------------------------------

    def prepare(
        self, txid: str, order: dict, coordinator: str, coordinator_log: str
    ) -> tuple[bool, str]:
        """Reserve and vote. Returns (yes?, reason). Asking twice gets the same answer."""
        return self.prepare_many([(txid, order)], coordinator, coordinator_log)[0]

    def prepare_many(
        self, prepares: list[tuple[str, dict]], coordinator: str, coordinator_log: str
    ) -> list[tuple[bool, str]]:
        """Vote on several transactions (txid, order) at once, each on its own merits.

        One forced write carries every yes: group commit at the participant,
        for a coordinator that sends the prepares of concurrent orders in one
        message (README, "Batching and group commit"). A no takes back only its own reservation.
        """
        self.faults.delay()
        for txid, _ in prepares:
            self.faults.crash_if("before-vote", txid)
        votes: list[tuple[bool, str]] = []
        with self.store.transaction() as db:  # forced: once it returns, every yes holds
            for txid, order in prepares:
                db.execute("SAVEPOINT vote")
                try:
                    votes.append(self._vote(db, txid, order, coordinator, coordinator_log))
                except Refused as no:
                    db.execute("ROLLBACK TO vote")  # whatever this one reserved
                    votes.append((False, str(no)))
                db.execute("RELEASE vote")
        refused = [(t, why) for (t, _), (yes, why) in zip(prepares, votes, strict=True) if not yes]
        if refused:
            # Voting no is a unilateral abort: nothing reserved, nothing to force.
            with self.store.transaction(forced=False) as db:
                for txid, why in refused:
                    if self._row(db, txid) is None:
                        self._insert(db, txid, ABORTED, {}, why, coordinator, coordinator_log, "")
        return votes

    def _vote(
        self, db: apsw.Connection, txid: str, order: dict, coordinator: str, coordinator_log: str
    ) -> tuple[bool, str]:
        """Reserve for one transaction and record it PREPARED, or raise Refused."""
        row = self._row(db, txid)
        if row is not None:
            return self._same_vote_again(row, coordinator_log)
        order_id, attempt = order_and_attempt(txid)
        self._check_earlier_attempts(db, txid, order_id, attempt, coordinator_log)
        if self.faults.vote_no:
            raise Refused("told to vote no (fault injection)")
        detail = self.resource.reserve(db, txid, order)
        self._insert(db, txid, PREPARED, detail, "", coordinator, coordinator_log, "")
        return True, ""

    @staticmethod
    def _same_vote_again(row: dict, coordinator_log: str) -> tuple[bool, str]:
        # A repeated prepare, or one that arrives after the coordinator gave
        # up on us and sent abort: the recorded state is the answer.
        if row["coordinator_log"] != coordinator_log:
            raise Refused(
                f"{row['txid']} is {row['state']} here under coordinator log "
                f"{row['coordinator_log']}: only an operator can settle it"
            )
        if row["state"] == ABORTED:
            return False, row["reason"] or "already aborted"
        return True, ""

    def _check_earlier_attempts(
        self, db: apsw.Connection, txid: str, order_id: str, attempt: int, coordinator_log: str
    ) -> None:
        """An order is reserved at most once, whatever the retries (README, "Idempotent orders").

        The coordinator starts a new attempt at an order only when its log
        holds no decision for it, so an older attempt of the same log still
        PREPARED here can never commit: it is released now, not when it times
        out. An order known under another coordinator's log is not ours to touch.
        """
        earlier = db.execute(
            "SELECT * FROM transactions WHERE order_id = ? AND txid != ? AND state != ?",
            (order_id, txid, ABORTED),
        ).fetchall()
        for other in earlier:
            refuse_unless_superseded(other, order_id, attempt, coordinator_log)
            self.resource.release(db, other["txid"], json.loads(other["detail"]))
            self._set_state(db, other["txid"], ABORTED, f"superseded by {txid}")

    # -- phase 2 (not forced: lost in a power cut, the decision is asked for again) ---------

    def commit(self, txid: str, resolved_by: str, coordinator_log: str = "") -> dict:
        with self.store.transaction(forced=False) as db:
            row = self._row(db, txid)
            if row is None:
                raise KeyError(f"no transaction {txid}: commit without a yes vote")
            self._check_same_log(row, coordinator_log)
            if row["state"] == ABORTED:
                raise ProtocolConflict(
                    f"transaction {txid} is ABORTED here ({row['resolved_by']}); cannot commit it"
                )
            if row["state"] == PREPARED:
                self.resource.make_permanent(db, txid, json.loads(row["detail"]))
                self._set_state(db, txid, COMMITTED, resolved_by)
            return self._row(db, txid)

    def abort(self, txid: str, resolved_by: str, coordinator_log: str = "") -> dict:
        with self.store.transaction(forced=False) as db:
            row = self._row(db, txid)
            if row is None:
                # Abort before prepare (our vote was late): leave a tombstone,
                # so the late prepare, when it comes, votes no instead of reserving.
                self._insert(
                    db, txid, ABORTED, {}, "aborted before it was prepared", "", coordinator_log, ""
                )
                return self._row(db, txid)
            self._check_same_log(row, coordinator_log)
            if row["state"] == COMMITTED:
                raise ProtocolConflict(
                    f"transaction {txid} is COMMITTED here ({row['resolved_by']}); cannot abort it"
                )
            if row["state"] == PREPARED:
                self.resource.release(db, txid, json.loads(row["detail"]))
                self._set_state(db, txid, ABORTED, resolved_by)
            return self._row(db, txid)

    @staticmethod
    def _check_same_log(row: dict, coordinator_log: str) -> None:
        if coordinator_log and row["coordinator_log"] and coordinator_log != row["coordinator_log"]:
            raise ProtocolConflict(
                f"transaction {row['txid']} was prepared under coordinator log "
                f"{row['coordinator_log']}, not {coordinator_log}"
            )

    def decide_by_hand(self, txid: str, decision: str) -> dict:
        """An operator ends a doubt the coordinator cannot (a heuristic decision, as in XA).

        Forced, and marked as heuristic. It does not end the asking: the
        resolver keeps asking the coordinator for its decision and, when it
        comes, records whether it agrees or is HEURISTIC DAMAGE (a phase-2
        message that contradicts it is refused with 409 as well).
        """
        with self.store.transaction() as db:
            row = self._row(db, txid)
            if row is None:
                raise KeyError(f"no transaction {txid}")
            if row["state"] != PREPARED:
                raise ProtocolConflict(f"transaction {txid} is {row['state']}, not in doubt")
            how = HEURISTIC.format(decision)
            if decision == "commit":
                self.resource.make_permanent(db, txid, json.loads(row["detail"]))
                self._set_state(db, txid, COMMITTED, how)
            else:
                self.resource.release(db, txid, json.loads(row["detail"]))
                self._set_state(db, txid, ABORTED, how)
            return self._row(db, txid)

    # -- the baseline without 2PC (bench.py's peer) ----------------------------------------

    def apply_now(self, txid: str, order: dict) -> tuple[bool, str]:
        """Reserve and make permanent in one local transaction: no vote, no way back."""
        with self.store.transaction() as db:
            if self._row(db, txid) is not None:
                return False, "txid already used"
            try:
                detail = self.resource.reserve(db, txid, order)
            except Refused as no:
                return False, str(no)
            self.resource.make_permanent(db, txid, detail)
            self._insert(db, txid, COMMITTED, detail, "", "", "", "applied at once (no 2PC)")
        return True, ""

    # -- in doubt: asking the coordinator ------------------------------------------------

    def transactions(self, state: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM transactions", ()
        if state:
            sql, params = sql + " WHERE state = ?", (state,)
        return self.store.read(sql + " ORDER BY updated_at", params)

    def transaction(self, txid: str) -> dict | None:
        rows = self.store.read("SELECT * FROM transactions WHERE txid = ?", (txid,))
        return rows[0] if rows else None

    def in_doubt(self) -> list[dict]:
        return self.store.read(
            "SELECT txid, state, coordinator, coordinator_log, updated_at, doubt "
            "FROM transactions WHERE state = ? ORDER BY txid",
            (PREPARED,),
        )

    def decided_by_hand(self) -> list[dict]:
        """Heuristic decisions not yet compared with the coordinator's (XA keeps these
        until the transaction manager has heard of them: xa_recover, xa_forget)."""
        return self.store.read(
            "SELECT * FROM transactions WHERE resolved_by IN (?, ?) ORDER BY txid",
            (HEURISTIC.format("commit"), HEURISTIC.format("abort")),
        )

    def resolve_in_doubt_forever(self, stop: threading.Event) -> None:
        """Background thread: ask the coordinator about every transaction stuck in PREPARED.

        The answer is "commit", "abort" (presumed when the coordinator has no
        record), "pending", or "unknown" (a coordinator with another log: it
        cannot know). No answer at all (the coordinator is down) leaves the
        reservation held: that is the blocking problem, and the back-off only
        keeps us from hammering a coordinator that is restarting. Whatever
        keeps it waiting is written in the row's `doubt`, for the operator.
        A transaction an operator decided by hand is asked about too, until
        the coordinator's decision can be compared with it (decide_by_hand).
        """
        next_ask: dict[str, tuple[float, float]] = {}  # txid -> (when, current back-off)
        while not stop.wait(min(self.in_doubt_after, 0.5) / 2):
            now = time.time()
            try:
                doubtful = self.in_doubt() + self.decided_by_hand()
            except Exception as err:  # the database is restarting (PostgreSQL): next round
                say(f"cannot list the in-doubt transactions: {err!r}")
                continue
            for tx in doubtful:
                if now - tx["updated_at"] < self.in_doubt_after:
                    continue  # phase 2 is probably on its way
                when, backoff = next_ask.get(tx["txid"], (0.0, self.in_doubt_after))
                if now < when:
                    continue
                try:
                    settled = self._ask_and_apply(tx)
                except Exception as err:  # as above: the database went away mid-way
                    say(f"cannot settle {tx['txid']} yet: {err!r}")
                    settled = False
                if settled:
                    next_ask.pop(tx["txid"], None)
                else:
                    next_ask[tx["txid"]] = (now + backoff, min(backoff * 2, self.ask_max))

    def _ask_and_apply(self, tx: dict) -> bool:
        txid, log = tx["txid"], tx["coordinator_log"]
        url = f"{tx['coordinator']}/decisions/{txid}?log={log}"
        try:
            status, answer = self.messenger.call("GET", url, ASK_TIMEOUT)
        except Unreachable as err:
            if tx["state"] == PREPARED:
                self._note_doubt(tx, f"waiting for the coordinator, which does not answer ({err})")
            return False
        decision = answer.get("decision") if status == 200 else None
        if tx["state"] != PREPARED:
            return self._compare_with_hand(tx, decision)
        try:
            if decision == "commit":
                self.commit(txid, "asked the coordinator")
            elif decision == "abort":
                self.abort(txid, "asked the coordinator")
            elif decision == "unknown":
                self._note_doubt(
                    tx,
                    f"the coordinator at {tx['coordinator']} {answer.get('reason', '')}; "
                    "resolve by hand: POST /admin/resolve",
                )
                return False
            else:
                self._note_doubt(tx, "the coordinator is still deciding")
                return False
        except ProtocolConflict:
            pass  # phase 2 got here first with the same decision
        return True

    def _compare_with_hand(self, tx: dict, decision: str | None) -> bool:
        """A decision made by hand meets the coordinator's: record agreement, or the damage."""
        if decision not in ("commit", "abort"):
            return False  # pending, unknown (another log: only the operator knows) or no answer
        by_hand = "commit" if tx["state"] == COMMITTED else "abort"
        if decision == by_hand:
            outcome = f"{tx['resolved_by']}; the coordinator decided the same"
        else:
            outcome = f"{tx['resolved_by']}; HEURISTIC DAMAGE: the coordinator decided {decision}"
            say(
                f"HEURISTIC DAMAGE: {tx['txid']} was {tx['state']} by an operator, "
                f"but the coordinator decided {decision}"
            )
        self._set_resolved_by(tx["txid"], tx["resolved_by"], outcome)
        return True

    def _set_resolved_by(self, txid: str, was: str, now: str) -> None:
        with self.store.transaction(forced=False) as db:  # lost: it is asked for again
            db.execute(
                "UPDATE transactions SET resolved_by = ? WHERE txid = ? AND resolved_by = ?",
                (now, txid, was),
            )

    def _note_doubt(self, tx: dict, why: str) -> None:
        if tx["doubt"] != why:  # informational, so not forced, and written only when it changes
            with self.store.transaction(forced=False) as db:
                db.execute(
                    "UPDATE transactions SET doubt = ? WHERE txid = ? AND state = ?",
                    (why, tx["txid"], PREPARED),
                )

    # -- rows -------------------------------------------------------------------------

    @staticmethod
    def _row(db: apsw.Connection, txid: str) -> dict | None:
        return db.execute("SELECT * FROM transactions WHERE txid = ?", (txid,)).fetchone()

    @staticmethod
    def _insert(
        db: apsw.Connection,
        txid: str,
        state: str,
        detail: dict,
        reason: str,
        coordinator: str,
        coordinator_log: str,
        resolved_by: str,
    ) -> None:
        order_id, attempt = order_and_attempt(txid)
        db.execute(
            "INSERT INTO transactions (txid, state, detail, reason, coordinator, coordinator_log, "
            "order_id, attempt, resolved_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                txid,
                state,
                json.dumps(detail),
                reason,
                coordinator,
                coordinator_log,
                order_id,
                attempt,
                resolved_by,
                time.time(),
            ),
        )

    @staticmethod
    def _set_state(db: apsw.Connection, txid: str, state: str, resolved_by: str) -> None:
        db.execute(
            "UPDATE transactions SET state = ?, resolved_by = ?, doubt = '', updated_at = ? "
            "WHERE txid = ?",
            (state, resolved_by, time.time(), txid),
        )


def item_and_quantity(order: dict) -> tuple[str, int]:
    """What a prepare for food must name, checked again here: the coordinator is not
    the only one who may call (a participant trusts no caller with its stock)."""
    item, quantity = order.get("item"), order.get("quantity")
    if not is_text(item):
        raise Refused(text_error("item"))
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise Refused(f"quantity must be a whole number, got {quantity!r}")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise Refused(f"quantity must be 1..{MAX_QUANTITY}, got {quantity}")
    return item, quantity


def refuse_unless_superseded(other: dict, order_id: str, attempt: int, log: str) -> None:
    """Another transaction here for the same order: vote no, unless it is an older
    attempt of the same coordinator log, which can never commit and is released."""
    if other["coordinator_log"] != log:
        raise Refused(
            f"order {order_id} is {other['state']} here as {other['txid']} under "
            f"coordinator log {other['coordinator_log']}: only an operator can settle it"
        )
    if other["state"] == COMMITTED:
        raise Refused(f"order {order_id} is already committed here as {other['txid']}")
    if other["attempt"] > attempt:
        raise Refused(f"a later attempt at order {order_id} is prepared: {other['txid']}")


def transaction_json(row: dict) -> dict:
    return {**row, "detail": json.loads(row["detail"]), "in_doubt": row["state"] == PREPARED}


def create_app(participant: Participant) -> Flask:
    """The participant's HTTP API; the service adds its own read endpoint (stock, riders)."""
    name = participant.resource.name
    app = new_app(name, participant.store, participant.messenger, participant.faults)

    @app.post("/prepare")
    def prepare():
        """One transaction, or a batch: {"prepares": [{"txid", "order"}, ...]} answers
        {"votes": [{"txid", "vote", "reason"}, ...]}, in the same order."""
        body = json_object()
        coordinator = body.get("coordinator")
        coordinator_log = check_log_id(body.get("coordinator_log"))
        if not isinstance(coordinator, str) or not URL_PATTERN.fullmatch(coordinator):
            abort(
                400,
                f"coordinator must be the coordinator's http:// URL "
                f"(printable ASCII, at most {MAX_TEXT} characters)",
            )
        batch = body.get("prepares")
        if batch is None:
            prepares = [one_prepare(body)]
        elif isinstance(batch, list) and 1 <= len(batch) <= MAX_BATCH:
            prepares = [one_prepare(p if isinstance(p, dict) else {}) for p in batch]
            if len({txid for txid, _ in prepares}) < len(prepares):
                abort(400, "a txid appears twice in prepares: one vote per transaction")
        else:
            abort(400, f"prepares must be a list of 1..{MAX_BATCH} {{txid, order}} objects")
        votes = [
            {"txid": txid, "vote": "yes" if yes else "no", "reason": reason}
            for (txid, _), (yes, reason) in zip(
                prepares,
                participant.prepare_many(prepares, coordinator, coordinator_log),
                strict=True,
            )
        ]
        per_message = {"prepares_per_message": participant.PREPARES_PER_MESSAGE}
        reply = jsonify(
            {**votes[0], **per_message} if batch is None else {"votes": votes, **per_message}
        )
        said_yes = [v["txid"] for v in votes if v["vote"] == "yes"]
        if said_yes and participant.faults.crash_at == "after-vote":
            # Die once the yes has gone out: the coordinator will count it, and
            # we come back holding a PREPARED reservation.
            reply.call_on_close(lambda: crash_now("after-vote", said_yes[0]))
        return reply

    def one_prepare(body: dict) -> tuple[str, dict]:
        txid, order = check_txid(body.get("txid")), body.get("order")
        if not isinstance(order, dict):
            abort(400, "order must be a JSON object")
        return txid, order

    @app.post("/commit")
    def commit():
        """One txid, or a batch: {"txids": [...]} answers {"results": {txid: ...}}."""
        body = json_object()
        coordinator_log = check_log_id(body.get("coordinator_log", ""), required=False)
        txids = body.get("txids")
        if txids is None:
            return answer(decide(participant.commit, body.get("txid"), coordinator_log))
        if not isinstance(txids, list) or not 1 <= len(txids) <= MAX_BATCH:
            abort(400, f"txids must be a list of 1..{MAX_BATCH} transaction ids")
        results = {}
        for txid in [check_txid(t) for t in txids]:
            reply, status = decide(participant.commit, txid, coordinator_log)
            results[txid] = {**reply, "status": status}
        return jsonify(results=results)

    @app.post("/abort")
    def abort_():
        body = json_object()
        coordinator_log = check_log_id(body.get("coordinator_log", ""), required=False)
        return answer(decide(participant.abort, body.get("txid"), coordinator_log))

    def decide(action, txid: Any, coordinator_log: str) -> tuple[dict, int]:
        """Phase 2 for one transaction: (reply, HTTP status)."""
        txid = check_txid(txid)
        try:
            row = action(txid, "told in phase 2", coordinator_log)
        except KeyError as err:
            return {"txid": txid, "error": err.args[0]}, 404
        except ProtocolConflict as err:
            return {"txid": txid, "error": str(err)}, 409
        return {"txid": txid, "state": row["state"]}, 200

    def answer(result: tuple[dict, int]):
        reply, status = result
        if status != 200:
            abort(status, reply["error"])
        return jsonify(reply)

    @app.post("/admin/resolve")
    def resolve_by_hand():
        """The operator's command for a doubt nobody else can end: {"txid", "decision"}."""
        body = json_object()
        txid = check_txid(body.get("txid"))
        decision = body.get("decision")
        if decision not in ("commit", "abort"):
            abort(400, "decision must be commit or abort")
        try:
            row = participant.decide_by_hand(txid, decision)
        except KeyError as err:
            abort(404, err.args[0])
        except ProtocolConflict as err:
            abort(409, str(err))
        return jsonify(transaction_json(row))

    @app.post("/apply")
    def apply():
        body = json_object()
        txid = check_txid(body.get("txid"))
        if not isinstance(body.get("order"), dict):
            abort(400, "order must be a JSON object")
        applied, reason = participant.apply_now(txid, body["order"])
        return jsonify(txid=txid, applied=applied, reason=reason)

    @app.get("/transactions")
    def transactions():
        state = request.args.get("state")
        if state is not None and state not in (PREPARED, COMMITTED, ABORTED):
            abort(400, "state must be PREPARED, COMMITTED or ABORTED")
        rows = participant.transactions(state)
        return jsonify(transactions=[transaction_json(r) for r in rows])

    @app.get("/transactions/<txid>")
    def transaction(txid: str):
        row = participant.transaction(txid)
        if row is None:
            abort(404, f"no transaction {txid}")
        return jsonify(transaction_json(row))

    return app


def check_log_id(value: Any, required: bool = True) -> str:
    if not required and value == "":
        return ""
    if not isinstance(value, str) or not LOG_ID_PATTERN.fullmatch(value):
        abort(400, "coordinator_log must be the coordinator log's id (1-64 letters or digits)")
    return value


def serve(
    args: Any,
    resource: Resource,
    open_store: Callable[[twopc_disk.Disk], DurableStore],
    create_service_app: Callable[[Participant], Flask],
) -> int:
    """A service's main() after parsing: open its store, build the participant, serve.

    Returns the exit status: 1 if the database cannot be opened, else 0 once stopped.
    """
    try:
        store = open_store(twopc_disk.disk(args.volatile_cache))
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    faults = participant_faults(args)
    participant = Participant(
        resource, store, faults, Messenger(faults.messages), args.in_doubt_after, args.ask_max
    )
    run(participant, create_service_app(participant), args.host, args.port)
    return 0


def participant_faults(args: Any) -> Faults:
    return Faults(CRASH_POINTS, args.crash_at, vote_no=args.vote_no, delay_ms=args.delay_ms)


def run(participant: Participant, app: Flask, host: str, port: int) -> None:
    """Report what survived the last run, then serve with the in-doubt resolver running."""
    doubtful = participant.in_doubt()
    if doubtful:
        txids = ", ".join(tx["txid"] for tx in doubtful)
        say(f"recovered {len(doubtful)} PREPARED transaction(s), in doubt: {txids}")
    server = bind(app, host, port)
    stop = threading.Event()
    resolver = threading.Thread(
        target=participant.resolve_in_doubt_forever, args=(stop,), daemon=True
    )
    resolver.start()
    try:
        serve_until_signalled(server)
    finally:
        stop.set()
        resolver.join(timeout=2)
        participant.store.close()


def add_participant_args(parser: Any) -> None:
    faults = parser.add_argument_group("fault injection (also POST /admin/faults at run time)")
    faults.add_argument("--vote-no", action="store_true", help="refuse every prepare")
    faults.add_argument(
        "--crash-at", choices=CRASH_POINTS, help="exit at once at this point of a prepare"
    )
    faults.add_argument(
        "--delay-ms", type=int, default=0, help="wait this long before handling a prepare"
    )
    doubt = parser.add_argument_group("resolving doubt")
    doubt.add_argument(
        "--in-doubt-after",
        type=float,
        default=2.0,
        help="seconds in PREPARED before asking the coordinator (default 2)",
    )
    doubt.add_argument(
        "--ask-max", type=float, default=10.0, help="longest wait between asks (default 10 s)"
    )


def check_participant_args(parser: Any, args: Any) -> None:
    if not 0 <= args.delay_ms <= MAX_DELAY_MS:
        parser.error(f"--delay-ms must be 0..{MAX_DELAY_MS}")
    check_seconds(parser, args, "in_doubt_after", "ask_max")
