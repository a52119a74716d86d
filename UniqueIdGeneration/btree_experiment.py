"""The B-tree claim, measured: time-ordered keys insert faster than random ones.

The same rows go into SQLite three times, differing only in the primary key:
Snowflake ids (rising), uuid4 strings (random), and random 63-bit integers (a
control: random like uuid4, but an integer like Snowflake, so it separates
"random order" from "text key"). See the README's "The B-tree experiment".
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import IdGenerator

KINDS = ("snowflake", "uuid4", "random")

# The settings, all stated in the README: SQLite's own defaults where it has
# one, and the common production choices where it leaves it to the application.
CACHE_KIB = 2_000  # SQLite's default page cache (2,000 KiB); the index outgrows it early
ROWS_PER_TRANSACTION = 1_000  # an application commits in batches, not once at the end
BATCH_ROWS = 100_000  # rows per timed batch
PAYLOAD = "x" * 100  # every row carries the same 100-byte body
WAL_HEADER_BYTES = 32  # SQLite's WAL file format: a file header, then one frame per page
WAL_FRAME_HEADER_BYTES = 24

SCHEMAS = {
    # INTEGER PRIMARY KEY is the rowid: the table's B-tree is ordered by the id.
    "snowflake": "CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    # A TEXT key lives in a second B-tree (the primary-key index) beside the table.
    "uuid4": "CREATE TABLE posts (id TEXT PRIMARY KEY, body TEXT NOT NULL)",
    "random": "CREATE TABLE posts (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
}


@dataclass
class BtreeResult:
    kind: str
    rows: int
    batch_seconds: list[float]  # insert time of each BATCH_ROWS rows, in order
    pages: int
    file_bytes: int
    pages_per_commit: int  # pages one more ROWS_PER_TRANSACTION-row commit wrote, at the end

    @property
    def seconds(self) -> float:
        return sum(self.batch_seconds)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def key_maker(kind: str, seed: int = 1) -> Callable[[], object]:
    if kind == "snowflake":
        return IdGenerator.IdGenerator(worker_id=1).next_id
    if kind == "uuid4":
        return lambda: str(uuid.uuid4())
    if kind == "random":
        rng = random.Random(seed)
        return lambda: rng.getrandbits(63)
    raise ValueError(f"unknown key kind {kind!r}; choose from {', '.join(KINDS)}")


def insert_rows(
    kind: str,
    rows: int,
    db_path: Path,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> BtreeResult:
    """Insert `rows` rows keyed by `kind` into a new database file; time each batch.

    Keys are made before the clock starts, so only the database work is timed.
    """
    if rows < batch_rows or rows % batch_rows:
        raise ValueError(f"rows must be a positive multiple of {batch_rows:,}, got {rows:,}")
    db_path.unlink(missing_ok=True)
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.execute(SCHEMAS[kind])
        next_key = key_maker(kind)
        batch_seconds = []
        for done in range(0, rows, batch_rows):
            elapsed = 0.0
            for _ in range(batch_rows // ROWS_PER_TRANSACTION):
                batch = [(next_key(), PAYLOAD) for _ in range(ROWS_PER_TRANSACTION)]
                started = time.perf_counter()
                db.execute("BEGIN")
                db.executemany("INSERT INTO posts VALUES (?, ?)", batch)
                db.execute("COMMIT")
                elapsed += time.perf_counter() - started
            batch_seconds.append(elapsed)
            if progress:
                progress(done + batch_rows)
        pages_per_commit = pages_written_by_one_commit(db, db_path, next_key)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # so the file holds every page
        (pages,) = db.execute("PRAGMA page_count").fetchone()
    finally:
        db.close()
    return BtreeResult(kind, rows, batch_seconds, pages, db_path.stat().st_size, pages_per_commit)


def pages_written_by_one_commit(
    db: sqlite3.Connection, db_path: Path, next_key: Callable[[], object]
) -> int:
    """Commit one more transaction into an empty WAL and count the pages it wrote.

    In WAL mode every page a transaction changed is appended to the -wal file
    as one frame (a 24-byte header plus the page), so the file's size after a
    single commit counts the pages that commit dirtied.
    """
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    batch = [(next_key(), PAYLOAD) for _ in range(ROWS_PER_TRANSACTION)]
    db.execute("BEGIN")
    db.executemany("INSERT INTO posts VALUES (?, ?)", batch)
    db.execute("COMMIT")
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    wal_bytes = Path(f"{db_path}-wal").stat().st_size
    return (wal_bytes - WAL_HEADER_BYTES) // (WAL_FRAME_HEADER_BYTES + page_size)


def plot(results: list[BtreeResult], path: Path) -> None:
    """Seconds per 100,000-row batch as the table grows, one line per key kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in results:
        xs = [
            (i + 1) * result.rows // len(result.batch_seconds)
            for i in range(len(result.batch_seconds))
        ]
        ax.plot(xs, result.batch_seconds, marker="o", label=f"{result.kind} key")
    ax.set_xlabel("rows in the table")
    ax.set_ylabel(f"seconds to insert the last {BATCH_ROWS:,} rows")
    ax.set_title("SQLite inserts: time-ordered vs random primary keys")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e6:g}M"))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
