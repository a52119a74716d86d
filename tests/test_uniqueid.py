"""UniqueIdGeneration: the Snowflake layout, its guarantees under threads,
processes, clock steps and bursts, and the sharded BlogService built on it."""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT, load_module, run_script

ids = load_module("UniqueIdGeneration", "IdGenerator")
blog_service = load_module("UniqueIdGeneration", "BlogService")
break_it = load_module("UniqueIdGeneration", "break_it")
btree = load_module("UniqueIdGeneration", "btree_experiment")

NS_PER_MS = 1_000_000
EPOCH_MS = ids.epoch_ms(ids.EPOCH)


class ScriptedClock:
    """Reads out milliseconds from a script; the last value repeats forever.

    The generator reads the clock once when it is made (to refuse a future
    epoch), so every script starts with that reading.
    """

    def __init__(self, *ms: int) -> None:
        self.script = list(ms)
        self.reads = 0

    def __call__(self) -> int:
        value = self.script[min(self.reads, len(self.script) - 1)]
        self.reads += 1
        return value * NS_PER_MS


class OffsetClock:
    """The real clock plus an offset a test can step backwards."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns


def now_ms() -> int:
    return time.time_ns() // NS_PER_MS


# -- the layout ---------------------------------------------------------------


def test_layout_constants_are_the_briefs():
    assert (ids.UNUSED_BITS, ids.TIMESTAMP_BITS, ids.WORKER_ID_BITS, ids.SEQUENCE_BITS) == (
        6,
        41,
        5,
        12,
    )
    assert ids.MAX_ID == 2**58 - 1


@pytest.mark.parametrize(
    "timestamp, worker, sequence",
    [
        (0, 0, 0),
        (ids.MAX_TIMESTAMP, 31, 4095),
        (ids.MAX_TIMESTAMP, 0, 0),
        (12345, 31, 0),
        (1, 0, 4095),
    ],
)
def test_encode_decode_round_trip_at_the_field_limits(timestamp, worker, sequence):
    snowflake = ids.encode(timestamp, worker, sequence)
    assert snowflake >> 58 == 0, "bits 63-58 must be zero"
    parts = ids.decode(snowflake)
    assert parts.timestamp == ids.EPOCH + timedelta(milliseconds=timestamp)
    assert (parts.worker_id, parts.sequence) == (worker, sequence)
    assert parts.timestamp.tzinfo is not None


def test_the_largest_id_has_every_field_at_its_maximum():
    assert ids.encode(ids.MAX_TIMESTAMP, 31, 4095) == ids.MAX_ID
    assert ids.decode(ids.MAX_ID).timestamp == ids.IDS_RUN_OUT - timedelta(milliseconds=1)


@pytest.mark.parametrize("bad", [-1, ids.MAX_ID + 1, 2**63, 2**64 - 1])
def test_decode_rejects_values_that_are_not_snowflake_ids(bad):
    with pytest.raises(ValueError, match="not a Snowflake id"):
        ids.decode(bad)


@pytest.mark.parametrize(
    "fields", [(-1, 0, 0), (ids.MAX_TIMESTAMP + 1, 0, 0), (0, 32, 0), (0, 0, 4096), (0, -1, 0)]
)
def test_encode_rejects_fields_out_of_range(fields):
    with pytest.raises(ValueError, match="must be an int in"):
        ids.encode(*fields)


@pytest.mark.parametrize("bad", [1.0, "12", None, True])
def test_decode_rejects_values_that_are_not_ints(bad):
    with pytest.raises(ValueError, match="not a Snowflake id"):
        ids.decode(bad)


def test_the_41_bits_run_out_69_years_after_the_epoch():
    assert ids.EPOCH == datetime(2025, 1, 1, tzinfo=UTC)
    assert ids.IDS_RUN_OUT == datetime(2094, 9, 7, 15, 47, 35, 552000, tzinfo=UTC)


def test_generator_works_up_to_the_last_millisecond_then_refuses():
    last = EPOCH_MS + ids.MAX_TIMESTAMP
    generator = ids.IdGenerator(31, clock=ScriptedClock(EPOCH_MS, EPOCH_MS, last, last, last + 1))
    first = generator.next_id()
    final = generator.next_id()
    assert generator.decode(final) == (ids.IDS_RUN_OUT - timedelta(milliseconds=1), 31, 0)
    assert generator.next_id() == final + 1  # same millisecond: sequence 1
    assert first < final
    with pytest.raises(ids.IdSpaceExhaustedError):
        generator.next_id()


# -- uniqueness and order -------------------------------------------------------


def test_200000_ids_from_one_generator_are_unique_and_strictly_increasing():
    generator = ids.IdGenerator(5)
    minted = [generator.next_id() for _ in range(200_000)]
    assert all(a < b for a, b in zip(minted, minted[1:], strict=False))
    assert all(i >> 58 == 0 and generator.decode(i).worker_id == 5 for i in minted[::997])


def python_level_clock() -> int:
    # A Python function gives CPython a point to switch threads inside next_id
    # (the builtin time.time_ns would not).
    return time.time_ns()


def test_eight_threads_sharing_one_generator_never_get_a_duplicate():
    generator = ids.IdGenerator(9, clock=python_level_clock)
    minted: list[list[int]] = [[] for _ in range(8)]

    def work(out: list[int]) -> None:
        for _ in range(25_000):
            out.append(generator.next_id())

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    try:
        threads = [threading.Thread(target=work, args=(out,)) for out in minted]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    every = [i for out in minted for i in out]
    assert len(every) == 200_000
    assert len(set(every)) == 200_000
    assert all(all(a < b for a, b in zip(out, out[1:], strict=False)) for out in minted)


def test_next_id_reads_the_clock_and_updates_its_state_under_the_lock():
    # With the GIL, CPython 3.11 rarely switches threads inside next_id, so the
    # stress test above could pass without the lock; a free-threaded build
    # (3.13t) would not. This checks the discipline itself: the clock is read,
    # and so the state is updated, only while the lock is held.
    held = []
    generator = None

    def clock() -> int:
        if generator is not None:
            held.append(generator._lock.locked())
        return time.time_ns()

    generator = ids.IdGenerator(1, clock=clock)
    for _ in range(1000):
        generator.next_id()
    assert held and all(held)
    assert not generator._lock.locked()


def test_four_processes_with_distinct_worker_ids_never_collide():
    code = (
        "import sys, IdGenerator\n"
        "g = IdGenerator.IdGenerator(int(sys.argv[1]))\n"
        "print('\\n'.join(str(g.next_id()) for _ in range(50_000)))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(worker)],
            cwd=ROOT / "UniqueIdGeneration",
            stdout=subprocess.PIPE,
            text=True,
        )
        for worker in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    per_process = [[int(line) for line in out.split()] for out in outputs]
    every = [i for minted in per_process for i in minted]
    assert len(every) == 200_000 and len(set(every)) == 200_000
    assert [{ids.decode(i).worker_id for i in minted} for minted in per_process] == [
        {0},
        {1},
        {2},
        {3},
    ]


def test_two_generators_with_the_same_worker_id_do_collide():
    # The guarantee is per worker id: this is why ids must be assigned, not guessed.
    result = break_it.shared_worker_id(count=2_000)
    assert result["duplicates_same_worker"] > 1_000
    assert result["duplicates_distinct_workers"] == 0


# -- the clock ------------------------------------------------------------------


def test_sequence_overflow_waits_for_the_next_millisecond():
    t = now_ms()
    clock = ScriptedClock(*([t] * 4099), t + 1)
    generator = ids.IdGenerator(2, clock=clock)
    minted = [generator.next_id() for _ in range(4097)]
    parts = [generator.decode(i) for i in minted]
    assert [p.sequence for p in parts[:4096]] == list(range(4096))
    assert {p.timestamp for p in parts[:4096]} == {parts[0].timestamp}
    assert parts[4096].timestamp == parts[0].timestamp + timedelta(milliseconds=1)
    assert parts[4096].sequence == 0
    assert len(set(minted)) == 4097 and minted == sorted(minted)
    assert clock.reads > 4097, "it must have re-read the clock while waiting"


def test_a_small_backwards_step_is_waited_out():
    clock = OffsetClock()
    generator = ids.IdGenerator(3, clock=clock)
    before = generator.next_id()
    last_ms = generator.decode(before).timestamp
    clock.offset_ns = -5 * NS_PER_MS  # NTP stepped the clock back 5 ms
    after = [generator.next_id() for _ in range(100)]
    assert all(i > before for i in after)
    assert generator.decode(after[0]).timestamp >= last_ms
    assert len(set(after)) == 100


def test_a_large_backwards_step_raises_and_the_generator_recovers_with_the_clock():
    t = now_ms()
    back = t - (ids.MAX_BACKWARDS_WAIT_MS + 40)
    generator = ids.IdGenerator(4, clock=ScriptedClock(t, t, back, t, t + 1, t + 2))
    first = generator.next_id()
    with pytest.raises(ids.ClockMovedBackwardsError, match=r"\d+ ms earlier"):
        generator.next_id()
    # Nothing was issued during the step; once the clock is back, ids go on rising.
    assert first < generator.next_id() < generator.next_id() < generator.next_id()


def test_a_step_just_over_the_bound_raises_without_sleeping_first():
    t = now_ms()
    clock = ScriptedClock(t, t, t - ids.MAX_BACKWARDS_WAIT_MS - 1)
    generator = ids.IdGenerator(4, clock=clock)
    generator.next_id()
    with pytest.raises(ids.ClockMovedBackwardsError):
        generator.next_id()
    assert clock.reads == 3  # construction, first id, the refused read


def test_monotonic_mode_keeps_minting_in_order_through_a_wall_clock_step_back():
    wall = OffsetClock()
    stepping = ids.IdGenerator(1, clock=wall)
    steady = ids.IdGenerator(2, clock=ids.MonotonicClock(wall=wall))
    before = [g.next_id() for g in (stepping, steady)]
    wall.offset_ns = -2_000 * NS_PER_MS  # NTP steps the wall clock back 2 s
    time.sleep(0.002)
    with pytest.raises(ids.ClockMovedBackwardsError):
        stepping.next_id()
    started_ms = now_ms()
    after = [steady.next_id() for _ in range(20_000)]
    ended_ms = now_ms()
    assert all(a < b for a, b in zip([before[1], *after], after, strict=False))
    # It read the wall clock once, at start: its timestamps are still real time
    # (the system's clock, which the test's wall clock stepped back 2 s from).
    stamped = [EPOCH_MS + (i >> ids.TIMESTAMP_SHIFT) for i in (after[0], after[-1])]
    assert started_ms - 1 <= stamped[0] <= stamped[1] <= ended_ms + 1


def test_monotonic_mode_timestamps_follow_the_anchor_and_elapsed_time():
    # Read when anchored, when the generator is made, then once per id.
    elapsed = ScriptedClock(5, 5, 5, 5, 6)  # the monotonic clock, in ms
    start_ms = now_ms()
    clock = ids.MonotonicClock(wall=lambda: start_ms * NS_PER_MS, elapsed=elapsed)
    generator = ids.IdGenerator(3, clock=clock)
    first, second, third = (generator.next_id() for _ in range(3))
    assert [i >> ids.TIMESTAMP_SHIFT for i in (first, second, third)] == [
        start_ms - EPOCH_MS,
        start_ms - EPOCH_MS,
        start_ms - EPOCH_MS + 1,
    ]
    assert second == first + 1
    generator.resume_after(third + 5)  # the offset is applied when resuming, too
    assert generator.next_id() == third + 6


# -- arguments ------------------------------------------------------------------


@pytest.mark.parametrize("worker_id", [-1, 32, 1000, "3", 3.0, None, True])
def test_worker_ids_outside_0_to_31_are_rejected(worker_id):
    with pytest.raises(ValueError, match="worker_id"):
        ids.IdGenerator(worker_id)


def test_an_epoch_in_the_future_is_rejected():
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ValueError, match="in the future"):
        ids.IdGenerator(1, epoch=tomorrow)


def test_an_epoch_without_a_timezone_is_rejected():
    with pytest.raises(ValueError, match="no timezone"):
        ids.IdGenerator(1, epoch=datetime(2020, 1, 1))


@pytest.mark.parametrize("epoch", ["2025-01-01", 1735689600000, None])
def test_an_epoch_that_is_not_a_datetime_is_rejected(epoch):
    with pytest.raises(ValueError, match="epoch must be a datetime"):
        ids.IdGenerator(1, epoch=epoch)


def test_an_epoch_whose_41_bits_already_ran_out_is_rejected():
    with pytest.raises(ValueError, match="too far in the past"):
        ids.IdGenerator(1, epoch=datetime(1950, 1, 1, tzinfo=UTC))


def test_a_custom_epoch_is_used_for_encoding_and_decoding():
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    t = now_ms()
    generator = ids.IdGenerator(1, epoch=epoch, clock=ScriptedClock(t))
    snowflake = generator.next_id()
    assert snowflake >> ids.TIMESTAMP_SHIFT == t - ids.epoch_ms(epoch)
    assert generator.decode(snowflake).timestamp == datetime.fromtimestamp(t / 1000, UTC)


def test_resume_after_continues_above_an_id_issued_before_a_restart():
    t = now_ms()
    earlier = ids.encode(t - EPOCH_MS, 6, 100)
    generator = ids.IdGenerator(6, clock=ScriptedClock(t))
    generator.resume_after(earlier)
    assert generator.next_id() == earlier + 1
    with pytest.raises(ValueError, match="worker 7"):
        generator.resume_after(ids.encode(t - EPOCH_MS, 7, 0))


# -- BlogService ------------------------------------------------------------------


class TickingClock:
    """Advances one millisecond per read, so creation order is unambiguous."""

    def __init__(self) -> None:
        self.ms = now_ms()

    def __call__(self) -> int:
        self.ms += 1
        return self.ms * NS_PER_MS


AUTHORS = [f"author-{i}" for i in range(40)]


def test_get_post_finds_the_shard_from_the_id_alone(tmp_path):
    with blog_service.BlogService(tmp_path, databases=4) as blog:
        posts = [blog.create_post(a, f"title {a}", "body") for a in AUTHORS]
        assert len({p.shard for p in posts}) > 10, "authors should spread over logical shards"
        assert {p.database for p in posts} == {"db-00", "db-01", "db-02", "db-03"}
        for post in posts:
            assert ids.decode(post.id).worker_id == post.shard
            assert blog.mapping()[post.shard] == post.database
        target = posts[0]
        # Close every other database: a lookup that consulted them would now fail.
        for name, database in blog.databases.items():
            if name != target.database:
                database.close()
        assert blog.get_post(target.id) == target


def test_an_authors_posts_always_land_on_the_same_shard(tmp_path):
    with blog_service.BlogService(tmp_path, databases=8) as blog:
        shards = {blog.create_post("ada", f"post {i}", "").shard for i in range(10)}
    assert len(shards) == 1
    # ...and in another process too (no salted hash()).
    code = "import BlogService as b; print(b.BlogService.shard_for_author('ada'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "UniqueIdGeneration",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == str(shards.pop())


def test_adding_a_database_never_rehashes_an_author(tmp_path):
    with blog_service.BlogService(tmp_path, databases=2) as blog:
        before = {a: blog.create_post(a, "t", "").shard for a in AUTHORS}
        blog.move_shard(before["author-0"], "db-new")
        after = {a: blog.create_post(a, "t2", "").shard for a in AUTHORS}
        assert after == before
        assert blog.create_post("author-0", "t3", "").database == "db-new"


def test_recent_posts_merges_every_shard_in_time_order(tmp_path):
    with blog_service.BlogService(tmp_path, databases=4, clock=TickingClock()) as blog:
        created = [blog.create_post(a, "t", "b") for a in AUTHORS]
        recent = blog.recent_posts(15)
        assert [p.id for p in recent] == [p.id for p in reversed(created)][:15]
        assert len({p.database for p in recent}) > 1
        assert blog.recent_posts(0) == []
        assert len(blog.recent_posts(1000)) == len(AUTHORS)


def test_a_restarted_service_never_reuses_an_id_even_in_the_same_millisecond(tmp_path):
    frozen = ScriptedClock(now_ms())
    with blog_service.BlogService(tmp_path, databases=2, clock=frozen) as blog:
        first = [blog.create_post("ada", f"p{i}", "") for i in range(5)]
    with blog_service.BlogService(tmp_path, databases=2, clock=frozen) as blog:
        again = [blog.create_post("ada", f"q{i}", "") for i in range(5)]
        assert min(p.id for p in again) > max(p.id for p in first)
        assert len(blog.recent_posts(100)) == 10


def test_unknown_and_malformed_ids_raise_post_not_found(tmp_path):
    with blog_service.BlogService(tmp_path, databases=4) as blog:
        post = blog.create_post("ada", "t", "b")
        for missing in (post.id + 1, ids.encode(1, 30, 0), -5, ids.MAX_ID + 1, "7", None):
            with pytest.raises(blog_service.PostNotFoundError):
                blog.get_post(missing)


def test_two_services_writing_one_shard_never_mint_the_same_id(tmp_path):
    # Two CLI commands at once are two processes on one database: same logical
    # shard, same worker id. A frozen clock makes them want the very same ids;
    # each insert must step past what the other already stored instead.
    frozen = ScriptedClock(now_ms())
    with (
        blog_service.BlogService(tmp_path, databases=1, clock=frozen) as first,
        blog_service.BlogService(tmp_path, databases=1, clock=frozen) as second,
    ):
        posts = [
            blog.create_post("ada", f"p{i}", "") for i in range(50) for blog in (first, second)
        ]
        assert len({p.id for p in posts}) == 100
        assert [p.id for p in posts] == sorted(p.id for p in posts)
        assert len(first.recent_posts(1000)) == 100


def test_the_catalog_not_the_argument_decides_an_existing_layout(tmp_path):
    blog_service.BlogService(tmp_path, databases=4).close()
    with blog_service.BlogService(tmp_path, databases=8) as blog:
        assert set(blog.mapping().values()) == {"db-00", "db-01", "db-02", "db-03"}


@pytest.mark.parametrize("databases", [0, 33, -1, True, "4"])
def test_database_counts_outside_1_to_32_are_rejected(tmp_path, databases):
    with pytest.raises(ValueError, match="databases"):
        blog_service.BlogService(tmp_path, databases=databases)


def test_posts_need_an_author_and_a_title_and_have_bounded_fields(tmp_path):
    with blog_service.BlogService(tmp_path, databases=2) as blog:
        for author, title, body in (
            ("", "t", ""),
            ("ada", "  ", ""),
            (None, "t", ""),
            ("ada", "t", None),
            ("a" * 101, "t", ""),
            ("ada", "t" * 301, ""),
            ("ada", "t", "b" * 100_001),
        ):
            with pytest.raises(ValueError, match="author|title|body"):
                blog.create_post(author, title, body)
        assert blog.recent_posts(10) == []


# -- moving a logical shard ----------------------------------------------------------


def rows_per_id(db_dir) -> dict[int, int]:
    """How many stored copies each post id has, over every database file."""
    copies: dict[int, int] = {}
    for path in db_dir.glob("db-*.db"):
        with sqlite3.connect(path) as db:
            for (post_id,) in db.execute("SELECT id FROM posts"):
                copies[post_id] = copies.get(post_id, 0) + 1
    return copies


def test_a_move_copies_switches_and_deletes(tmp_path):
    with blog_service.BlogService(tmp_path, databases=2) as blog:
        posts = [blog.create_post(f"a{i % 7}", f"t{i}", "") for i in range(300)]
        shard = posts[0].shard
        mine = [p for p in posts if p.shard == shard]
        steps = []
        report = blog.move_shard(shard, "db-02", progress=lambda step, n: steps.append(step))
        assert (report.source, report.target) == (posts[0].database, "db-02")
        assert report.copied + report.caught_up == report.deleted == len(mine)
        assert steps[0] == "copy" and "switch" in steps and steps[-1] == "delete"
        assert blog.mapping()[shard] == "db-02"
        assert all(blog.get_post(p.id).database == "db-02" for p in mine)
        assert blog.post_counts()[shard] == len(mine)
    assert set(rows_per_id(tmp_path).values()) == {1}


def test_a_move_refuses_bad_targets_and_a_second_move_at_once(tmp_path):
    with blog_service.BlogService(tmp_path, databases=2) as blog:
        with pytest.raises(blog_service.MoveError, match="already in db-00"):
            blog.move_shard(0, "db-00")
        for bad in ("../escape", "", "x" * 33, "DB", "catalog", None):
            with pytest.raises(ValueError, match="database name"):
                blog.move_shard(0, bad)
        for shard in (-1, 32, "3", True):
            with pytest.raises(ValueError, match="shard"):
                blog.move_shard(shard, "db-05")
        with blog.move_lock(), pytest.raises(blog_service.MoveError, match="another shard move"):
            blog.move_shard(0, "db-05")


def test_a_write_that_races_the_switch_lands_in_the_new_home(tmp_path, monkeypatch):
    # The narrowest race for a writer, forced: another service (another
    # connection, as another process) creates a post on the moving shard just
    # after the switch read the source's last rows. The source's write lock
    # makes it wait, re-read the catalog and write to the new home; without
    # the lock it would land in the source after the last copy and be deleted.
    with (
        blog_service.BlogService(tmp_path, databases=2) as mover,
        blog_service.BlogService(tmp_path) as writer,
    ):
        first = writer.create_post("ada", "before", "")
        source = mover.database(first.database)
        real_rows_after, raced = source.rows_after, []
        racer = threading.Thread(
            target=lambda: raced.append(writer.create_post("ada", "during the switch", ""))
        )

        def rows_after_then_a_write(shard, after_id, limit):
            rows = real_rows_after(shard, after_id, limit)
            if limit == sys.maxsize:  # the switch's read of the source's last rows
                racer.start()
                racer.join(timeout=2)  # blocked on the lock: go on switching
            return rows

        monkeypatch.setattr(source, "rows_after", rows_after_then_a_write)
        mover.move_shard(first.shard, "db-07")
        racer.join(timeout=60)
        [raced] = raced
        assert raced.database == "db-07"
        assert writer.get_post(raced.id).title == "during the switch"
    assert rows_per_id(tmp_path) == {first.id: 1, raced.id: 1}


MOVE_THEN_DIE = """
import os, signal, sys, BlogService
BlogService.MOVE_BATCH = 10  # many batches from a few posts
db_dir, shard, target, die_at = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def progress(step, rows):
    if step == die_at:  # the power cut, right after this step's first batch
        os.kill(os.getpid(), signal.SIGKILL)

