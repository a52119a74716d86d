"""InventoryService on PostgreSQL: the same participant API, on PostgreSQL's prepared transactions.

    python TwoPhaseCommit/InventoryService.py --store postgres \\
        --dsn postgresql://postgres@127.0.0.1:5432/postgres --port 5001

SQLite has no prepared state, so twopc_participant.py builds one (a PREPARED
row and a `reserved` column). PostgreSQL has it built in, as a resource
manager for XA does:

  prepare   BEGIN; take the food (available -> sold); PREPARE TRANSACTION 'gid'.
            The change is on disk and survives a crash or a restart, but nobody
            sees it, and it keeps its row lock: an order for the same item waits.
  commit    COMMIT PREPARED 'gid'    (any session can, even after a restart)
  abort     ROLLBACK PREPARED 'gid'
  recover   SELECT gid FROM pg_prepared_xacts: the in-doubt list, straight from
            the database.

The gid carries what recovery needs, since nothing inside a prepared
transaction is visible: '<txid>|<coordinator log>|<coordinator URL>'. Needs
`max_prepared_transactions` > 0 (it is 0 by default). See the README's
"In production, made live: PostgreSQL as the participant".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Flask, jsonify, request
from psycopg import sql
from psycopg.rows import dict_row
from twopc_node import StoreError, order_and_attempt, say
from twopc_participant import (
    ABORTED,
    COMMITTED,
    HEURISTIC,
    PREPARED,
    Participant,
    ProtocolConflict,
    Refused,
    item_and_quantity,
    refuse_unless_superseded,
)

MAX_GID = 199  # bytes in a prepared transaction's name: PostgreSQL's GIDSIZE (200) less its NUL
LOCK_TIMEOUT_MS = 1500  # a prepare waits this long for an item another one holds, then votes no
MAX_CONNECTIONS = 20  # to PostgreSQL, from this service

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    item      TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),  -- always 0: see prepare()
    sold      INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE IF NOT EXISTS transactions (  -- decided ones; the prepared live in pg_prepared_xacts
    txid            TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    detail          TEXT NOT NULL DEFAULT '{}',
    reason          TEXT NOT NULL DEFAULT '',
    coordinator     TEXT NOT NULL DEFAULT '',
    coordinator_log TEXT NOT NULL DEFAULT '',
    order_id        TEXT NOT NULL DEFAULT '',
    attempt         INTEGER NOT NULL DEFAULT 0,
    resolved_by     TEXT NOT NULL DEFAULT '',
    doubt           TEXT NOT NULL DEFAULT '',
    updated_at      DOUBLE PRECISION NOT NULL
);
"""


