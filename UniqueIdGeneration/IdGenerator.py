"""Snowflake ids: unique, time-ordered 64-bit integers that any worker can mint alone.

The layout is the brief's (README, "The bit layout"); this module makes it safe
under threads, clock steps and bursts of more than 4,096 ids in a millisecond.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

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

    Guarantees: every id is unique for this worker id, and each id is greater
    than the one before it. It never returns None: when the 4,096 sequence
    numbers of a millisecond are used up it waits for the next millisecond, and
    when the clock steps back it waits (small step) or raises (large step).
    """

    __slots__ = ("_clock", "_epoch_ms", "_worker_bits", "_lock", "_ms_start", "_ms_end", "_last_id")

    def __init__(self, worker_id: int, epoch: datetime = EPOCH, clock: Clock = time.time_ns):
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            raise ValueError(f"worker_id must be an int in 0..{MAX_WORKER_ID}, got {worker_id!r}")
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(
                f"worker_id must be in 0..{MAX_WORKER_ID} ({WORKER_ID_BITS} bits), got {worker_id}"
            )
        self._clock = clock
        self._epoch_ms = epoch_ms(epoch)
        now_ms = clock() // NS_PER_MS
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

        # Guards the three fields below: the millisecond of the last id (as a
        # half-open range of clock readings, so the hot path compares instead of
        # dividing) and the last id itself, whose low bits are the sequence.
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
        IdSpaceExhaustedError after IDS_RUN_OUT.
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
                self._ms_start = ms * NS_PER_MS
                self._ms_end = self._ms_start + NS_PER_MS
                self._last_id = last_id

    # -- the slow paths, each taken at most once per millisecond -------------

    def _start_millisecond(self, now: int) -> int:
        ms = now // NS_PER_MS
        timestamp = ms - self._epoch_ms
        if timestamp > MAX_TIMESTAMP:
            raise IdSpaceExhaustedError(
                f"the {TIMESTAMP_BITS}-bit timestamp ran out at {IDS_RUN_OUT.isoformat()}"
            )
        self._ms_start = ms * NS_PER_MS
        self._ms_end = self._ms_start + NS_PER_MS
        return (timestamp << TIMESTAMP_SHIFT) | self._worker_bits  # sequence 0

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
