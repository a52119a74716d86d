"""A sharded blog whose post ids say which logical shard holds them; shards can move.

Authors hash to one of 32 *logical* shards, and a post's id carries its logical
shard in the worker bits (Instagram's scheme). A small mapping table (the
catalog) sends each logical shard to a *physical* SQLite database, so a
database can be added and shards moved onto it, live, without re-hashing a
single author. See the README's "BlogService: logical and physical shards".

    python UniqueIdGeneration/BlogService.py create --author ada --title Hello --body "First!"
    python UniqueIdGeneration/BlogService.py get 7849233540591616
    python UniqueIdGeneration/BlogService.py recent --limit 5
    python UniqueIdGeneration/BlogService.py shards
    python UniqueIdGeneration/BlogService.py move 7 --to db-04
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import itertools
import re
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import IdGenerator
from id_arguments import bounded

LOGICAL_SHARDS = IdGenerator.MAX_WORKER_ID + 1  # 32: the worker bits name the logical shard
DEFAULT_DATABASES = 4
DEFAULT_DB_DIR = Path(__file__).resolve().parent / "out" / "blog"  # git-ignored
MAX_RECENT = 10_000  # recent_posts() holds up to this many posts per database in memory
MAX_LENGTH = {"author": 100, "title": 300, "body": 100_000}  # characters: a blog, not a dump
DATABASE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # a file name on every system
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's SQLite write lock
MOVE_BATCH = 500  # rows copied per step of a move: the source is never locked for long
MAX_LOOKUP_RETRIES = 100  # a read that keeps racing moves gives up (never seen in practice)

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS shard_map (
    logical_shard INTEGER PRIMARY KEY,
    db            TEXT NOT NULL,     -- the physical database that holds it: <db>.db
    version       INTEGER NOT NULL   -- +1 at every move, so a reader can tell one happened
);
"""
POSTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    id            INTEGER PRIMARY KEY,  -- the Snowflake id: appended in time order
    logical_shard INTEGER NOT NULL,     -- = the id's worker bits, stored to copy a shard by range
    author TEXT NOT NULL,
    title  TEXT NOT NULL,
    body   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS posts_by_shard ON posts (logical_shard, id);
"""
COLUMNS = "id, logical_shard, author, title, body"


class PostNotFoundError(KeyError):
    """No post has this id."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class MoveError(RuntimeError):
    """A shard move was refused (bad target, already there, another move running)."""


@dataclass(frozen=True)
class Post:
    id: int
    author: str
    title: str
    body: str
    shard: int  # the logical shard (the id's worker bits)
    database: str  # the physical database it was read from or written to

    @property
    def created_at(self) -> datetime:
        """When the post was made, read from the id itself (no column stores it)."""
        return IdGenerator.decode(self.id).timestamp


@dataclass(frozen=True)
class MoveReport:
    shard: int
    source: str
    target: str
    copied: int  # rows copied while writers went on
    caught_up: int  # rows written during the copy, copied under the source's write lock
    deleted: int  # rows removed from the source after the switch
    seconds: float
    switch_ms: float  # how long writers to the source database waited on the switch
    # Rows of this shard that an interrupted earlier move had left outside its
    # home (a partial copy, an unfinished delete), removed first: {database: rows}.
    leftovers: dict[str, int]


