"""Break it: the ways a Snowflake generator goes wrong, provoked and counted.

Each experiment runs a naive generator (the textbook toy: no lock, trusts the
clock, wraps its sequence) beside ours under the same conditions and counts
the damage. See the README's "Break it" section.

    python UniqueIdGeneration/break_it.py
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

import IdGenerator
from IdGenerator import NS_PER_MS, ClockMovedBackwardsError


class NaiveSnowflake:
    """The toy: same bit layout, none of the care. Do not use."""

    def __init__(self, worker_id: int, clock: IdGenerator.Clock = time.time_ns):
        self.worker_id = worker_id
        self.clock = clock
        self.last_ms = -1
        self.sequence = 0

    def next_id(self) -> int:
        now_ms = self.clock() // NS_PER_MS - IdGenerator.epoch_ms(IdGenerator.EPOCH)
        if now_ms == self.last_ms:
            self.sequence = (self.sequence + 1) & IdGenerator.MAX_SEQUENCE  # wraps to 0
        else:
            self.sequence = 0  # also when the clock went *back*
        self.last_ms = now_ms
        return IdGenerator.encode(now_ms, self.worker_id, self.sequence)


class SteppedClock:
    """The real clock plus an offset that a test can step, as NTP or a VM might."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns

    def step_back(self, ms: float) -> None:
        self.offset_ns -= int(ms * NS_PER_MS)


class SlowClock:
    """A clock that advances 1 ms every `reads_per_ms` reads: a burst far faster
    than 4,096 ids per millisecond, without needing a faster computer."""

    def __init__(self, reads_per_ms: int) -> None:
        self.reads_per_ms = reads_per_ms
        self.reads = 0
        self.start_ns = (time.time_ns() // NS_PER_MS) * NS_PER_MS

    def __call__(self) -> int:
        self.reads += 1
        return self.start_ns + (self.reads // self.reads_per_ms) * NS_PER_MS


def duplicates(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


def shared_worker_id(count: int = 10_000) -> dict[str, int]:
    """Two generators configured with the same worker id, taking turns."""
    a, b = IdGenerator.IdGenerator(7), IdGenerator.IdGenerator(7)
    same = [g.next_id() for _ in range(count) for g in (a, b)]
    c, d = IdGenerator.IdGenerator(7), IdGenerator.IdGenerator(8)
    distinct = [g.next_id() for _ in range(count) for g in (c, d)]
    return {
        "ids": 2 * count,
        "duplicates_same_worker": duplicates(same),
        "duplicates_distinct_workers": duplicates(distinct),
    }


def clock_steps_back(step_ms: float) -> dict[str, object]:
    """Mint a few ids, step the clock back by step_ms, mint again.

    The step comes straight after the last id, so the clock then reads step_ms
    earlier than that id's millisecond (give or take the part of a millisecond
    that passed in between): our generator waits out 10 and refuses 12.
    """
    results: dict[str, object] = {"step_ms": step_ms}
    for name in ("naive", "ours"):
        clock = SteppedClock()
        make = NaiveSnowflake if name == "naive" else IdGenerator.IdGenerator
        generator = make(3, clock=clock)
        before = []
        for _ in range(5):  # one id in each of 5 milliseconds
            time.sleep(0.0011)
            before.append(generator.next_id())
        clock.step_back(step_ms)
        try:
            after = [generator.next_id() for _ in range(5)]
        except ClockMovedBackwardsError as err:
            results[name] = f"raised ClockMovedBackwardsError: {err}"
            continue
        went_down = sum(1 for x in after if x <= before[-1])
        reused = len(set(after) & set(before))
        results[name] = f"{went_down} of 5 ids not above the last one, {reused} reused"
        results[f"{name}_went_down"] = went_down
    return results


def sequence_exhausted(burst: int = 10_000, reads_per_ms: int = 5_000) -> dict[str, int]:
    """More than 4,096 ids requested inside one millisecond of the clock."""
    naive = NaiveSnowflake(1, clock=SlowClock(reads_per_ms))
    naive_ids = [naive.next_id() for _ in range(burst)]
    clock = SlowClock(reads_per_ms)
    ours = IdGenerator.IdGenerator(1, clock=clock)
    reads_before = clock.reads
    our_ids = [ours.next_id() for _ in range(burst)]
    return {
        "burst": burst,
        "naive_duplicates": duplicates(naive_ids),
        "ours_duplicates": duplicates(our_ids),
        "ours_in_order": int(our_ids == sorted(our_ids)),
        "ours_clock_reads_spent_waiting": clock.reads - reads_before - burst,
        "ms_used": len({i >> IdGenerator.TIMESTAMP_SHIFT for i in our_ids}),
    }


def shared_without_lock(threads: int = 8, per_thread: int = 20_000) -> dict[str, int]:
    """One naive generator shared by threads, against one of ours."""
    counts = {}
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a busy server would
    try:
        for name, generator in (
            ("naive", NaiveSnowflake(2)),
            ("ours", IdGenerator.IdGenerator(2)),
        ):
            minted: list[list[int]] = [[] for _ in range(threads)]

            def work(out: list[int], next_id=generator.next_id) -> None:
                for _ in range(per_thread):
                    out.append(next_id())

            workers = [threading.Thread(target=work, args=(out,)) for out in minted]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            counts[f"{name}_duplicates"] = duplicates([i for out in minted for i in out])
    finally:
        sys.setswitchinterval(old_interval)
    counts["ids"] = threads * per_thread
    return counts


def sort_order(count: int = 1_000) -> dict[str, float]:
    """Made one after another: does sorting by value keep creation order?"""

    def in_order_share(values: list) -> float:
        pairs = list(zip(values, values[1:], strict=False))
        return sum(1 for x, y in pairs if x < y) / len(pairs)

    generator = IdGenerator.IdGenerator(4)
    return {
        "uuid4": in_order_share([str(uuid.uuid4()) for _ in range(count)]),
        "snowflake": in_order_share([generator.next_id() for _ in range(count)]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)

    print("1. Two generators share worker id 7 (a copy-pasted config)")
    r = shared_worker_id()
    print(
        f"   {r['ids']:,} ids: {r['duplicates_same_worker']:,} duplicates; "
        f"with worker ids 7 and 8: {r['duplicates_distinct_workers']}"
    )

    print("2. The clock steps back")
    for step in (50, 3):
        r = clock_steps_back(step)
        print(f"   {step} ms back, naive: {r['naive']}")
        print(f"   {step} ms back, ours:  {r['ours']}")

    print("3. A burst of 10,000 ids inside one millisecond of the clock")
    r = sequence_exhausted()
    print(f"   naive: {r['naive_duplicates']:,} duplicates (its sequence wrapped to 0)")
    print(
        f"   ours:  {r['ours_duplicates']} duplicates, waited for {r['ms_used'] - 1} "
        f"new milliseconds ({r['ms_used']} used), all in order: {bool(r['ours_in_order'])}"
    )

    print("4. One generator shared by 8 threads")
    r = shared_without_lock()
    print(
        f"   {r['ids']:,} ids: naive (no lock) {r['naive_duplicates']:,} duplicates, "
        f"ours {r['ours_duplicates']}"
    )

    print("5. Sort by value, compare with creation order (1,000 ids)")
    r = sort_order()
    print(f"   uuid4: {r['uuid4']:.0%} of neighbours in order; snowflake: {r['snowflake']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
