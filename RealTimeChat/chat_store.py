"""Each room's messages in SQLite: a message exists once it is committed (README: "History").

The server acknowledges a message only after `add` returns, so whatever a
sender saw acknowledged is on disk and comes back after a crash or restart.
Every message gets two numbers in the same transaction: an `id` from SQLite,
unique across rooms, and a `seq` that counts 1, 2, 3... within its room, so
a client that sees seq 7 after seq 5 knows it missed one and asks for it
(README: "Delivery without gaps or duplicates"). Several server processes
may share one file: the write lock orders them.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

HISTORY_LIMIT = 50  # messages a member gets when joining a room
PAGE_LIMIT = 200  # the most messages one `history` page returns
BUSY_TIMEOUT_MS = 5_000  # how long a writer waits for another process's write lock
OPEN_DEADLINE = 30.0  # s: how long opening retries while other processes set the file up

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,  -- the server-assigned id: the order messages were stored
    room      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,     -- 1, 2, 3... within the room: a gap is visible
    name      TEXT    NOT NULL,
    text      TEXT    NOT NULL,
    ts        INTEGER NOT NULL,     -- server time, milliseconds since the Unix epoch
    client_id TEXT,                 -- the sender's own id for it: a retry is stored once
    UNIQUE (room, seq)
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (room, name, client_id) WHERE client_id IS NOT NULL;
-- One row per room: the lobby lists rooms from here, and the room's last seq
-- lives here, so neither ever scans the messages.
CREATE TABLE IF NOT EXISTS rooms (
    room     TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The database cannot be used (an older layout, or it stayed locked)."""


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored and as every client receives it."""

    id: int
    room: str
    seq: int
    name: str
    text: str
    ts: int  # milliseconds since the epoch: what JavaScript's `new Date(ts)` takes

    def to_json(self) -> dict:
        return asdict(self)


COLUMNS = "id, room, seq, name, text, ts"  # the order StoredMessage takes them in


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): take the write lock up front.

    IMMEDIATE makes a second process wait (busy_timeout) at BEGIN instead of
    failing halfway, and keeps the read of `last_seq` and the insert together.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def is_locked(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


class ChatStore:
    """An SQLite file of messages, safe to share between threads and processes.

    WAL mode lets readers (history) run while a writer commits, and
    `synchronous=FULL` makes each commit durable before `add` returns: the
    price is one fsync per message, which a chat's message rate easily pays.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used under `_lock`: handlers may run in several threads.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._set_up()

    def _set_up(self) -> None:
        """Switch to WAL and create the tables, retrying while other processes do the same.

        Processes started together on a fresh file race here: switching to WAL
        needs the file to itself, and SQLite answers "database is locked"
        at once instead of waiting for it. Each retry waits a little longer,
        with jitter, so the racers spread out.
        """
        deadline = time.monotonic() + OPEN_DEADLINE
        delay = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._refuse_an_older_layout()
                self._db.executescript(SCHEMA)
                break
            except sqlite3.OperationalError as error:
                if not is_locked(error) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)

    def _refuse_an_older_layout(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if columns and "seq" not in columns:
            raise StoreError(
                f"{self.path} was written by an older version of the chat (no seq column);"
                " move it away or pass another --db"
            )

    def add(
        self, room: str, name: str, text: str, client_id: str | None = None
    ) -> tuple[StoredMessage, bool]:
        """Store a message once committed; return it and whether it is new.

        With a `client_id` the sender has already used for this room, nothing
        is stored: the first message is returned, with False.
        """
        ts = int(time.time() * 1000)
        with self._lock, immediate(self._db):
            if client_id is not None:
                row = self._db.execute(
                    f"SELECT {COLUMNS} FROM messages WHERE room = ? AND name = ? AND client_id = ?",
                    (room, name, client_id),
                ).fetchone()
                if row:
                    return StoredMessage(*row), False
            (seq,) = self._db.execute(
                "INSERT INTO rooms (room, last_seq) VALUES (?, 1)"
                " ON CONFLICT (room) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
                (room,),
            ).fetchone()
            cursor = self._db.execute(
                "INSERT INTO messages (room, seq, name, text, ts, client_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (room, seq, name, text, ts, client_id),
            )
        return StoredMessage(cursor.lastrowid, room, seq, name, text, ts), True

    def add_many(self, room: str, name: str, texts: list[str]) -> None:
        """Store many messages in one transaction (to seed a room for a test or a bench)."""
        ts = int(time.time() * 1000)
        with self._lock, immediate(self._db):
            (last,) = self._db.execute(
                "INSERT INTO rooms (room, last_seq) VALUES (?, 0)"
                " ON CONFLICT (room) DO UPDATE SET last_seq = last_seq RETURNING last_seq",
                (room,),
            ).fetchone()
            self._db.executemany(
                "INSERT INTO messages (room, seq, name, text, ts) VALUES (?, ?, ?, ?, ?)",
                [(room, last + n, name, text, ts) for n, text in enumerate(texts, 1)],
            )
            self._db.execute(
                "UPDATE rooms SET last_seq = ? WHERE room = ?", (last + len(texts), room)
            )

    def latest(self, room: str, limit: int = HISTORY_LIMIT) -> list[StoredMessage]:
        """The room's last `limit` messages, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
                (room, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in reversed(rows)]

    def page(self, room: str, after_id: int, limit: int) -> tuple[list[StoredMessage], bool]:
        """Up to `limit` messages of `room` after `after_id`, oldest first, and whether more follow.

        Paging forward from the last id a client has reaches every message it
        missed, however many, in order.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM messages WHERE room = ? AND id > ? ORDER BY id LIMIT ?",
                (room, after_id, limit + 1),
            ).fetchall()
        return [StoredMessage(*row) for row in rows[:limit]], len(rows) > limit

    def rooms(self, limit: int) -> list[str]:
        """Up to `limit` rooms that have stored messages, by name (from the rooms table)."""
        with self._lock:
            rows = self._db.execute("SELECT room FROM rooms ORDER BY room LIMIT ?", (limit,))
            return [room for (room,) in rows.fetchall()]

    def secret(self, key: str) -> str:
        """A random secret shared by every process on this file (made by the first to ask)."""
        with self._lock, immediate(self._db):
            self._db.execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)",
                (key, secrets.token_hex(32)),
            )
            (value,) = self._db.execute(
                "SELECT value FROM settings WHERE key = ?", (key,)
            ).fetchone()
        return value

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