def connect(path: Path, schema: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for writers, nor the reverse
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    # BEGIN IMMEDIATE takes SQLite's write lock now, so a second writer on this
    # file (another thread's connection, another process) waits here, not later.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Database:
    """One physical SQLite file and this process's connection to it."""

    def __init__(self, path: Path):
        self.name = path.stem
        self.db = connect(path, POSTS_SCHEMA)
        self.lock = threading.RLock()  # one thread at a time on this connection

    def get(self, post_id: int) -> tuple | None:
        with self.lock:
            return self.db.execute(
                f"SELECT {COLUMNS} FROM posts WHERE id = ?", (post_id,)
            ).fetchone()

    def newest(self, shards: list[int], limit: int) -> list[tuple]:
        marks = ",".join("?" * len(shards))
        with self.lock:
            return self.db.execute(
                f"SELECT {COLUMNS} FROM posts WHERE logical_shard IN ({marks}) "
                f"ORDER BY id DESC LIMIT ?",
                (*shards, limit),
            ).fetchall()

    def rows_after(self, shard: int, after_id: int, limit: int) -> list[tuple]:
        with self.lock:
            return self.db.execute(
                f"SELECT {COLUMNS} FROM posts WHERE logical_shard = ? AND id > ? "
                f"ORDER BY id LIMIT ?",
                (shard, after_id, limit),
            ).fetchall()

    def insert_rows(self, rows: list[tuple]) -> None:
        with self.lock, write_transaction(self.db):
            self.db.executemany(f"INSERT INTO posts ({COLUMNS}) VALUES (?, ?, ?, ?, ?)", rows)

    def delete_shard_rows(self, shard: int, limit: int) -> int:
        with self.lock, write_transaction(self.db):
            return self.db.execute(
                "DELETE FROM posts WHERE id IN "
                "(SELECT id FROM posts WHERE logical_shard = ? LIMIT ?)",
                (shard, limit),
            ).rowcount

    def close(self) -> None:
        self.db.close()


class BlogService:
    """Posts spread over 32 logical shards by author, found again by id alone.

    Guarantees, for any number of threads and processes sharing one db_dir on
    one machine (SQLite's file locks are the assumption): no two posts get the
    same id, and get_post finds every stored post, also while move_shard runs.
    Posts are never updated or deleted, which is what makes a move by id range
    exact.
    """

    def __init__(
        self,
        db_dir: str | Path = DEFAULT_DB_DIR,
        databases: int = DEFAULT_DATABASES,  # only for a new db_dir; the catalog decides after
        clock: IdGenerator.Clock = time.time_ns,
    ):
        if (
            isinstance(databases, bool)
            or not isinstance(databases, int)
            or not 1 <= databases <= LOGICAL_SHARDS
        ):
            raise ValueError(
                f"databases must be in 1..{LOGICAL_SHARDS} (one logical shard each at most), "
                f"got {databases!r}"
            )
        self.db_dir = Path(db_dir)
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = connect(self.db_dir / "catalog.db", CATALOG_SCHEMA)
        self.catalog_lock = threading.Lock()
        self.databases: dict[str, Database] = {}
        self.open_lock = threading.Lock()
        # One generator per logical shard: its worker id *is* the shard number.
        self.generators = [IdGenerator.IdGenerator(s, clock=clock) for s in range(LOGICAL_SHARDS)]
        try:
            with self.catalog_lock, write_transaction(self.catalog):  # two creators at once
                if not self.catalog.execute("SELECT count(*) FROM shard_map").fetchone()[0]:
                    self.catalog.executemany(
                        "INSERT INTO shard_map VALUES (?, ?, 0)",
                        [(s, f"db-{s % databases:02d}") for s in range(LOGICAL_SHARDS)],
                    )
            for name in set(self.mapping().values()):
                self.database(name)  # a missing or broken file shows up now, not mid-request
        except BaseException:
            self.close()
            raise

    # -- routing ---------------------------------------------------------------------

    @staticmethod
    def shard_for_author(author: str) -> int:
        # crc32, not hash(): Python salts str hashes per process, and an author's
        # posts must land on the same shard in every process, every run. The
        # modulus is the fixed number of logical shards, never of databases.
        return zlib.crc32(author.encode("utf-8")) % LOGICAL_SHARDS

    @staticmethod
    def shard_for_id(post_id: int) -> int:
        """The logical shard that holds post_id: its worker bits, nothing else."""
        return IdGenerator.decode(post_id).worker_id

    def lookup(self, shard: int) -> tuple[str, int]:
        """(database, version) of a logical shard, as committed right now."""
        with self.catalog_lock:
            return self.catalog.execute(
                "SELECT db, version FROM shard_map WHERE logical_shard = ?", (shard,)
            ).fetchone()

    def mapping(self) -> dict[int, str]:
        """Every logical shard and the database that holds it."""
        return {shard: db for shard, (db, _) in self.versions().items()}

    def versions(self) -> dict[int, tuple[str, int]]:
        with self.catalog_lock:
            rows = self.catalog.execute("SELECT logical_shard, db, version FROM shard_map")
            return {shard: (db, version) for shard, db, version in rows}

    def database(self, name: str) -> Database:
        """The open database called name (<db_dir>/<name>.db), created if new."""
        if not isinstance(name, str) or not DATABASE_NAME.fullmatch(name) or name == "catalog":
            raise ValueError(
                f"database name {str(name)[:40]!r} must be 1-32 of a-z, 0-9, '-', '_' "
                f"(starting with a letter or digit), and not 'catalog'"
            )
        with self.open_lock:
            if name not in self.databases:
                self.databases[name] = Database(self.db_dir / f"{name}.db")
            return self.databases[name]

    # -- posts -----------------------------------------------------------------------

    def create_post(self, author: str, title: str, body: str) -> Post:
        for field, value in (("author", author), ("title", title), ("body", body)):
            if not isinstance(value, str) or (field != "body" and not value.strip()):
                raise ValueError(f"{field} must be a{' non-empty' * (field != 'body')} string")
            if len(value) > MAX_LENGTH[field]:
                raise ValueError(
                    f"{field} is {len(value):,} characters; at most {MAX_LENGTH[field]:,}"
                )
        shard = self.shard_for_author(author)
        for _ in range(MAX_LOOKUP_RETRIES):
            name, version = self.lookup(shard)
            database = self.database(name)
            with database.lock, write_transaction(database.db):
                # Holding this database's write lock, ask again: a move switches
                # the map only while it holds this lock, so the answer now stays
                # true until we commit. If it changed, write to the new home.
                if self.lookup(shard) != (name, version):
                    continue
                # Step past the shard's newest stored id: another process, or
                # this shard's previous home, may have minted ids this generator
                # has never seen (they share the worker id: the shard number).
                (last_id,) = database.db.execute(
                    "SELECT max(id) FROM posts WHERE logical_shard = ?", (shard,)
                ).fetchone()
                generator = self.generators[shard]
                if last_id is not None:
                    generator.resume_after(last_id)
                post_id = generator.next_id()
                database.db.execute(
                    f"INSERT INTO posts ({COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (post_id, shard, author, title, body),
                )
            return Post(post_id, author, title, body, shard, name)
        raise RuntimeError(f"shard {shard} moved {MAX_LOOKUP_RETRIES} times during one insert")

    def get_post(self, post_id: int) -> Post:
        try:
            shard = self.shard_for_id(post_id)
        except ValueError as err:  # not a Snowflake id at all
            raise PostNotFoundError(f"no post {post_id}: {err}") from None
        where = self.lookup(shard)
        for _ in range(MAX_LOOKUP_RETRIES):
            row = self.database(where[0]).get(post_id)
            if row is not None:
                return Post(row[0], *row[2:], shard, where[0])
            # A move deletes the old copy only after switching the map, so a
            # miss under an unchanged map (same version) is a real miss.
            now = self.lookup(shard)
            if now == where:
                raise PostNotFoundError(
                    f"no post {post_id} (looked in logical shard {shard}, database {where[0]})"
                )
            where = now
        raise RuntimeError(f"shard {shard} moved {MAX_LOOKUP_RETRIES} times during one read")

    def recent_posts(self, limit: int = 10) -> list[Post]:
        """The newest posts across all databases: each one's newest, merged by id.

        Ids sort by time, so a k-way merge of per-database lists is all it
        takes. Each database is asked only for the shards the map gives it (a
        move leaves a copy behind for a moment); if a move switched a shard
        meanwhile, the whole read is done again.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_RECENT:
            raise ValueError(f"limit must be an int in 0..{MAX_RECENT}, got {limit!r}")
        for _ in range(MAX_LOOKUP_RETRIES):
            before = self.versions()
            homes: dict[str, list[int]] = {}
            for shard, (name, _) in before.items():
                homes.setdefault(name, []).append(shard)
            per_database = [
                [Post(r[0], *r[2:], r[1], name) for r in self.database(name).newest(shards, limit)]
                for name, shards in homes.items()
            ]
            if self.versions() == before:
                merged = heapq.merge(*per_database, key=lambda post: post.id, reverse=True)
                return list(itertools.islice(merged, limit))
        raise RuntimeError(f"shards moved {MAX_LOOKUP_RETRIES} times during one read")

    def post_counts(self) -> dict[int, int]:
        """Posts per logical shard, counted in each shard's current database."""
        counts = {}
        for shard, name in self.mapping().items():
            database = self.database(name)
            with database.lock:
                (counts[shard],) = database.db.execute(
                    "SELECT count(*) FROM posts WHERE logical_shard = ?", (shard,)
                ).fetchone()
        return counts

    # -- moving a logical shard ------------------------------------------------------------

    def move_shard(
        self, shard: int, target: str, progress: Callable[[str, int], None] | None = None
    ) -> MoveReport:
        """Move a logical shard to the database `target` (created if new), live.

        Copy its rows in batches while writers go on; catch up, by id, on what
        they wrote meanwhile; switch the map while holding the source's write
        lock (so no insert can land in the source after the last copy); then
        delete the source's copy. Readers and writers keep working throughout.
        One move at a time per db_dir (a lock file says so).

        A move that crashed is finished by moving again: every move first
        removes the shard's rows from every database but its home. Before its
        switch a crashed move changed nothing readers see (the copy is thrown
        away); after it, the move is done but for that delete, so asking again
        for the same target finishes it (MoveError only if nothing was left).
        """
        if isinstance(shard, bool) or not isinstance(shard, int):
            raise ValueError(f"shard must be an int in 0..{LOGICAL_SHARDS - 1}, got {shard!r}")
        if not 0 <= shard < LOGICAL_SHARDS:
            raise ValueError(f"shard must be in 0..{LOGICAL_SHARDS - 1}, got {shard}")
        progress = progress or (lambda step, rows: None)
        started = time.perf_counter()
        with self.move_lock():
            source_name, _ = self.lookup(shard)
            self.database(target)  # a bad name is refused before anything is deleted
            leftovers = self.remove_leftovers(shard, source_name)
            if source_name == target:
                if not leftovers:
                    raise MoveError(f"logical shard {shard} is already in {target}")
                seconds = time.perf_counter() - started
                return MoveReport(shard, target, target, 0, 0, 0, seconds, 0.0, leftovers)
            target_db, source = self.database(target), self.database(source_name)

            copied, last_id = 0, -1
            while rows := source.rows_after(shard, last_id, MOVE_BATCH):
                target_db.insert_rows(rows)
                copied, last_id = copied + len(rows), rows[-1][0]
                progress("copy", copied)

            # The switch. Ids only grow within a shard (each insert steps past
            # the newest one under this very lock), so "id > last_id" is
            # exactly what writers added since the copy's last batch.
            switch_started = time.perf_counter()
            with source.lock, write_transaction(source.db):
                tail = source.rows_after(shard, last_id, sys.maxsize)
                if tail:
                    target_db.insert_rows(tail)
                with self.catalog_lock, write_transaction(self.catalog):
                    self.catalog.execute(
                        "UPDATE shard_map SET db = ?, version = version + 1 "
                        "WHERE logical_shard = ?",
                        (target, shard),
                    )
            switch_ms = (time.perf_counter() - switch_started) * 1000
            progress("switch", len(tail))

            deleted = 0
            while removed := source.delete_shard_rows(shard, MOVE_BATCH):
                deleted += removed
                progress("delete", deleted)
        return MoveReport(
            shard,
            source_name,
            target,
            copied,
            len(tail),
            deleted,
            time.perf_counter() - started,
            switch_ms,
            leftovers,
        )

    def remove_leftovers(self, shard: int, home: str) -> dict[str, int]:
        """Delete the shard's rows from every database in db_dir but `home`.

        Only a crashed move leaves any. Nobody reads or writes them: writers
        and readers go to the home the catalog names, and a reader that looked
        before the last switch retries there after its miss.
        """
        removed = {}
        for path in sorted(self.db_dir.glob("*.db")):
            if (
                path.stem == home
                or path.stem == "catalog"
                or not DATABASE_NAME.fullmatch(path.stem)
            ):
                continue
            database, count = self.database(path.stem), 0
            while deleted := database.delete_shard_rows(shard, MOVE_BATCH):
                count += deleted
            if count:
                removed[path.stem] = count
        return removed

    @contextmanager
    def move_lock(self) -> Iterator[None]:
        # Two moves at once could each hold one source's write lock while
        # waiting to write to the other's database: one at a time, machine-wide.
        with open(self.db_dir / "moves.lock", "w") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MoveError(f"another shard move is running in {self.db_dir}") from None
            yield

    def close(self) -> None:
        for database in self.databases.values():
            database.close()
        self.catalog.close()

    def __enter__(self) -> BlogService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- command line -------------------------------------------------------------


def format_post(post: Post) -> str:
    when = post.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return (
        f"{post.id}  shard {post.shard:>2} ({post.database})  {when} UTC  "
        f"{post.author}: {post.title}"
    )


def database_name(text: str) -> str:
    if not DATABASE_NAME.fullmatch(text) or text == "catalog":
        raise argparse.ArgumentTypeError(
            f"database names are 1-32 of a-z, 0-9, '-', '_' (not 'catalog'), got {text[:40]!r}"
        )
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A blog over 32 logical shards in SQLite databases, keyed by Snowflake ids."
    )
    parser.add_argument(
        "--databases",
        type=bounded(int, 1, LOGICAL_SHARDS),
        default=DEFAULT_DATABASES,
        help=f"how many databases a new --db-dir starts with, 1..{LOGICAL_SHARDS} (default 4)",
    )
    parser.add_argument(
        "--db-dir", type=Path, default=DEFAULT_DB_DIR, help="where the databases live"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write a post and print its id")
    create.add_argument("--author", required=True)
    create.add_argument("--title", required=True)
    create.add_argument("--body", default="")
    get = commands.add_parser("get", help="read one post by id")
    get.add_argument("id", type=bounded(int, 0, IdGenerator.MAX_ID))
    recent = commands.add_parser("recent", help="the newest posts across all shards")
    recent.add_argument(
        "--limit", type=bounded(int, 0, MAX_RECENT), default=10, help=f"0..{MAX_RECENT:,}"
    )
    commands.add_parser("shards", help="which database holds each logical shard, and its posts")
    move = commands.add_parser("move", help="move a logical shard to another database, live")
    move.add_argument("shard", type=bounded(int, 0, LOGICAL_SHARDS - 1))
    move.add_argument("--to", required=True, type=database_name, help="e.g. db-04 (made if new)")
    return parser.parse_args(argv)


def print_shards(blog: BlogService) -> None:
    counts = blog.post_counts()
    by_database: dict[str, list[int]] = {}
    for shard, name in sorted(blog.mapping().items()):
        by_database.setdefault(name, []).append(shard)
    for name, shards in sorted(by_database.items()):
        posts = sum(counts[s] for s in shards)
        print(f"{name}: {posts:,} posts in logical shards {', '.join(map(str, shards))}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with BlogService(args.db_dir, args.databases) as blog:
            if args.command == "create":
                post = blog.create_post(args.author, args.title, args.body)
                print(post.id)
            elif args.command == "get":
                post = blog.get_post(args.id)
                print(format_post(post))
                if post.body:
                    print(post.body)
            elif args.command == "recent":
                for post in blog.recent_posts(args.limit):
                    print(format_post(post))
            elif args.command == "shards":
                print_shards(blog)
            else:
                report = blog.move_shard(args.shard, args.to)
                if report.leftovers:
                    where = ", ".join(f"{n:,} from {db}" for db, n in report.leftovers.items())
                    print(f"removed rows an interrupted move had left behind: {where}")
                if report.source == report.target:
                    print(f"logical shard {report.shard} is in {report.target}; move finished")
                else:
                    print(
                        f"moved logical shard {report.shard} from {report.source} to "
                        f"{report.target}: {report.copied:,} rows copied, {report.caught_up:,} "
                        f"caught up during a {report.switch_ms:.1f} ms switch, "
                        f"{report.deleted:,} deleted from {report.source}, "
                        f"in {report.seconds:.2f} s"
                    )
    except (PostNotFoundError, MoveError, ValueError, IdGenerator.ClockMovedBackwardsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as err:  # --db-dir is a file, unwritable, not SQLite
        print(f"error: cannot use the databases in {args.db_dir}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