with BlogService.BlogService(db_dir) as blog:
    blog.move_shard(shard, target, progress)
"""


@pytest.mark.parametrize("die_at", ["copy", "switch", "delete"])
def test_a_move_killed_midway_loses_nothing_and_is_finished_by_moving_again(tmp_path, die_at):
    with blog_service.BlogService(tmp_path, databases=2) as blog:
        posts = [blog.create_post(a, "t", "") for a in ("mover", "other") * 40]
        shard, home = posts[0].shard, posts[0].database
    mover = subprocess.run(
        [sys.executable, "-c", MOVE_THEN_DIE, str(tmp_path), str(shard), "db-05", die_at],
        cwd=ROOT / "UniqueIdGeneration",
        capture_output=True,
        timeout=60,
    )
    assert mover.returncode == -signal.SIGKILL, mover.stderr
    switched = die_at != "copy"
    with blog_service.BlogService(tmp_path) as blog:
        # Whatever the crash left, readers see every post, once, at one home.
        assert blog.mapping()[shard] == ("db-05" if switched else home)
        assert [blog.get_post(p.id).title for p in posts] == ["t"] * len(posts)
        assert sorted(p.id for p in blog.recent_posts(1000)) == sorted(p.id for p in posts)
        assert sum(blog.post_counts().values()) == len(posts)
        assert max(rows_per_id(tmp_path).values()) == 2, "the crash left a second copy"
        # Asked again, the move finishes: the copy left outside the home is removed.
        report = blog.move_shard(shard, "db-05")
        left = {"copy": {"db-05": 10}, "switch": {home: 40}, "delete": {home: 30}}[die_at]
        assert report.leftovers == left
        assert [blog.get_post(p.id).database for p in posts if p.shard == shard] == ["db-05"] * 40
        with pytest.raises(blog_service.MoveError, match="already in db-05"):
            blog.move_shard(shard, "db-05")
    assert sorted(rows_per_id(tmp_path)) == sorted(p.id for p in posts)
    assert set(rows_per_id(tmp_path).values()) == {1}


def test_a_read_that_races_a_move_follows_the_shard_to_its_new_home(tmp_path, monkeypatch):
    # The narrowest race, forced: the whole move (switch and delete) runs between
    # a reader's look at the map and its query of the old database.
    with (
        blog_service.BlogService(tmp_path, databases=2) as blog,
        blog_service.BlogService(tmp_path) as mover,
    ):
        post = blog.create_post("ada", "t", "b")
        others = [blog.create_post(a, "t", "b") for a in AUTHORS]
        old = blog.database(post.database)
        real_get, real_newest = old.get, old.newest

        def get_after_a_move(post_id):
            monkeypatch.setattr(old, "get", real_get)
            mover.move_shard(post.shard, "db-07")
            return real_get(post_id)

        monkeypatch.setattr(old, "get", get_after_a_move)
        assert blog.get_post(post.id).database == "db-07"

        def newest_after_a_move(shards, limit):
            monkeypatch.setattr(old, "newest", real_newest)
            mover.move_shard(post.shard, post.database)
            return real_newest(shards, limit)

        monkeypatch.setattr(old, "newest", newest_after_a_move)
        recent = blog.recent_posts(1000)
        assert sorted(p.id for p in recent) == sorted(p.id for p in [post, *others])


def test_a_live_move_under_concurrent_writes_and_reads_loses_and_duplicates_nothing(tmp_path):
    """Writers (two services, as two processes would be) keep creating posts on
    the moving shard and others, readers keep fetching every post made so far,
    and the shard moves there and back. Every post is found by id, exactly once."""
    with blog_service.BlogService(tmp_path, databases=2) as setup:
        shard = setup.shard_for_author("mover")
        before = [setup.create_post(a, "before", "") for a in ("mover", "other") * 200]
    writers = [blog_service.BlogService(tmp_path) for _ in range(2)]
    reader_service, mover = blog_service.BlogService(tmp_path), blog_service.BlogService(tmp_path)
    created: list = list(before)
    misses: list[str] = []
    stop = threading.Event()

    def write(blog) -> None:
        n = 0
        while not stop.is_set():
            created.append(blog.create_post(("mover", "other")[n % 2], f"during {n}", ""))
            n += 1

    def read() -> None:
        while not stop.is_set():
            for post in list(created)[-300:]:
                try:
                    found = reader_service.get_post(post.id)
                except blog_service.PostNotFoundError as err:
                    misses.append(str(err))
                    continue
                if (found.author, found.title) != (post.author, post.title):
                    misses.append(f"{post.id} read back as {found}")

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    threads += [threading.Thread(target=read) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(created) > len(before) + 200, what="writes before the move")
        home = before[0].database
        reports = [mover.move_shard(shard, "db-09"), mover.move_shard(shard, home)]
        wait_for(lambda: len(created) > len(before) + 400, what="writes after the move")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        for blog in (*writers, reader_service, mover):
            blog.close()

    assert not misses, misses[:5]
    assert sum(r.copied + r.caught_up for r in reports) > 0
    with blog_service.BlogService(tmp_path) as blog:
        assert blog.mapping()[shard] == before[0].database
        for post in created:
            assert blog.get_post(post.id).title == post.title
    copies = rows_per_id(tmp_path)
    assert sorted(copies) == sorted(p.id for p in created), "every post stored, none extra"
    assert set(copies.values()) == {1}, "no post stored twice"
    moved = [p for p in created if p.shard == shard]
    assert len(moved) > 200 and len({p.id for p in moved}) == len(moved)


# -- the command line ---------------------------------------------------------------


def cli(*args: str):
    return run_script("UniqueIdGeneration/BlogService.py", *args, timeout=30)


def test_cli_creates_gets_and_lists_posts(tmp_path):
    db = ["--db-dir", str(tmp_path), "--databases", "4"]
    made = [
        cli(*db, "create", "--author", a, "--title", f"by {a}", "--body", "hello") for a in "xyz"
    ]
    assert [r.returncode for r in made] == [0, 0, 0]
    post_ids = [int(r.stdout) for r in made]
    got = cli(*db, "get", str(post_ids[1]))
    assert got.returncode == 0
    assert f"{post_ids[1]}  shard {ids.decode(post_ids[1]).worker_id:>2} (db-0" in got.stdout
    assert "y: by y" in got.stdout and "hello" in got.stdout
    recent = cli(*db, "recent", "--limit", "2")
    assert [int(line.split()[0]) for line in recent.stdout.splitlines()] == post_ids[:0:-1]


def test_cli_runs_at_the_same_time_never_collide(tmp_path):
    db = ["--db-dir", str(tmp_path), "--databases", "1"]
    command = [sys.executable, str(ROOT / "UniqueIdGeneration/BlogService.py"), *db, "create"]
    procs = [
        subprocess.Popen(
            [*command, "--author", "ada", "--title", f"t{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    results = [(p.communicate(timeout=60), p.returncode) for p in procs]
    assert [(err, code) for (_, err), code in results] == [("", 0)] * 8
    assert len({int(out) for (out, _), _ in results}) == 8


@pytest.mark.parametrize("make_bad_dir", ["a file", "not a database"])
def test_cli_reports_an_unusable_db_dir_clearly(tmp_path, make_bad_dir):
    if make_bad_dir == "a file":
        db_dir = tmp_path / "posts.txt"
        db_dir.write_text("not a directory")
    else:
        db_dir = tmp_path / "shards"
        db_dir.mkdir()
        (db_dir / "catalog.db").write_bytes(b"not SQLite " * 500)
    result = cli("--db-dir", str(db_dir), "recent")
    assert result.returncode == 1
    assert "error: cannot use the databases" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_an_unknown_id_clearly(tmp_path):
    result = cli("--db-dir", str(tmp_path), "get", "123456789")
    assert result.returncode == 1
    assert "error: no post 123456789" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--databases", "0", "recent"],
        ["--databases", "x", "recent"],
        ["move", "32", "--to", "db-09"],
        ["move", "3", "--to", "../../etc"],
        ["move", "3", "--to", "catalog"],
        ["move", "3"],
        ["get", "abc"],
        ["get", "99999999999999999999"],
        ["recent", "--limit", "99999999999999999999"],  # was an OverflowError traceback
        ["recent", "--limit", "-1"],
        ["recent", "--limit", "9" * 5000],
        [],
    ],
)
def test_cli_bad_arguments_exit_2_with_a_message(tmp_path, args):
    result = cli("--db-dir", str(tmp_path), *args)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()[-1]) < 200, "the error line echoes a bounded text"


@pytest.mark.parametrize(
    "args", [["--ids", "0"], ["--rounds", "99999999999999999999"], ["--rows", "150000"]]
)
def test_bench_refuses_bad_arguments_before_measuring(args):
    result = run_script("UniqueIdGeneration/bench.py", *args, timeout=30)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "Machine:" not in result.stdout


@pytest.mark.parametrize("target", [0.8, 0.95, 3.0])
def test_a_bench_target_line_never_shows_a_miss_as_the_target(target):
    # The bench printed "FAIL  one thread >= 0.8x snowflake-id: 0.80x" for 0.7993.
    id_arguments = load_module("UniqueIdGeneration", "id_arguments")
    for ratio in (target - 0.0007, target - 1e-12, target, target + 0.0004, target * 1.5):
        assert (float(id_arguments.floored(ratio)) >= target) == (ratio >= target), ratio


@pytest.mark.parametrize("script", ["BlogService.py", "break_it.py", "demo.py", "bench.py"])
def test_every_script_has_help(script):
    result = run_script(f"UniqueIdGeneration/{script}", "--help", timeout=30)
    assert result.returncode == 0
    assert "usage:" in result.stdout


# -- break it and the B-tree experiment ------------------------------------------------


def test_a_burst_past_4096_per_ms_duplicates_naively_but_not_with_ours():
    result = break_it.sequence_exhausted(burst=9_000, reads_per_ms=5_000)
    assert result["naive_duplicates"] > 0
    assert result["ours_duplicates"] == 0 and result["ours_in_order"] == 1


def test_a_clock_step_makes_the_naive_generator_go_backwards_and_ours_refuse():
    result = break_it.clock_steps_back(50)
    assert result["naive_went_down"] > 0
    assert str(result["ours"]).startswith("raised ClockMovedBackwardsError")


def test_a_clock_step_within_the_bound_is_waited_out_by_ours():
    result = break_it.clock_steps_back(ids.MAX_BACKWARDS_WAIT_MS)
    assert result["naive_went_down"] > 0
    assert result["ours_went_down"] == 0


def test_a_naive_generator_shared_by_threads_duplicates_and_ours_does_not():
    result = break_it.shared_without_lock(threads=8, per_thread=10_000)
    assert result["naive_duplicates"] > 0
    assert result["ours_duplicates"] == 0


def test_uuid4_values_do_not_sort_in_creation_order():
    result = break_it.sort_order(count=2_000)
    assert result["snowflake"] == 1.0
    assert 0.3 < result["uuid4"] < 0.7


@pytest.mark.parametrize("kind", btree.KINDS)
def test_btree_experiment_stores_every_row_under_its_kind_of_key(tmp_path, kind):
    path = tmp_path / f"{kind}.db"
    result = btree.insert_rows(kind, rows=20_000, db_path=path, batch_rows=10_000)
    assert len(result.batch_seconds) == 2 and result.pages > 0
    with sqlite3.connect(path) as db:
        count, distinct, key_type = db.execute(
            "SELECT count(*), count(DISTINCT id), typeof(min(id)) FROM posts"
        ).fetchone()
    # ...plus the one extra commit that counts pages written at the end.
    assert count == distinct == 20_000 + btree.ROWS_PER_TRANSACTION
    assert key_type == ("text" if kind == "uuid4" else "integer")


def test_random_keys_dirty_far_more_pages_per_commit_than_rising_keys(tmp_path):
    # The mechanism behind the B-tree claim, counted in pages rather than timed.
    results = {
        kind: btree.insert_rows(
            kind, rows=30_000, db_path=tmp_path / f"{kind}.db", batch_rows=10_000
        )
        for kind in btree.KINDS
    }
    rising = results["snowflake"].pages_per_commit
    assert 0 < rising < btree.ROWS_PER_TRANSACTION / 10
    assert results["uuid4"].pages_per_commit > 5 * rising
    assert results["random"].pages_per_commit > 5 * rising


# -- worker ids leased from etcd -------------------------------------------------------

lease_mod = load_module("UniqueIdGeneration", "WorkerIdLease")

TEST_TTL = 2  # etcd 3.4's shortest lease
TEST_MARGIN = 0.5


def new_lease(etcd, **kwargs):
    kwargs = {"ttl": TEST_TTL, "safety_margin": TEST_MARGIN, **kwargs}
    return lease_mod.WorkerIdLease(etcd.url, **kwargs)


@pytest.fixture
def leases(etcd_server):
    """Make leases on the test's etcd; every one is released at teardown."""
    made = []

    def make(**kwargs):
        made.append(new_lease(etcd_server, **kwargs))
        return made[-1]

    yield make
    for lease in made:
        lease.release()


