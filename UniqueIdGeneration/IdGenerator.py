"""Snowflake ids: unique, time-ordered 64-bit integers that any worker can mint alone.

The layout is the brief's (README, "The bit layout"); this module makes it safe
under threads, clock steps and bursts of more than 4,096 ids in a millisecond,
and, given a worker-id lease, against pauses (README, "Worker ids for real").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

# The 64 bits, from the top: 6 unused (always zero), then the three fields.
TIMESTAMP_BITS = 41  # milliseconds since EPOCH: about 69.7 years of ids
WORKER_ID_BITS = 5  # 32 workers that never need to talk to each other
SEQUENCE_BITS = 12  # 4,096 ids per millisecond per worker
UNUSED_BITS = 64 - TIMESTAMP_BITS - WORKER_ID_BITS - SEQUENCE_BITS  # 6

MAX_TIMESTAMP = (1 << TIMESTAMP_BITS) - 1
MAX_WORKER_ID = (1 << WORKER_ID_BITS) - 1  # 31
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1  # 4095
WORKER_ID_SHIFT = SEQUENCE_BITS  # 12
TIMESTAMP_SHIFT = SEQUENCE_BITS + WORKER_ID_BITS  # 17
MAX_ID = (MAX_TIMESTAMP << TIMESTAMP_SHIFT) | (MAX_WORKER_ID << WORKER_ID_SHIFT) | MAX_SEQUENCE

# A custom epoch spends the 41 bits on years we will use, not on 1970-2024.
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
IDS_RUN_OUT = EPOCH + timedelta(milliseconds=MAX_TIMESTAMP + 1)  # 2094-09-07 15:47:35.552 UTC

# A clock that steps back by at most this much (an NTP slew, a VM pause
# settling) is waited out; a bigger step is an operator's problem, not ours.
MAX_BACKWARDS_WAIT_MS = 10

NS_PER_MS = 1_000_000
Clock = Callable[[], int]  # nanoseconds since the Unix epoch, like time.time_ns


class MonotonicClock:
    """Sonyflake's clock: the wall clock read once, then advanced by a monotonic one.

    Its readings never go back, whatever NTP or an operator does to the wall
    clock after start; the price is that they drift from the wall clock by
    every step made since (README, "Two kinds of timestamp").
    """

    def __init__(
        self,
        wall: Callable[[], int] = time.time_ns,
        elapsed: Callable[[], int] = time.monotonic_ns,
    ):
        self.elapsed = elapsed  # IdGenerator calls this one directly on its hot path
        self.offset = wall() - elapsed()

    def __call__(self) -> int:
        return self.elapsed() + self.offset


class Lease(Protocol):
    """What IdGenerator needs from a worker-id lease (WorkerIdLease.py has one)."""

    def valid_worker_id(self) -> int | None:
        """The worker id if the lease is still known to be held at this instant."""

    def wait_until_held(self) -> int:
        """Block until a worker id is held again (or raise); return it."""


class ClockMovedBackwardsError(RuntimeError):
    """The wall clock went back further than MAX_BACKWARDS_WAIT_MS."""


class IdSpaceExhaustedError(RuntimeError):
    """The 41-bit timestamp has run past its last millisecond (see IDS_RUN_OUT)."""


class SnowflakeParts(NamedTuple):
    timestamp: datetime  # UTC, millisecond precision
    worker_id: int
    sequence: int


def epoch_ms(epoch: datetime) -> int:
    """A timezone-aware datetime as milliseconds since the Unix epoch."""
    if not isinstance(epoch, datetime):
        raise ValueError(f"epoch must be a datetime with a timezone, got {epoch!r}")
    if epoch.tzinfo is None:
        raise ValueError(f"epoch {epoch} has no timezone; pass e.g. datetime(..., tzinfo=UTC)")
    return (epoch - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def encode(timestamp_ms: int, worker_id: int, sequence: int) -> int:
    """Pack the three fields into one id (timestamp_ms counts from the custom epoch)."""
    for name, value, limit in (
        ("timestamp_ms", timestamp_ms, MAX_TIMESTAMP),
        ("worker_id", worker_id, MAX_WORKER_ID),
        ("sequence", sequence, MAX_SEQUENCE),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise ValueError(f"{name} must be an int in 0..{limit}, got {value!r}")
    return (timestamp_ms << TIMESTAMP_SHIFT) | (worker_id << WORKER_ID_SHIFT) | sequence


def decode(snowflake_id: int, epoch: datetime = EPOCH) -> SnowflakeParts:
    """Split an id back into when, where and which-in-that-millisecond."""
    if isinstance(snowflake_id, bool) or not isinstance(snowflake_id, int):
        raise ValueError(f"{snowflake_id!r} is not a Snowflake id: ids are ints")
    if not 0 <= snowflake_id <= MAX_ID:
        raise ValueError(
            f"{snowflake_id} is not a Snowflake id: it must be in 0..{MAX_ID} "
            f"(the top {UNUSED_BITS} bits are always zero)"
        )
    timestamp_ms = snowflake_id >> TIMESTAMP_SHIFT
    return SnowflakeParts(
        timestamp=epoch + timedelta(milliseconds=timestamp_ms),
        worker_id=(snowflake_id >> WORKER_ID_SHIFT) & MAX_WORKER_ID,
        sequence=snowflake_id & MAX_SEQUENCE,
    )


class IdGenerator:
    """Mints ids for one worker. Any number of threads may share one generator.

    Guarantees: each id is greater than the one this generator returned before
    it, so no generator repeats itself. It never returns None: when the 4,096
    sequence numbers of a millisecond are used up it waits for the next
    millisecond, and when the clock steps back it waits (small step) or raises
    (large step).

    Ids are unique across generators only while no two of them use the same
    worker id at once. A fixed `worker_id` leaves that to whoever hands them
    out; a `lease` (WorkerIdLease) proves it: the generator then mints an id
    only for a millisecond in which it checked, after reading the clock, that
    its lease's deadline had not passed, and otherwise waits for the lease to
    be re-acquired (possibly as another worker id). That holds two generators
    apart under the lease's assumptions (WorkerIdLease's docstring).

    `clock` gives nanoseconds since the Unix epoch: the wall clock by default,
    or a MonotonicClock, which never steps back.
    """

    __slots__ = (
        "_clock",
        "_clock_offset",
        "_epoch_ms",
        "_lease",
        "_worker_bits",
        "_lock",
        "_ms_start",
        "_ms_end",
        "_last_id",
    )

    def __init__(
        self,
        worker_id: int | None = None,
        epoch: datetime = EPOCH,
        clock: Clock = time.time_ns,
        *,
        lease: Lease | None = None,
    ):
        if (worker_id is None) == (lease is None):
            raise ValueError("give either a worker_id or a lease, not both or neither")
        if lease is not None:
            worker_id = lease.wait_until_held()
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            raise ValueError(f"worker_id must be an int in 0..{MAX_WORKER_ID}, got {worker_id!r}")
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(
                f"worker_id must be in 0..{MAX_WORKER_ID} ({WORKER_ID_BITS} bits), got {worker_id}"
            )
        # A MonotonicClock is read through its monotonic part plus a fixed
        # offset, so its hot path costs no more than the wall clock's.
        if isinstance(clock, MonotonicClock):
            self._clock, self._clock_offset = clock.elapsed, clock.offset
        else:
            self._clock, self._clock_offset = clock, 0
        self._lease = lease
        self._epoch_ms = epoch_ms(epoch)
        now_ms = (self._clock() + self._clock_offset) // NS_PER_MS
        if self._epoch_ms > now_ms:
            raise ValueError(
                f"epoch {epoch.isoformat()} is in the future: ids would have negative timestamps"
            )
        if now_ms - self._epoch_ms > MAX_TIMESTAMP:
            raise ValueError(
                f"epoch {epoch.isoformat()} is too far in the past: its "
                f"{TIMESTAMP_BITS}-bit timestamp has already run out; choose a later epoch"
            )
        self._worker_bits = worker_id << WORKER_ID_SHIFT

        # Guards the fields below: the worker bits (a lease may change them),
        # the millisecond of the last id (as a half-open range of clock
        # readings, so the hot path compares instead of dividing) and the last
        # id itself, whose low bits are the sequence.
        self._lock = threading.Lock()
        self._ms_start = 0
        self._ms_end = 0
        self._last_id = -1

    @property
    def worker_id(self) -> int:
        return self._worker_bits >> WORKER_ID_SHIFT

    @property
    def epoch(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self._epoch_ms)

    def next_id(self) -> int:
        """The next id. Blocks for at most a millisecond when the sequence is used
        up, and up to MAX_BACKWARDS_WAIT_MS when the clock stepped back a little.

        Raises ClockMovedBackwardsError if the clock stepped back further, and
        IdSpaceExhaustedError after IDS_RUN_OUT. With a lease, blocks while the
        lease is being re-acquired, and raises what its wait_until_held() raises
        (WorkerIdUnavailableError, LeaseReleasedError) if that fails.
        """
        # acquire/try/finally rather than `with`: on CPython 3.11 the with
        # statement costs about twice as much, and this lock is most of the cost.
        self._lock.acquire()
        try:
            now = self._clock()
            if now < self._ms_start:
                now = self._wait_for_clock_to_catch_up(now)
            if now < self._ms_end:  # still the millisecond of the last id
                new_id = self._last_id + 1
                if not new_id & MAX_SEQUENCE:  # 4,096 ids used: the +1 carried out
                    # Wait for the next millisecond rather than reuse a sequence number.
                    new_id = self._start_millisecond(self._wait_for_next_millisecond())
            else:
                new_id = self._start_millisecond(now)
            self._last_id = new_id
            return new_id
        finally:
            self._lock.release()

    def decode(self, snowflake_id: int) -> SnowflakeParts:
        """Decode an id with this generator's epoch."""
        return decode(snowflake_id, self.epoch)

    def resume_after(self, last_id: int) -> None:
        """Never issue an id <= last_id (one this worker issued before a restart).

        A restarted process forgets what it issued; if it restarts within the
        same millisecond, or after its clock stepped back, it could mint the same
        ids again. Call this with the largest id already stored.
        """
        parts = decode(last_id)
        if parts.worker_id != self.worker_id:
            raise ValueError(
                f"id {last_id} was made by worker {parts.worker_id}, not {self.worker_id}"
            )
        with self._lock:
            if last_id > self._last_id:
                ms = self._epoch_ms + (last_id >> TIMESTAMP_SHIFT)
                self._ms_start = ms * NS_PER_MS - self._clock_offset
                self._ms_end = self._ms_start + NS_PER_MS
                self._last_id = last_id

    # -- the slow paths, each taken at most once per millisecond -------------

    def _start_millisecond(self, now: int) -> int:
        if self._lease is not None:
            now = self._fence(now)
        ms = (now + self._clock_offset) // NS_PER_MS
        timestamp = ms - self._epoch_ms
        if timestamp > MAX_TIMESTAMP:
            raise IdSpaceExhaustedError(
                f"the {TIMESTAMP_BITS}-bit timestamp ran out at {IDS_RUN_OUT.isoformat()}"
            )
        self._ms_start = ms * NS_PER_MS - self._clock_offset
        self._ms_end = self._ms_start + NS_PER_MS
        return (timestamp << TIMESTAMP_SHIFT) | self._worker_bits  # sequence 0

    def _fence(self, now: int) -> int:
        """With a lease: may this millisecond's ids be minted? Returns the reading to use.

        The lease is checked *after* `now` was read, so a pass proves the lease
        held at an instant inside that millisecond; a pause between the two
        makes the check fail rather than the id wrong. Checking once per
        millisecond instead of once per id keeps the lease off the hot path.
        """
        worker_id = self._lease.valid_worker_id()
        while worker_id is None:  # deadline passed: mint nothing until held again
            self._lease.wait_until_held()
            now = self._clock()  # the old reading predates the new hold
            if now < self._ms_end:
                now = self._wait_for_next_millisecond()
            worker_id = self._lease.valid_worker_id()
        self._worker_bits = worker_id << WORKER_ID_SHIFT
        return now

    def _wait_for_next_millisecond(self) -> int:
        # Spin: the wait is under a millisecond, shorter than a sleep's wake-up.
        now = self._clock()
        while now < self._ms_end:
            if now < self._ms_start:
                now = self._wait_for_clock_to_catch_up(now)
            else:
                now = self._clock()
        return now

    def _wait_for_clock_to_catch_up(self, now: int) -> int:
        """The clock reads earlier than the last id's millisecond: wait or refuse."""
        while now < self._ms_start:
            behind_ms = -(-(self._ms_start - now) // NS_PER_MS)  # rounded up
            if behind_ms > MAX_BACKWARDS_WAIT_MS:
                raise ClockMovedBackwardsError(
                    f"clock reads {behind_ms} ms earlier than the last id's millisecond "
                    f"(more than {MAX_BACKWARDS_WAIT_MS} ms); refusing to risk reusing ids. "
                    f"Fix the clock (is NTP stepping it?) and retry."
                )
            time.sleep(behind_ms / 1000)
            now = self._clock()
        return now
