"""A sharded blog whose post ids are Snowflake ids: the id alone says where a post lives.

Each shard is its own SQLite database and its own Snowflake worker (shard i is
worker i), so shards mint ids without talking to each other, and `get_post`
reads the shard number straight out of the id's worker bits: no lookup table.
See the README's "BlogService" section.

    python UniqueIdGeneration/BlogService.py create --author ada --title Hello --body "First!"
    python UniqueIdGeneration/BlogService.py get 7849233540591616
    python UniqueIdGeneration/BlogService.py recent --limit 5
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import IdGenerator

MAX_SHARDS = IdGenerator.MAX_WORKER_ID + 1  # one worker id per shard: 32
DEFAULT_DB_DIR = Path(__file__).resolve().parent / "out" / "blog"  # git-ignored
DEFAULT_SHARDS = 4
MAX_RECENT = 10_000  # recent_posts() holds limit posts per shard in memory

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    id     INTEGER PRIMARY KEY,  -- the Snowflake id: rows are appended in time order
    author TEXT NOT NULL,
    title  TEXT NOT NULL,
    body   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shard (
    shard_index INTEGER NOT NULL,
    shard_count INTEGER NOT NULL
);
"""


class PostNotFoundError(KeyError):
    """No post has this id."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class ShardLayoutError(RuntimeError):
    """The database directory was created with a different number of shards."""


@dataclass(frozen=True)
class Post:
    id: int
    author: str
    title: str
    body: str
    shard: int

    @property
    def created_at(self) -> datetime:
        """When the post was made, read from the id itself (no column stores it)."""
        return IdGenerator.decode(self.id).timestamp


class Shard:
    """One database and the worker that mints ids for it."""

    def __init__(self, path: Path, index: int, count: int, clock: IdGenerator.Clock):
        self.index = index
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()  # one writer at a time on this connection
        self.ids = IdGenerator.IdGenerator(worker_id=index, clock=clock)
        try:
            self._check_layout(path, count)
        except BaseException:
            self.db.close()
            raise

    def _check_layout(self, path: Path, count: int) -> None:
        with self._write_transaction():  # two processes opening a new shard at once
            row = self.db.execute("SELECT shard_index, shard_count FROM shard").fetchone()
            if row is None:
                self.db.execute("INSERT INTO shard VALUES (?, ?)", (self.index, count))
        if row is not None and row != (self.index, count):
            raise ShardLayoutError(
                f"{path} is shard {row[0]} of {row[1]}, but this service was started with "
                f"{count} shards; use --shards {row[1]} or a new --db-dir"
            )

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        # BEGIN IMMEDIATE takes SQLite's write lock now, so a second process on
        # this file waits here (up to sqlite3's 5 s timeout) instead of racing.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def insert(self, author: str, title: str, body: str) -> Post:
        with self.lock, self._write_transaction():
            # Step past the newest stored id first. A restart within the same
            # millisecond, or a second process writing this shard (two CLI
            # commands at once share its worker id), must not mint it again.
            (last_id,) = self.db.execute("SELECT max(id) FROM posts").fetchone()
            if last_id is not None:
                self.ids.resume_after(last_id)
            post_id = self.ids.next_id()
            self.db.execute(
                "INSERT INTO posts (id, author, title, body) VALUES (?, ?, ?, ?)",
                (post_id, author, title, body),
            )
        return Post(post_id, author, title, body, self.index)

    def get(self, post_id: int) -> Post | None:
        with self.lock:
            row = self.db.execute(
                "SELECT id, author, title, body FROM posts WHERE id = ?", (post_id,)
            ).fetchone()
        return Post(*row, self.index) if row else None

    def newest_first(self, limit: int) -> list[Post]:
        with self.lock:
            rows = self.db.execute(
                "SELECT id, author, title, body FROM posts ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [Post(*row, self.index) for row in rows]


class BlogService:
    """Posts spread over N shards by author; found again by id alone."""

    def __init__(
        self,
        db_dir: str | Path = DEFAULT_DB_DIR,
        shards: int = DEFAULT_SHARDS,
        clock: IdGenerator.Clock = time.time_ns,
    ):
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise ValueError(
                f"shards must be in 1..{MAX_SHARDS} (one worker id each), got {shards}"
            )
        self.db_dir = Path(db_dir)
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[Shard] = []
        try:
            for i in range(shards):
                self.shards.append(Shard(self.db_dir / f"shard-{i:02d}.db", i, shards, clock))
        except BaseException:
            self.close()  # the shards opened before the one that failed
            raise

    def shard_for_author(self, author: str) -> int:
        # crc32, not hash(): Python salts str hashes per process, and an author's
        # posts must land on the same shard in every process, every run.
        return zlib.crc32(author.encode("utf-8")) % len(self.shards)

    def shard_for_id(self, post_id: int) -> int:
        """The shard that holds post_id: its worker bits, nothing else."""
        worker_id = IdGenerator.decode(post_id).worker_id
        if worker_id >= len(self.shards):
            raise PostNotFoundError(
                f"no post {post_id}: its worker id {worker_id} is not one of the "
                f"{len(self.shards)} shards"
            )
        return worker_id

    def create_post(self, author: str, title: str, body: str) -> Post:
        for name, value in (("author", author), ("title", title)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string")
        if not isinstance(body, str):
            raise ValueError("body must be a string")
        return self.shards[self.shard_for_author(author)].insert(author, title, body)

    def get_post(self, post_id: int) -> Post:
        try:
            shard = self.shard_for_id(post_id)
        except ValueError as err:  # not a Snowflake id at all
            raise PostNotFoundError(f"no post {post_id}: {err}") from None
        post = self.shards[shard].get(post_id)
        if post is None:
            raise PostNotFoundError(f"no post {post_id} (looked in shard {shard} only)")
        return post

    def recent_posts(self, limit: int = 10) -> list[Post]:
        """The newest posts across all shards: each shard's newest, merged by id.

        Ids sort by time, so a k-way merge of per-shard lists is all it takes;
        no shard needs to know about the others.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_RECENT:
            raise ValueError(f"limit must be an int in 0..{MAX_RECENT}, got {limit!r}")
        per_shard = [shard.newest_first(limit) for shard in self.shards]
        merged = heapq.merge(*per_shard, key=lambda post: post.id, reverse=True)
        return list(itertools.islice(merged, limit))

    def close(self) -> None:
        for shard in self.shards:
            shard.db.close()

    def __enter__(self) -> BlogService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- command line -------------------------------------------------------------