def wait_for(condition, timeout: float = 30.0, what: str = "the condition"):
    """Poll until condition() is truthy (bounded); return what it returned."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.05)
    return value


def test_leases_take_the_lowest_free_ids_and_never_the_same(etcd_server, leases):
    held = [leases().acquire() for _ in range(5)]
    assert held == [0, 1, 2, 3, 4]
    keys = lease_mod.EtcdGateway(etcd_server.url).prefix(lease_mod.PREFIX)
    assert sorted(keys) == [f"{lease_mod.PREFIX}{w:02d}" for w in range(5)]


def test_a_released_id_is_reused_and_the_33rd_lease_fails_clearly(etcd_server, leases):
    held = [leases() for _ in range(32)]
    assert [lease.acquire() for lease in held] == list(range(32))
    with pytest.raises(lease_mod.NoFreeWorkerIdError, match=r"all 32 worker ids \(0-31\)"):
        leases().acquire()
    held[7].release()
    assert leases().acquire() == 7, "the freed id is the lowest free one"


def test_racing_leases_each_get_a_different_id(etcd_server, leases):
    # Eight threads ask at once: the create-if-absent transaction lets one win each id.
    contenders = [leases(worker_ids=range(8)) for _ in range(8)]
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: got.append(c.acquire(timeout=20))) for c in contenders
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(8))


def test_a_generator_built_from_a_lease_mints_with_its_worker_id(leases):
    leases().acquire()
    lease = leases()
    assert lease.acquire() == 1
    generator = ids.IdGenerator(lease=lease)
    minted = [generator.next_id() for _ in range(20_000)]
    assert {ids.decode(i).worker_id for i in minted} == {1}
    assert minted == sorted(set(minted))


def test_a_generator_needs_an_acquired_lease_and_stops_after_release(leases):
    lease = leases()
    with pytest.raises(RuntimeError, match="acquire"):
        ids.IdGenerator(lease=lease)
    lease.acquire()
    generator = ids.IdGenerator(lease=lease)
    generator.next_id()
    lease.release()
    time.sleep(0.002)  # into a new millisecond, where the lease is checked
    with pytest.raises(lease_mod.LeaseReleasedError):
        generator.next_id()


def test_an_id_released_on_exit_reaches_the_next_holder_a_margin_later(leases):
    # A hands its only worker id back while a thread of it is minting; B, on a
    # machine whose wall clock is 0.4 s behind (less than the 0.5 s margin the
    # guarantee allows), takes it at once. Had A's revoke freed the id at once,
    # B's first 0.4 s of ids would carry the timestamps of A's last ones.
    a, b = leases(worker_ids=[0]), leases(worker_ids=[0])
    a.acquire()
    a_generator = ids.IdGenerator(lease=a)
    a_ids: list[int] = []

    def mint_until_released() -> None:
        with contextlib.suppress(lease_mod.LeaseReleasedError):
            while True:
                a_ids.append(a_generator.next_id())

    minter = threading.Thread(target=mint_until_released)
    minter.start()
    wait_for(lambda: len(a_ids) > 1000, what="A minting")
    a.release()
    minter.join(timeout=30)
    assert b.acquire(timeout=10) == 0

    def clock_behind() -> int:
        return time.time_ns() - 400 * NS_PER_MS

    b_generator = ids.IdGenerator(lease=b, clock=clock_behind)
    b_ids = [b_generator.next_id() for _ in range(50_000)]
    assert not set(a_ids) & set(b_ids), "B minted some of A's ids"
    assert max(a_ids) >> ids.TIMESTAMP_SHIFT < min(b_ids) >> ids.TIMESTAMP_SHIFT


def test_a_released_lease_acquires_nothing(etcd_server, leases):
    lease = leases()
    lease.release()
    with pytest.raises(lease_mod.LeaseReleasedError):
        lease.acquire()
    assert lease_mod.EtcdGateway(etcd_server.url).prefix(lease_mod.PREFIX) == {}


def test_the_keeper_publishes_nothing_after_release(leases):
    # A keeper that was mid-renewal or mid-acquisition when release() gave up
    # waiting for it must not hand the released lease a worker id again.
    lease = leases()
    lease.acquire()
    held = lease.holding
    lease.release()
    assert lease.publish(held) is False
    assert lease.valid_worker_id() is None and lease.holding is None


class JumpingClock:
    """The lease's monotonic clock plus a jump: a pause, as the process sees it afterwards."""

    def __init__(self) -> None:
        self.jump_ns = 0

    def __call__(self) -> int:
        return lease_mod.lease_clock_ns() + self.jump_ns


