"""Each room's messages in SQLite: a message exists once it is committed (README: "History").

The server acknowledges a message only after `add` returns, so whatever a
sender saw acknowledged is on disk and comes back after a crash or restart.
Ids come from SQLite (`INTEGER PRIMARY KEY`): they increase in the order
messages were stored, even when several server processes share one file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HISTORY_LIMIT = 50  # messages a member gets when joining a room
BUSY_TIMEOUT_MS = 5_000  # how long a writer waits for another process's write lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id   INTEGER PRIMARY KEY,  -- the server-assigned id: the order messages were stored
    room TEXT    NOT NULL,
    name TEXT    NOT NULL,
    text TEXT    NOT NULL,
    ts   INTEGER NOT NULL      -- server time, milliseconds since the Unix epoch
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room, id);
"""


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored and as every client receives it."""

    id: int
    room: str
    name: str
    text: str
    ts: int  # milliseconds since the epoch: what JavaScript's `new Date(ts)` takes

    def to_json(self) -> dict:
        return asdict(self)


class ChatStore:
    """An SQLite file of messages, safe to share between threads and processes.

    WAL mode lets readers (history on join) run while a writer commits, and
    `synchronous=FULL` makes each commit durable before `add` returns: the
    price is one fsync per message, which a chat's message rate easily pays.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used under `_lock`: handlers may run in several threads.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)

    def add(self, room: str, name: str, text: str) -> StoredMessage:
        """Store a message and return it with its id and timestamp, once committed."""
        ts = int(time.time() * 1000)
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO messages (room, name, text, ts) VALUES (?, ?, ?, ?)",
                (room, name, text, ts),
            )  # autocommit mode: the INSERT is committed when execute returns
        return StoredMessage(cursor.lastrowid, room, name, text, ts)

    def history(
        self, room: str, limit: int = HISTORY_LIMIT, after_id: int = 0
    ) -> list[StoredMessage]:
        """The room's last `limit` messages with an id above `after_id`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, room, name, text, ts FROM messages"
                " WHERE room = ? AND id > ? ORDER BY id DESC LIMIT ?",
                (room, after_id, limit),
            ).fetchall()
        return [StoredMessage(*row) for row in reversed(rows)]

    def rooms(self) -> list[str]:
        """Every room that has at least one stored message."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT room FROM messages").fetchall()
        return [room for (room,) in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