def format_post(post: Post) -> str:
    when = post.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{post.id}  shard {post.shard}  {when} UTC  {post.author}: {post.title}"


def bounded_int(name: str, low: int, high: int):
    """An argparse type: a whole number in low..high, refused with a one-line error."""

    def parse(text: str) -> int:
        shown = text if len(text) <= 40 else text[:37] + "..."
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, got {shown!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be in {low}..{high:,}, got {shown}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A sharded blog keyed by Snowflake ids.")
    parser.add_argument(
        "--shards",
        type=bounded_int("--shards", 1, MAX_SHARDS),
        default=DEFAULT_SHARDS,
        help=f"1..{MAX_SHARDS} (default 4)",
    )
    parser.add_argument(
        "--db-dir", type=Path, default=DEFAULT_DB_DIR, help="where the shard databases live"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write a post and print its id")
    create.add_argument("--author", required=True)
    create.add_argument("--title", required=True)
    create.add_argument("--body", default="")
    get = commands.add_parser("get", help="read one post by id")
    get.add_argument("id", type=bounded_int("id", 0, IdGenerator.MAX_ID))
    recent = commands.add_parser("recent", help="the newest posts across all shards")
    recent.add_argument(
        "--limit", type=bounded_int("--limit", 0, MAX_RECENT), default=10, help=f"0..{MAX_RECENT:,}"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with BlogService(args.db_dir, args.shards) as blog:
            if args.command == "create":
                post = blog.create_post(args.author, args.title, args.body)
                print(post.id)
            elif args.command == "get":
                post = blog.get_post(args.id)
                print(format_post(post))
                if post.body:
                    print(post.body)
            else:
                for post in blog.recent_posts(args.limit):
                    print(format_post(post))
    except (
        PostNotFoundError,
        ShardLayoutError,
        ValueError,
        IdGenerator.ClockMovedBackwardsError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as err:  # --db-dir is a file, unwritable, not SQLite
        print(f"error: cannot use the shard databases in {args.db_dir}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