def test_past_its_deadline_a_generator_mints_nothing_until_the_lease_is_renewed(leases):
    clock = JumpingClock()
    lease = leases(clock=clock, reacquire_timeout=0.2)
    lease.acquire()
    generator = ids.IdGenerator(lease=lease)
    before = generator.next_id()
    lease.stopping.set()  # no renewals: the keeper sleeps through the "pause"
    lease.keeper.join()
    clock.jump_ns = TEST_TTL * 10**9  # the deadline (TTL - margin after renewal) has passed
    time.sleep(0.002)
    with pytest.raises(lease_mod.WorkerIdUnavailableError):
        generator.next_id()
    lease.stopping.clear()  # the keeper renews, which moves the deadline ahead again
    lease.keeper = threading.Thread(target=lease.keep, daemon=True)
    lease.keeper.start()
    wait_for(lambda: lease.valid_worker_id() is not None, what="renewal")
    assert generator.next_id() > before


def test_a_renewal_answered_late_counts_from_when_it_was_sent(leases):
    # etcd renews at once, then the holder is frozen before it reads the answer
    # (the keeper thread descheduled, the process stopped). etcd's new TTL ran
    # from the renewal, so the deadline must too: counted from the answer's
    # arrival it would still lie ahead after the lease expired in etcd.
    clock = JumpingClock()
    lease = leases(clock=clock)
    lease.acquire()
    lease.stopping.set()  # renew by hand below
    lease.keeper.join()
    renew_in_etcd = lease.etcd.keepalive

    def renewed_then_frozen(lease_id: int) -> int:
        ttl = renew_in_etcd(lease_id)
        clock.jump_ns += TEST_TTL * 10**9
        return ttl

    lease.etcd.keepalive = renewed_then_frozen
    assert lease.renew(lease.holding), "the lease is still in etcd"
    assert lease.valid_worker_id() is None