class PostgresStore:
    """A few connections to one PostgreSQL database, and its fsync count for /stats."""

    def __init__(self, dsn: str, stock: dict[str, int]) -> None:
        self.dsn = dsn
        self._idle: list[psycopg.Connection] = []
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        try:
            with self.connection() as conn:
                limit = conn.execute("SHOW max_prepared_transactions").fetchone()
                if limit["max_prepared_transactions"] == "0":
                    raise StoreError("PostgreSQL has max_prepared_transactions = 0: set it > 0")
                with conn.transaction():
                    conn.execute(SCHEMA)
                    if conn.execute("SELECT count(*) AS n FROM stock").fetchone()["n"] == 0:
                        conn.cursor().executemany(
                            "INSERT INTO stock (item, available) VALUES (%s, %s)",
                            sorted(stock.items()),
                        )
                self.syncs_at_open = self._wal_syncs(conn)
        except psycopg.Error as err:
            raise StoreError(f"cannot use PostgreSQL at {dsn}: {err}".strip()) from None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection of our own; one that failed is closed, not reused."""
        with self._slots:
            try:
                conn = self._idle.pop()
            except IndexError:
                conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
            try:
                yield conn
            except psycopg.OperationalError:
                # The server may have restarted: this connection and every idle one
                # are dead. Drop them all; the next caller connects afresh.
                conn.close()
                while self._idle:
                    self._idle.pop().close()
                raise
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self._idle.append(conn)
            else:
                conn.close()

    def read(self, query: str, params: tuple = ()) -> list[dict[str, Any]]:
        """A query written for SQLite (? placeholders) or for PostgreSQL (%s)."""
        for attempt in (1, 2):  # once more on a fresh connection if the server restarted
            try:
                with self.connection() as conn:
                    return conn.execute(query.replace("?", "%s"), params).fetchall()
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _wal_syncs(conn: psycopg.Connection) -> int:
        return conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()["wal_sync"]

    def stats(self) -> dict[str, int]:
        """WAL fsyncs of the whole cluster since we opened it (ours alone on a private one)."""
        with self.connection() as conn:
            syncs = self._wal_syncs(conn) - self.syncs_at_open
        return {"forced_writes": syncs, "fsyncs": syncs}

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class PostgresParticipant(Participant):
    """The participant's state machine, with PostgreSQL's prepared transactions as PREPARED.

    Asking the coordinator when in doubt is inherited unchanged; what a state
    is, and how it changes, is PostgreSQL's.
    """

    # One prepare per message: a prepared transaction keeps its row locks until
    # phase 2, so a second order for the same item in the same message would
    # wait for a decision that cannot come before the message is answered,
    # and vote no after LOCK_TIMEOUT_MS (README, "Batching and group commit").
    PREPARES_PER_MESSAGE = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.doubts: dict[str, str] = {}  # txid -> why it still waits (not stored: informational)
        self._locks: dict[str, list] = {}  # txid -> [lock, users]: one message per txid at a time
        self._locks_guard = threading.Lock()

    @contextmanager
    def one_at_a_time(self, txid: str) -> Iterator[None]:
        """A duplicate message waits for the first, then sees what it did."""
        with self._locks_guard:
            entry = self._locks.setdefault(txid, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[txid]

    # -- phase 1 ---------------------------------------------------------------------

    def prepare_many(
        self, prepares: list[tuple[str, dict]], coordinator: str, coordinator_log: str
    ) -> list[tuple[bool, str]]:
        """One prepared transaction each: PostgreSQL forces each PREPARE TRANSACTION itself."""
        self.faults.delay()
        return [self._prepare_one(t, order, coordinator, coordinator_log) for t, order in prepares]

    def _prepare_one(
        self, txid: str, order: dict, coordinator: str, coordinator_log: str
    ) -> tuple[bool, str]:
        self.faults.crash_if("before-vote", txid)
        gid = f"{txid}|{coordinator_log}|{coordinator}"
        try:
            with self.one_at_a_time(txid):
                known = self.transaction(txid)
                if known is not None:
                    return self._same_vote_again(known, coordinator_log)
                if len(gid.encode()) > MAX_GID:
                    raise Refused("coordinator URL too long for a prepared transaction's name")
                self._check_earlier_attempts_pg(txid, coordinator_log)
                if self.faults.vote_no:
                    raise Refused("told to vote no (fault injection)")
                self._prepare_transaction(gid, txid, order, coordinator, coordinator_log)
            return True, ""
        except Refused as no:
            with self.store.connection() as conn, conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")  # a no is not forced
                insert(conn, txid, ABORTED, str(no), coordinator, coordinator_log, "voted no")
            return False, str(no)

    def _prepare_transaction(
        self, gid: str, txid: str, order: dict, coordinator: str, coordinator_log: str
    ) -> None:
        item, quantity = item_and_quantity(order)
        with self.store.connection() as conn:
            conn.execute("BEGIN")
            try:
                conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                row = conn.execute(
                    "SELECT available FROM stock WHERE item = %s FOR UPDATE", (item,)
                ).fetchone()
                if row is None:
                    raise Refused(f"unknown item {item!r}")
                if row["available"] < quantity:
                    raise Refused(
                        f"out of stock: {quantity} {item} wanted, {row['available']} available"
                    )
                # Straight to sold: nobody sees it before COMMIT PREPARED, and
                # ROLLBACK PREPARED takes it back. The row lock keeps others out.
                conn.execute(
                    "UPDATE stock SET available = available - %s, sold = sold + %s WHERE item = %s",
                    (quantity, quantity, item),
                )
                detail = json.dumps({"item": item, "quantity": quantity})
                insert(conn, txid, COMMITTED, "", coordinator, coordinator_log, "", detail)
                conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
            except psycopg.errors.LockNotAvailable:
                conn.execute("ROLLBACK")
                raise Refused(
                    f"{item} is locked by another transaction (in doubt?) for over "
                    f"{LOCK_TIMEOUT_MS} ms"
                ) from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _check_earlier_attempts_pg(self, txid: str, coordinator_log: str) -> None:
        """As in SQLite (Participant._check_earlier_attempts): an order is held at most once."""
        order_id, attempt = order_and_attempt(txid)
        for other in self.transactions():
            if other["order_id"] != order_id or other["txid"] == txid:
                continue
            if other["state"] == ABORTED:
                continue
            refuse_unless_superseded(other, order_id, attempt, coordinator_log)
            self._finish(other["txid"], "abort", f"superseded by {txid}", forced=False)

    # -- phase 2 ---------------------------------------------------------------------

    def commit(self, txid: str, resolved_by: str, coordinator_log: str = "") -> dict:
        return self._decide(txid, "commit", resolved_by, coordinator_log, forced=False)

    def abort(self, txid: str, resolved_by: str, coordinator_log: str = "") -> dict:
        return self._decide(txid, "abort", resolved_by, coordinator_log, forced=False)

    def decide_by_hand(self, txid: str, decision: str) -> dict:
        known = self.transaction(txid)
        if known is None:
            raise KeyError(f"no transaction {txid}")
        if known["state"] != PREPARED:
            raise ProtocolConflict(f"transaction {txid} is {known['state']}, not in doubt")
        how = HEURISTIC.format(decision)
        return self._decide(txid, decision, how, "", forced=True)

    def _decide(
        self, txid: str, decision: str, resolved_by: str, coordinator_log: str, forced: bool
    ) -> dict:
        with self.one_at_a_time(txid):
            known = self.transaction(txid)
            if known is None:
                if decision == "commit":
                    raise KeyError(f"no transaction {txid}: commit without a yes vote")
                # A tombstone, so a late prepare votes no (not forced: presumed abort).
                with self.store.connection() as conn, conn.transaction():
                    conn.execute("SET LOCAL synchronous_commit = off")
                    reason = "aborted before it was prepared"
                    insert(conn, txid, ABORTED, reason, "", coordinator_log, resolved_by)
                return self.transaction(txid)
            self._check_same_log(known, coordinator_log)
            wanted = COMMITTED if decision == "commit" else ABORTED
            if known["state"] == PREPARED:
                self._finish(txid, decision, resolved_by, forced)
            elif known["state"] != wanted:
                raise ProtocolConflict(
                    f"transaction {txid} is {known['state']} here ({known['resolved_by']}); "
                    f"cannot {decision} it"
                )
            return self.transaction(txid)

    def _finish(self, txid: str, decision: str, resolved_by: str, forced: bool) -> None:
        """COMMIT PREPARED or ROLLBACK PREPARED, then note how it ended (unforced)."""
        gid = self._gid(txid)
        if gid is None:
            return
        command = "COMMIT PREPARED {}" if decision == "commit" else "ROLLBACK PREPARED {}"
        with self.store.connection() as conn:
            conn.execute(sql.SQL(command).format(sql.Literal(gid)))
            with conn.transaction():
                if not forced:
                    conn.execute("SET LOCAL synchronous_commit = off")
                if decision == "commit":
                    conn.execute(
                        "UPDATE transactions SET resolved_by = %s, updated_at = %s WHERE txid = %s",
                        (resolved_by, time.time(), txid),
                    )
                else:  # the row went with the rollback: write it again, outside
                    _, log, coordinator = gid.split("|", 2)
                    insert(conn, txid, ABORTED, "", coordinator, log, resolved_by)
        self.doubts.pop(txid, None)

    def _gid(self, txid: str) -> str | None:
        rows = self.store.read(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
            "AND split_part(gid, '|', 1) = %s",
            (txid,),
        )
        return rows[0]["gid"] if rows else None

    # -- the baseline without 2PC ----------------------------------------------------------

    def apply_now(self, txid: str, order: dict) -> tuple[bool, str]:
        raise NotImplementedError("the sequential baseline runs on SQLite only")

    # -- what it holds --------------------------------------------------------------------

    def prepared(self) -> list[dict]:
        """pg_prepared_xacts, as rows shaped like the SQLite participant's."""
        rows = self.store.read(
            "SELECT gid, extract(epoch FROM prepared) AS at FROM pg_prepared_xacts "
            "WHERE database = current_database() ORDER BY prepared"
        )
        result = []
        for row in rows:
            txid, log, coordinator = row["gid"].split("|", 2)
            order_id, attempt = order_and_attempt(txid)
            result.append(
                {
                    "txid": txid,
                    "state": PREPARED,
                    "detail": "{}",  # inside the prepared transaction, out of sight until it ends
                    "reason": "",
                    "coordinator": coordinator,
                    "coordinator_log": log,
                    "order_id": order_id,
                    "attempt": attempt,
                    "resolved_by": "",
                    "doubt": self.doubts.get(txid, ""),
                    "updated_at": float(row["at"]),
                }
            )
        return result

    def transactions(self, state: str | None = None) -> list[dict]:
        decided = self.store.read("SELECT * FROM transactions ORDER BY updated_at")
        rows = self.prepared() + decided
        return [r for r in rows if state is None or r["state"] == state]

    def transaction(self, txid: str) -> dict | None:
        for row in self.prepared():
            if row["txid"] == txid:
                return row
        rows = self.store.read("SELECT * FROM transactions WHERE txid = %s", (txid,))
        return rows[0] if rows else None

    def in_doubt(self) -> list[dict]:
        return self.prepared()

    def _note_doubt(self, tx: dict, why: str) -> None:
        self.doubts[tx["txid"]] = why

    def _set_resolved_by(self, txid: str, was: str, now: str) -> None:
        with self.store.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = off")  # lost: it is asked for again
            conn.execute(
                "UPDATE transactions SET resolved_by = %s WHERE txid = %s AND resolved_by = %s",
                (now, txid, was),
            )


def answer_503_while_down(app: Flask) -> None:
    """PostgreSQL down or restarting: a one-line 503 per request, not a 500 and a traceback.

    The coordinator counts it as no vote (phase 1) or no acknowledgement
    (phase 2, resent later); nothing was decided here, so nothing is lost.
    """

    @app.errorhandler(psycopg.OperationalError)
    def unavailable(err: psycopg.OperationalError):
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        say(f"PostgreSQL unavailable ({request.method} {request.path}): {why}")
        return jsonify(error=f"PostgreSQL is unavailable: {why}"), 503


def insert(
    conn: psycopg.Connection,
    txid: str,
    state: str,
    reason: str,
    coordinator: str,
    coordinator_log: str,
    resolved_by: str,
    detail: str = "{}",
) -> None:
    order_id, attempt = order_and_attempt(txid)
    conn.execute(
        "INSERT INTO transactions (txid, state, detail, reason, coordinator, coordinator_log, "
        "order_id, attempt, resolved_by, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (txid) DO NOTHING",
        (
            txid,
            state,
            detail,
            reason,
            coordinator,
            coordinator_log,
            order_id,
            attempt,
            resolved_by,
            time.time(),
        ),
    )