def test_a_hold_born_past_its_deadline_is_renewed_at_once(leases):
    # etcd took 1.6 s to answer the acquisition (a busy disk): the hold arrives
    # with its deadline (2 s TTL - 0.5 s margin) already passed. The keeper must
    # renew at once, not a third of a TTL later, and the generator then mints.
    clock = JumpingClock()
    reads = []

    def slow_etcd_clock() -> int:
        reads.append(1)
        if len(reads) == 2:  # everything after the reading taken before the grant
            clock.jump_ns = 1_600_000_000
        return clock()

    lease = leases(clock=slow_etcd_clock, reacquire_timeout=0.4)
    lease.acquire()
    assert lease.valid_worker_id() is None, "born past its deadline"
    generator = ids.IdGenerator(lease=lease)
    assert ids.decode(generator.next_id()).worker_id == 0


def test_a_killed_holders_id_is_taken_over_once_its_lease_expires(etcd_server, leases):
    holder = subprocess.Popen(
        [
            sys.executable, str(ROOT / "UniqueIdGeneration/WorkerIdLease.py"),
            "--etcd", etcd_server.url, "--ttl", str(TEST_TTL), "--worker-ids", "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert "holding worker id 0" in holder.stdout.readline()
        waiting = leases(worker_ids=range(1))
        with pytest.raises(lease_mod.NoFreeWorkerIdError):
            waiting.acquire()
        holder.kill()  # no chance to release: only the TTL frees the id
        # How soon is the bench's to measure (within the TTL + 1 s): a test on
        # a loaded machine asserts only that it happens.
        assert waiting.acquire(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()


def test_an_etcd_outage_stops_minting_and_the_same_id_resumes_after(etcd_server, leases):
    lease = leases(reacquire_timeout=0.2)
    lease.acquire()
    generator = ids.IdGenerator(lease=lease)
    before = generator.next_id()
    etcd_server.kill()
    try:
        wait_for(lambda: lease.valid_worker_id() is None, what="the deadline passing")
        time.sleep(0.002)
        with pytest.raises(lease_mod.WorkerIdUnavailableError, match="unreachable"):
            generator.next_id()
    finally:
        etcd_server.start()
    # etcd keeps leases across a restart (and extends them), so the hold resumes.
    wait_for(lambda: lease.valid_worker_id() is not None, what="renewal after the restart")
    after = generator.next_id()
    assert after > before and ids.decode(after).worker_id == ids.decode(before).worker_id
    assert len(lease.history) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ttl": 1}, "ttl"),
        ({"ttl": 2.5}, "ttl"),
        ({"ttl": 10, "safety_margin": 0}, "safety_margin"),
        ({"ttl": 10, "safety_margin": 7}, "safety_margin"),
        ({"worker_ids": []}, "worker_ids"),
        ({"worker_ids": [31, 32]}, "worker_ids"),
        ({"worker_ids": [1.5]}, "worker_ids"),
        ({"prefix": "/no/slash"}, "prefix"),
    ],
)
def test_lease_settings_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lease_mod.WorkerIdLease("http://127.0.0.1:9", **kwargs)


def test_an_unreachable_etcd_is_a_clear_error():
    lease = lease_mod.WorkerIdLease("http://127.0.0.1:9", ttl=2)
    with pytest.raises(lease_mod.EtcdUnavailableError, match="did not answer"):
        lease.acquire()


@pytest.fixture
def not_etcd():
    """An HTTP server on 127.0.0.1 that answers every request with the JSON body
    set in `.answer`: a wrong port, a proxy, something that is not etcd."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps(server.answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "answer",
    [[], None, "ok", {"ID": "abc", "TTL": 2}, {"ID": "5", "TTL": "2", "kvs": "x"},
     {"ID": "5", "TTL": "2", "kvs": [{"value": "eA=="}]}],
)  # fmt: skip
def test_a_server_that_is_not_etcd_is_a_clear_error(not_etcd, answer):
    not_etcd.answer = answer
    lease = lease_mod.WorkerIdLease(not_etcd.url, ttl=2)
    with pytest.raises(lease_mod.EtcdUnavailableError, match="not etcd's v3 JSON gateway"):
        lease.acquire()
    result = lease_cli("--etcd", not_etcd.url, "--ttl", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def lease_cli(*args: str, timeout: float = 30):
    return run_script("UniqueIdGeneration/WorkerIdLease.py", *args, timeout=timeout)


def test_lease_cli_says_clearly_when_every_id_is_taken(etcd_server, leases):
    leases(worker_ids=range(2)).acquire()
    leases(worker_ids=range(2)).acquire()
    result = lease_cli("--etcd", etcd_server.url, "--worker-ids", "2")
    assert result.returncode == 1
    assert "error: no free worker id: all 2 worker ids (0-1) are held" in result.stderr
    assert "Traceback" not in result.stderr


def test_lease_cli_streams_its_record_and_waits_out_a_clock_step(
    etcd_server, tmp_path, monkeypatch, capsys
):
    # main() in this process, so the generator can be made to meet a clock
    # that stepped back (three refusals); it used to end in a traceback.
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    real_next_id, refusals = ids.IdGenerator.next_id, iter(range(3))

    def next_id(self) -> int:
        if next(refusals, None) is not None:
            raise ids.ClockMovedBackwardsError("clock reads 50 ms earlier than the last id's")
        return real_next_id(self)

    monkeypatch.setattr(ids.IdGenerator, "next_id", next_id)
    record = tmp_path / "record.json"
    argv = ["--etcd", etcd_server.url, "--ttl", "2", "--seconds", "1", "--record", str(record)]
    assert lease_mod.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("clock reads 50 ms earlier") == 1 and "retrying" in out
    saved = json.loads(record.read_text())  # written as minted, not held in memory
    assert f"minted {len(saved['ids']):,} ids in 1 hold(s)" in out
    assert saved["ids"] == sorted(set(saved["ids"])) and len(saved["ids"]) > 100
    assert [hold["worker_id"] for hold in saved["holds"]] == [0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_lease_cli_stopped_while_waiting_exits_cleanly_with_its_record(
    etcd_server, leases, tmp_path, signum
):
    # The chaos test stops its processes at a random moment: one still waiting
    # for an id used to exit 1 with an empty, unreadable --record.
    leases(worker_ids=[0]).acquire()
    record = tmp_path / "record.json"
    waiter = subprocess.Popen(
        [
            sys.executable, str(ROOT / "UniqueIdGeneration/WorkerIdLease.py"),
            "--etcd", etcd_server.url, "--ttl", str(TEST_TTL), "--worker-ids", "1",
            "--wait", "60", "--record", str(record),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert "waiting up to 60 s" in waiter.stdout.readline()
        waiter.send_signal(signum)
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, err
    assert "stopped while waiting for a free worker id" in out
    assert json.loads(record.read_text()) == {"ids": [], "holds": []}


@pytest.mark.parametrize(
    "args",
    [
        ["--etcd", "127.0.0.1:2379"],
        ["--etcd", "http://x", "--ttl", "1"],
        ["--etcd", "http://x", "--ttl", "99999999999999999999"],
        ["--etcd", "http://x", "--margin", "nan"],
        ["--etcd", "http://x", "--worker-ids", "33"],
        ["--etcd", "http://x", "--rate", "0"],
        ["--etcd", "http://x", "--ttl", "10", "--margin", "9"],
        ["--etcd", "http://x", "--record", "/nonexistent/dir/record.json"],
        [],
    ],
)
def test_lease_cli_refuses_bad_arguments(args):
    result = lease_cli(*args)
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_chaos_paused_holders_and_an_etcd_crash_never_give_a_duplicate(etcd_server, tmp_path):
    """8 processes, 4 worker ids: holders are frozen (SIGSTOP) past the TTL and
    thawed while waiters take their ids, and etcd crashes once. Every id minted
    on a worker id must come from its newest holder at that millisecond."""
    rng = random.Random(19)
    etcd = lease_mod.EtcdGateway(etcd_server.url)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "UniqueIdGeneration/WorkerIdLease.py"),
                "--etcd",
                etcd_server.url,
                "--ttl",
                str(TEST_TTL),
                "--margin",
                str(TEST_MARGIN),
                "--worker-ids",
                "4",
                "--wait",
                "120",
                "--rate",
                "1000",
                "--quiet",
                "--record",
                str(tmp_path / f"worker-{n}.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n in range(8)
    ]
    by_pid = {w.pid: w for w in workers}

    def holder_pids() -> list[int]:
        try:
            values = etcd.prefix(lease_mod.PREFIX).values()
        except lease_mod.EtcdUnavailableError:
            return []
        return [int(json.loads(value)["owner"].split()[-1]) for value, _ in values]

    paused = []
    try:
        wait_for(lambda: len(holder_pids()) == 4, what="4 of the 8 workers holding ids")
        for _ in range(3):
            victim = by_pid[rng.choice(wait_for(holder_pids, what="a holder to freeze"))]
            victim.send_signal(signal.SIGSTOP)
            paused.append(victim.pid)
            time.sleep(TEST_TTL + 2)  # its lease expires and a waiter takes the id
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.5)
        etcd_server.kill()
        time.sleep(1)
        etcd_server.start()
        time.sleep(1.5)
    finally:
        for w in workers:
            w.send_signal(signal.SIGCONT)
            w.send_signal(signal.SIGTERM)
        outcomes = [w.communicate(timeout=30) for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, outcomes

    records = {
        w.pid: json.loads((tmp_path / f"worker-{n}.json").read_text())
        for n, w in enumerate(workers)
    }
    every = [i for record in records.values() for i in record["ids"]]
    assert len(every) > 10_000
    assert len(set(every)) == len(every), "duplicate ids"

    # Who held each worker id from when: every hold, from every process.
    holds: dict[int, list[tuple[int, int]]] = {}
    for pid, record in records.items():
        for hold in record["holds"]:
            holds.setdefault(hold["worker_id"], []).append((hold["acquired_wall_ns"], pid))
    for timeline in holds.values():
        timeline.sort()
    takeovers = sum(len({pid for _, pid in timeline}) - 1 for timeline in holds.values())
    assert takeovers >= 1, "no waiter ever took a paused holder's id: the test showed nothing"

    def newest_holder(worker_id: int, at_ms: int) -> int:
        # Ids minted under a hold carry timestamps from after etcd confirmed it.
        started = [pid for ns, pid in holds[worker_id] if ns // NS_PER_MS <= at_ms]
        return started[-1]

    for pid, record in records.items():
        strays = [
            i
            for i in record["ids"]
            if newest_holder(ids.decode(i).worker_id, EPOCH_MS + (i >> ids.TIMESTAMP_SHIFT)) != pid
        ]
        assert not strays, f"pid {pid} (paused: {pid in paused}) minted after losing its id"
