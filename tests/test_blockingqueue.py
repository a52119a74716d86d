"""BlockingQueue: the whole queue.Queue contract, checked against queue.Queue itself,
shutdown in both modes, stress with exact counting, and the folder's scripts.

Most tests take an `impl` and run twice: once on queue.Queue and once on
BlockingQueue. A test that passes on both describes queue.Queue's behaviour
and shows that BlockingQueue has it too: that is what "drop-in" means here.
No test asserts on speed; a test that waits for a thread to block polls the
condition's list of sleepers (bounded) instead of sleeping and hoping.
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import types
import unittest
from collections import deque
from dataclasses import dataclass

import pytest
from conftest import ROOT, load_module, run_script
from hypothesis import given, settings
from hypothesis import strategies as st

bq = load_module("BlockingQueue", "BlockingQueue")
pipeline = load_module("BlockingQueue", "producer_consumer")
stress = load_module("BlockingQueue", "queue_stress")
textbook = load_module("BlockingQueue", "textbook_queue")
executors = load_module("BlockingQueue", "bounded_executor")

BOUND = 10.0  # seconds any single wait in a test may take before the test fails
HAS_SHUTDOWN = hasattr(queue.Queue, "shutdown")  # Python 3.13+


@dataclass
class Impl:
    name: str
    cls: type
    shutdown_error: type[BaseException] | None
    clock_module: types.ModuleType  # where the implementation looks up its monotonic clock
    clock_name: str

    def __call__(self, maxsize: int = 0):
        return self.cls(maxsize)


STDLIB = Impl(
    "queue.Queue",
    queue.Queue,
    getattr(queue, "ShutDown", None),
    queue,
    "time",  # queue.py: `from time import monotonic as time`
)
OURS = Impl("BlockingQueue", bq.BlockingQueue, bq.ShutDown, bq, "monotonic")


@pytest.fixture(params=[STDLIB, OURS], ids=lambda impl: impl.name)
def impl(request) -> Impl:
    return request.param


@pytest.fixture(params=[STDLIB, OURS] if HAS_SHUTDOWN else [OURS], ids=lambda impl: impl.name)
def shutdown_impl(request) -> Impl:
    """Implementations that have shutdown(): BlockingQueue, and queue.Queue from Python 3.13."""
    return request.param


class Worker(threading.Thread):
    """Runs one call in a thread and keeps its result or the exception it raised."""

    def __init__(self, call, *args, **kwargs) -> None:
        super().__init__(daemon=True)
        self.call, self.args, self.kwargs = call, args, kwargs
        self.result = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.call(*self.args, **self.kwargs)
        except BaseException as error:  # noqa: BLE001 - kept for the test to inspect
            self.error = error

    def finish(self) -> Worker:
        """Wait (bounded) for the call to return; fail the test if it is still blocked."""
        self.join(BOUND)
        assert not self.is_alive(), f"{self.call.__name__} is still blocked after {BOUND} s"
        return self


def sleepers(condition: threading.Condition) -> int:
    """Threads asleep in condition.wait() and not yet notified (threading.Condition internals)."""
    return len(condition._waiters)


def assert_nobody_counted_waiting(q) -> None:
    """BlockingQueue's own bookkeeping: with no thread inside a call, every count is back to 0."""
    counts = (q.getters_waiting, q.getters_woken, q.putters_waiting, q.putters_woken)
    assert counts + (q.joiners_waiting,) == (0, 0, 0, 0, 0)


def wait_for_sleepers(condition: threading.Condition, count: int) -> None:
    """Wait until `count` threads are asleep on `condition`: they are really blocked."""
    deadline = time.monotonic() + BOUND
    while sleepers(condition) < count:
        assert time.monotonic() < deadline, f"fewer than {count} threads ever blocked"
        time.sleep(0.001)


# -- construction, size and order ---------------------------------------------


def test_it_is_built_on_a_lock_and_conditions_not_on_another_queue():
    q = bq.BlockingQueue(3)
    assert type(q.mutex) is type(threading.Lock())
    for condition in (q.not_empty, q.not_full, q.all_tasks_done):
        assert isinstance(condition, threading.Condition)
    assert not isinstance(q, queue.Queue)
    assert type(q.queue) is deque


def test_it_raises_the_queue_modules_own_exceptions():
    assert bq.Full is queue.Full
    assert bq.Empty is queue.Empty
    if HAS_SHUTDOWN:
        assert bq.ShutDown is queue.ShutDown


def test_maxsize_is_kept_as_given(impl):
    for maxsize in (-3, 0, 1, 64):
        assert impl(maxsize).maxsize == maxsize
    assert impl().maxsize == 0


@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_zero_or_less_means_unbounded(impl, maxsize):
    q = impl(maxsize)
    for n in range(10_000):
        q.put_nowait(n)
    assert q.qsize() == 10_000
    assert not q.full()
    q.put(10_000, timeout=-1)  # an unbounded queue never waits, so never checks the timeout


def test_items_come_out_in_the_order_they_went_in(impl):
    q = impl(100)
    items = [random.random() for _ in range(100)]
    for item in items:
        q.put(item)
    assert [q.get() for _ in items] == items


def test_qsize_empty_and_full_follow_the_contents(impl):
    q = impl(2)
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
    q.put("a")
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)
    q.put("b")
    assert (q.qsize(), q.empty(), q.full()) == (2, False, True)
    q.get()
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)


def test_none_and_falsy_items_are_items(impl):
    q = impl(3)
    for item in (None, 0, ""):
        q.put(item)
    assert [q.get_nowait() for _ in range(3)] == [None, 0, ""]


def test_the_class_can_be_subscripted_in_type_hints(impl):
    assert impl.cls[int].__origin__ is impl.cls


# -- non-blocking calls -------------------------------------------------------


def test_put_nowait_on_a_full_queue_raises_full_and_adds_nothing(impl):
    q = impl(1)
    q.put_nowait("a")
    with pytest.raises(queue.Full):
        q.put_nowait("b")
    with pytest.raises(queue.Full):
        q.put("b", block=False, timeout=-5)  # block=False ignores the timeout
    assert q.qsize() == 1 and q.get() == "a"


def test_get_nowait_on_an_empty_queue_raises_empty(impl):
    q = impl(1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False, timeout=-5)


# -- blocking and timeouts ----------------------------------------------------


def test_put_on_a_full_queue_blocks_until_a_get_makes_room(impl):
    q = impl(1)
    q.put("first")
    putter = Worker(q.put, "second")
    wait_for_sleepers(q.not_full, 1)
    assert q.qsize() == 1  # still blocked, nothing added
    assert q.get() == "first"
    putter.finish()
    assert putter.error is None
    assert q.get_nowait() == "second"


def test_get_on_an_empty_queue_blocks_until_a_put(impl):
    q = impl(1)
    getter = Worker(q.get)
    wait_for_sleepers(q.not_empty, 1)
    q.put("item")
    assert getter.finish().result == "item"


def test_every_blocked_getter_gets_one_item(impl):
    q = impl(0)
    getters = [Worker(q.get) for _ in range(8)]
    wait_for_sleepers(q.not_empty, 8)
    for n in range(8):
        q.put(n)
    assert sorted(g.finish().result for g in getters) == list(range(8))


def test_a_burst_of_gets_wakes_one_putter_per_slot_it_frees(impl):
    q = impl(8)
    for n in range(8):
        q.put(n)
    putters = [Worker(q.put, n) for n in range(8, 16)]
    wait_for_sleepers(q.not_full, 8)
    assert [q.get_nowait() for _ in range(8)] == list(range(8))  # then no more gets
    for putter in putters:
        assert putter.finish().error is None  # each was woken for its slot
    assert sorted(q.get_nowait() for _ in range(8)) == list(range(8, 16))


def test_every_blocked_putter_gets_its_slot(impl):
    q = impl(1)
    q.put(-1)
    putters = [Worker(q.put, n) for n in range(8)]
    wait_for_sleepers(q.not_full, 8)
    got = [q.get(timeout=BOUND) for _ in range(9)]
    for putter in putters:
        assert putter.finish().error is None
    assert sorted(got) == list(range(-1, 8))


@pytest.mark.parametrize("timeout", [0.0, 0.05, 0.2])
def test_get_timeout_raises_empty_after_the_timeout_not_before(impl, timeout):
    q = impl(1)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=timeout)
    assert time.monotonic() - started >= timeout


@pytest.mark.parametrize("timeout", [0.0, 0.05, 0.2])
def test_put_timeout_raises_full_after_the_timeout_not_before(impl, timeout):
    q = impl(1)
    q.put("a")
    started = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("b", timeout=timeout)
    assert time.monotonic() - started >= timeout
    assert q.qsize() == 1


def test_a_timed_get_returns_an_item_that_arrives_in_time(impl):
    q = impl(1)
    getter = Worker(q.get, timeout=BOUND)
    wait_for_sleepers(q.not_empty, 1)
    q.put("in time")
    assert getter.finish().result == "in time"


def test_a_timed_put_succeeds_when_room_appears_in_time(impl):
    q = impl(1)
    q.put("a")
    putter = Worker(q.put, "b", timeout=BOUND)
    wait_for_sleepers(q.not_full, 1)
    assert q.get() == "a"
    assert putter.finish().error is None
    assert q.get_nowait() == "b"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("side", ["get", "put"])
def test_wake_ups_without_progress_do_not_restart_the_timeout(impl, side, monkeypatch):
    """One deadline per call: three wake-ups 8 s apart end a 20 s timeout.

    Each wake-up finds nothing to do (no item, no room), as a spurious wake-up
    or a lost race would. An implementation that waited `timeout` afresh after
    each one would still be asleep at the end, and finish() would fail.
    """
    clock = FakeClock()
    monkeypatch.setattr(impl.clock_module, impl.clock_name, clock)
    q = impl(1)
    if side == "get":
        condition, worker, expected = q.not_empty, Worker(q.get, timeout=20.0), queue.Empty
    else:
        q.put("filler")
        condition, worker, expected = q.not_full, Worker(q.put, "x", timeout=20.0), queue.Full
    for _ in range(3):
        wait_for_sleepers(condition, 1)
        clock.now += 8.0
        with condition:
            condition.notify_all()  # wake it with nothing changed
    assert isinstance(worker.finish().error, expected)


@pytest.mark.parametrize("call", ["get", "put"])
def test_a_negative_timeout_is_a_value_error(impl, call):
    q = impl(1)
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
        if call == "get":
            q.get(timeout=-1)
        else:
            q.put("x", timeout=-1)
    q.put("item")
    with pytest.raises(ValueError):  # even when an item is there to take
        q.get(timeout=-0.5)


@pytest.mark.parametrize("call", ["get", "put", "get with an item there"])
def test_a_nan_timeout_is_a_value_error_not_a_busy_loop(call):
    # queue.Queue spins a core forever here: nan compares false to 0, so the
    # "time left" check never fires and Condition.wait(nan) returns at once.
    q = bq.BlockingQueue(1)
    if call == "get":
        worker = Worker(q.get, timeout=float("nan"))
    elif call == "put":
        q.put("filler")
        worker = Worker(q.put, "x", timeout=float("nan"))
    else:
        q.put("item")
        worker = Worker(q.get, timeout=float("nan"))
    assert isinstance(worker.finish().error, ValueError)
    assert_nobody_counted_waiting(q)


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
@pytest.mark.parametrize("side", ["get", "put"])
def test_an_endless_timeout_waits_like_none(side, timeout):
    # queue.Queue raises OverflowError here: the lock cannot wait that long.
    q = bq.BlockingQueue(1)
    if side == "get":
        worker = Worker(q.get, timeout=timeout)
        wait_for_sleepers(q.not_empty, 1)
        q.put("item")
        assert worker.finish().result == "item"
    else:
        q.put("filler")
        worker = Worker(q.put, "x", timeout=timeout)
        wait_for_sleepers(q.not_full, 1)
        assert q.get() == "filler"
        assert worker.finish().error is None and q.get_nowait() == "x"


# -- task_done and join -------------------------------------------------------


def test_join_returns_at_once_when_nothing_is_unfinished(impl):
    q = impl(3)
    Worker(q.join).finish()
    q.put(1)
    q.get()
    q.task_done()
    Worker(q.join).finish()


def test_join_waits_until_every_item_is_marked_done(impl):
    q = impl(5)
    for n in range(3):
        q.put(n)
    joiners = [Worker(q.join) for _ in range(2)]
    wait_for_sleepers(q.all_tasks_done, 2)
    for _ in range(3):
        q.get()
    q.task_done()
    q.task_done()
    assert all(j.is_alive() for j in joiners)  # one item still unfinished
    assert sleepers(q.all_tasks_done) == 2
    q.task_done()
    for joiner in joiners:
        joiner.finish()
    assert q.unfinished_tasks == 0


def test_taking_an_item_is_not_finishing_it(impl):
    q = impl(1)
    q.put("job")
    q.get()
    joiner = Worker(q.join)
    wait_for_sleepers(q.all_tasks_done, 1)  # empty queue, but the job is not done
    q.task_done()
    joiner.finish()


def test_too_many_task_done_calls_are_a_value_error(impl):
    q = impl(2)
    with pytest.raises(ValueError, match="task_done\\(\\) called too many times"):
        q.task_done()
    q.put(1)
    q.get()
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    assert q.unfinished_tasks == 0


# -- shutdown (Python 3.13 semantics) -----------------------------------------


def test_put_after_shutdown_raises_shutdown(shutdown_impl):
    q = shutdown_impl(2)
    q.shutdown()
    for call in (lambda: q.put(1), lambda: q.put_nowait(1), lambda: q.put(1, timeout=0.1)):
        with pytest.raises(shutdown_impl.shutdown_error):
            call()
    assert q.qsize() == 0


def test_get_after_shutdown_drains_what_is_left_then_raises(shutdown_impl):
    q = shutdown_impl(5)
    for n in range(3):
        q.put(n)
    q.shutdown()
    assert [q.get(), q.get_nowait(), q.get(timeout=1)] == [0, 1, 2]
    for call in (q.get, q.get_nowait, lambda: q.get(timeout=1), lambda: q.get(timeout=-1)):
        with pytest.raises(shutdown_impl.shutdown_error):
            call()


@pytest.mark.parametrize("immediate", [False, True], ids=["plain", "immediate"])
def test_shutdown_releases_every_blocked_getter(shutdown_impl, immediate):
    q = shutdown_impl(2)
    getters = [Worker(q.get) for _ in range(4)] + [Worker(q.get, timeout=BOUND)]
    wait_for_sleepers(q.not_empty, 5)
    q.shutdown(immediate=immediate)
    for getter in getters:
        assert isinstance(getter.finish().error, shutdown_impl.shutdown_error)


@pytest.mark.parametrize("immediate", [False, True], ids=["plain", "immediate"])
def test_shutdown_releases_every_blocked_putter_without_adding_its_item(shutdown_impl, immediate):
    q = shutdown_impl(1)
    q.put("kept")
    putters = [Worker(q.put, n) for n in range(4)] + [Worker(q.put, 9, timeout=BOUND)]
    wait_for_sleepers(q.not_full, 5)
    q.shutdown(immediate=immediate)
    for putter in putters:
        assert isinstance(putter.finish().error, shutdown_impl.shutdown_error)
    if not immediate:  # immediate=True discarded "kept" as well
        assert q.get_nowait() == "kept"
    with pytest.raises(shutdown_impl.shutdown_error):
        q.get_nowait()


def test_blocked_getters_take_what_is_left_before_shutdown_reaches_them(shutdown_impl):
    q = shutdown_impl(0)
    getters = [Worker(q.get) for _ in range(4)]
    wait_for_sleepers(q.not_empty, 4)
    q.put("a")
    q.put("b")
    q.shutdown()
    for getter in getters:
        getter.finish()
    assert sorted(g.result for g in getters if g.error is None) == ["a", "b"]
    assert sum(isinstance(g.error, shutdown_impl.shutdown_error) for g in getters) == 2


def test_immediate_shutdown_discards_the_items_and_wakes_everyone(shutdown_impl):
    q = shutdown_impl(2)
    q.put(1)
    q.put(2)
    putter = Worker(q.put, 3)
    wait_for_sleepers(q.not_full, 1)
    q.shutdown(immediate=True)
    assert isinstance(putter.finish().error, shutdown_impl.shutdown_error)
    assert q.qsize() == 0 and q.empty()
    with pytest.raises(shutdown_impl.shutdown_error):
        q.get_nowait()
    assert q.unfinished_tasks == 0  # the discarded items count as done
    Worker(q.join).finish()


def test_immediate_shutdown_releases_join_only_for_the_items_it_discards(shutdown_impl):
    q = shutdown_impl(0)
    for n in range(3):
        q.put(n)
    q.get()  # taken by a consumer, still being worked on
    joiner = Worker(q.join)
    wait_for_sleepers(q.all_tasks_done, 1)
    q.shutdown(immediate=True)  # discards 2 of the 3 unfinished
    assert q.unfinished_tasks == 1
    wait_for_sleepers(q.all_tasks_done, 1)  # woken, re-checked, asleep again
    q.task_done()  # the consumer finishes its item
    joiner.finish()
    with pytest.raises(ValueError):
        q.task_done()


def test_immediate_shutdown_after_a_plain_one_discards_the_rest(shutdown_impl):
    q = shutdown_impl(0)
    for n in range(3):
        q.put(n)
    q.shutdown()
    assert q.get() == 0
    q.shutdown()  # again: harmless
    q.shutdown(immediate=True)
    with pytest.raises(shutdown_impl.shutdown_error):
        q.get_nowait()
    assert q.is_shutdown


# -- batches: put_many() and get_many() ---------------------------------------


def test_put_many_adds_everything_in_order_and_counts_each_as_a_task():
    q = bq.BlockingQueue(0)
    assert q.put_many(range(5)) == 5
    assert q.put_many([]) == 0
    assert list(q.queue) == [0, 1, 2, 3, 4] and q.unfinished_tasks == 5


def test_put_many_larger_than_maxsize_flows_through_as_room_appears():
    q = bq.BlockingQueue(4)
    putter = Worker(q.put_many, range(100))
    got = [q.get(timeout=BOUND) for _ in range(100)]
    assert putter.finish().result == 100
    assert got == list(range(100))
    assert_nobody_counted_waiting(q)


def test_put_many_without_blocking_adds_what_fits_and_says_how_many():
    q = bq.BlockingQueue(4)
    q.put("first")
    assert q.put_many("abcdef", block=False) == 3  # a, b, c; d, e, f are the caller's
    assert list(q.queue) == ["first", "a", "b", "c"]
    with pytest.raises(queue.Full):  # not even one fits: raise, as put_nowait() does
        q.put_many("xyz", block=False)


def test_put_many_timeout_is_one_deadline_for_the_whole_batch():
    q = bq.BlockingQueue(4)
    q.put_many("ab")
    started = time.monotonic()
    assert q.put_many("cdefg", timeout=0.1) == 2  # c and d went in, then it timed out
    assert time.monotonic() - started >= 0.1
    with pytest.raises(queue.Full):
        q.put_many("x", timeout=0.05)
    assert list(q.queue) == list("abcd")


def test_put_many_stopped_by_shutdown_part_way_returns_what_it_added():
    q = bq.BlockingQueue(2)
    putter = Worker(q.put_many, range(5))
    wait_for_sleepers(q.not_full, 1)  # 0 and 1 are in, it waits for room
    assert q.get() == 0
    wait_for_sleepers(q.not_full, 1)  # 2 went in, full again
    q.shutdown()
    assert putter.finish().result == 3  # 0, 1 and 2: the rest were never added
    with pytest.raises(bq.ShutDown):
        q.put_many([9])
    assert [q.get(), q.get()] == [1, 2]
    assert_nobody_counted_waiting(q)


def test_put_many_wakes_one_sleeping_getter_per_item():
    q = bq.BlockingQueue(0)
    getters = [Worker(q.get) for _ in range(8)]
    wait_for_sleepers(q.not_empty, 8)
    q.put_many(range(8))  # a single notify() would leave seven asleep beside items
    assert sorted(g.finish().result for g in getters) == list(range(8))
    assert_nobody_counted_waiting(q)


def test_put_many_reads_its_items_before_taking_the_lock():
    q = bq.BlockingQueue(4)
    # This generator calls back into the queue: iterated under the (non-re-entrant)
    # lock, it would deadlock.
    assert Worker(q.put_many, (q.qsize() for _ in range(3))).finish().result == 3
    assert list(q.queue) == [0, 0, 0]


def test_get_many_takes_what_is_there_up_to_max_items_without_waiting_for_more():
    q = bq.BlockingQueue(0)
    q.put_many(range(5))
    assert q.get_many(3) == [0, 1, 2]
    assert q.get_many(10, timeout=BOUND) == [3, 4]  # a short batch, at once
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)


def test_get_many_waits_for_the_first_item_as_get_does():
    q = bq.BlockingQueue(0)
    getter = Worker(q.get_many, 10)
    wait_for_sleepers(q.not_empty, 1)
    q.put_many("abc")
    assert getter.finish().result == ["a", "b", "c"]
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.1)
    assert time.monotonic() - started >= 0.1


def test_get_many_frees_a_slot_for_each_sleeping_putter():
    q = bq.BlockingQueue(8)
    q.put_many(range(8))
    putters = [Worker(q.put, n) for n in range(8, 16)]
    wait_for_sleepers(q.not_full, 8)
    assert q.get_many(8) == list(range(8))
    for putter in putters:
        assert putter.finish().error is None
    assert sorted(q.get_many(8)) == list(range(8, 16))
    assert_nobody_counted_waiting(q)


def test_get_many_after_shutdown_drains_then_raises():
    q = bq.BlockingQueue(0)
    q.put_many("abc")
    q.shutdown()
    assert q.get_many(2) == ["a", "b"]
    assert q.get_many(2) == ["c"]
    with pytest.raises(bq.ShutDown):
        q.get_many(2)
    getter_q = bq.BlockingQueue(1)
    getter = Worker(getter_q.get_many, 4)
    wait_for_sleepers(getter_q.not_empty, 1)
    getter_q.shutdown()
    assert isinstance(getter.finish().error, bq.ShutDown)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_get_many_refuses_a_batch_size_that_is_not_a_whole_number_from_one(bad, error):
    q = bq.BlockingQueue(0)
    q.put("item")
    with pytest.raises(error):
        q.get_many(bad)
    assert q.get_nowait() == "item"  # nothing taken


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_batches_refuse_a_negative_or_nan_timeout(timeout):
    q = bq.BlockingQueue(2)
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
        q.put_many("a", timeout=timeout)
    q.put("a")
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
        q.get_many(1, timeout=timeout)


BATCH_OPERATIONS = st.one_of(
    st.tuples(st.just("put_many"), st.lists(st.integers(0, 9), max_size=6)),
    st.tuples(st.just("get_many"), st.integers(1, 6)),
    st.tuples(st.just("shutdown"), st.none()),
)


def as_single_calls(model: queue.Queue, shut_down: bool, op: tuple) -> tuple:
    """What a non-blocking batch call must do, worked out with put_nowait/get_nowait."""
    name, arg = op
    if name == "put_many":
        if shut_down:
            return ("raised", "ShutDown")
        added = 0
        for item in arg:
            try:
                model.put_nowait(item)
            except queue.Full:
                break
            added += 1
        return ("raised", "Full") if arg and not added else ("returned", added)
    taken = []
    while len(taken) < arg:
        try:
            taken.append(model.get_nowait())
        except queue.Empty:
            break
    if not taken:
        return ("raised", "ShutDown" if shut_down else "Empty")
    return ("returned", taken)


@settings(max_examples=300, deadline=None)
@given(maxsize=st.integers(0, 5), operations=st.lists(BATCH_OPERATIONS, max_size=30))
def test_a_batch_call_does_what_the_same_single_calls_would(maxsize, operations):
    """put_many(block=False) is put_nowait until Full; get_many(block=False) is
    get_nowait until Empty; each raises only if it could do nothing at all."""
    ours, model = bq.BlockingQueue(maxsize), queue.Queue(maxsize)
    shut_down = False
    for op in operations:
        if op[0] == "shutdown":
            ours.shutdown()
            shut_down = True
            continue
        try:
            got = ("returned", getattr(ours, op[0])(op[1], block=False))
        except (queue.Full, queue.Empty, bq.ShutDown) as error:
            got = ("raised", type(error).__name__)
        assert got == as_single_calls(model, shut_down, op), op
        assert list(ours.queue) == list(model.queue)


# -- the same answers as queue.Queue, call for call ---------------------------

OPERATIONS = st.one_of(
    st.tuples(st.just("put_nowait"), st.integers(0, 9)),
    st.tuples(st.just("put"), st.integers(0, 9), st.sampled_from([0.0, -1.0])),
    st.tuples(st.just("get_nowait")),
    st.tuples(st.just("get"), st.sampled_from([0.0, -1.0])),
    st.tuples(st.just("task_done")),
    st.tuples(st.just("observe")),
    *([st.tuples(st.just("shutdown"), st.booleans())] if HAS_SHUTDOWN else []),
)


def outcome(q, op: tuple) -> tuple:
    """What an operation returned or raised, in a form two implementations can share."""
    name, *args = op
    try:
        if name == "put":
            result = q.put(args[0], timeout=args[1])
        elif name == "get":
            result = q.get(timeout=args[0])
        elif name == "observe":
            result = (q.qsize(), q.empty(), q.full(), q.unfinished_tasks, list(q.queue))
        elif name == "shutdown":
            result = q.shutdown(immediate=args[0])
        else:
            result = getattr(q, name)(*args)
        return ("returned", result)
    except Exception as error:  # the comparison is the test
        return ("raised", type(error).__name__, str(error))


@settings(max_examples=300, deadline=None)
@given(maxsize=st.integers(-1, 4), operations=st.lists(OPERATIONS, max_size=40))
def test_every_call_answers_as_queue_queue_does(maxsize, operations):
    """Random sequences of calls that never block: the same result or the same exception."""
    ours, theirs = bq.BlockingQueue(maxsize), queue.Queue(maxsize)
    for op in operations:
        assert outcome(ours, op) == outcome(theirs, op), op


def test_cpythons_own_queue_tests_pass_against_blockingqueue():
    """Lib/test/test_queue.py of the running Python (3.13's adds the shutdown tests):
    the Queue tests, the SimpleQueue tests that apply, and the failing-queue test."""
    cpython = pytest.importorskip("test.test_queue", reason="this Python has no test package")

    class Queue(bq.BlockingQueue):  # basic_queue_test finds the expected order by class name
        pass

    class FailingDeque(deque):
        """Storage that raises once when told to, where queue.Queue's _put/_get would."""

        fail_next_put = fail_next_get = False

        def append(self, item) -> None:
            if self.fail_next_put:
                self.fail_next_put = False
                raise cpython.FailingQueueException("append")
            super().append(item)

        def popleft(self):
            if self.fail_next_get:
                self.fail_next_get = False
                raise cpython.FailingQueueException("popleft")
            return super().popleft()

    class FailingQueue(Queue):  # CPython's overrides _put/_get; ours has no hooks
        def __init__(self, maxsize: int) -> None:
            super().__init__(maxsize)
            self.queue = FailingDeque()

        fail_next_put = property(
            lambda self: self.queue.fail_next_put,
            lambda self, flag: setattr(self.queue, "fail_next_put", flag),
        )
        fail_next_get = property(
            lambda self: self.queue.fail_next_get,
            lambda self, flag: setattr(self.queue, "fail_next_get", flag),
        )

    names = types.SimpleNamespace(
        Queue=Queue, Full=queue.Full, Empty=queue.Empty, ShutDown=bq.ShutDown
    )

    class QueueTests(cpython.BaseQueueTestMixin, unittest.TestCase):
        queue = names

        def setUp(self) -> None:
            self.type2test = Queue
            super().setUp()

    class SimpleQueueTests(cpython.BaseSimpleQueueTest, unittest.TestCase):
        queue = names

        def setUp(self) -> None:
            self.type2test = Queue
            super().setUp()

    class FailingQueueTests(cpython.FailingQueueTest, unittest.TestCase):
        queue = names

        def setUp(self) -> None:
            super().setUp()
            self.FailingQueue = FailingQueue

    load = unittest.defaultTestLoader.loadTestsFromTestCase
    suite = unittest.TestSuite(load(c) for c in (QueueTests, SimpleQueueTests, FailingQueueTests))
    report = io.StringIO()
    result = unittest.TextTestRunner(stream=report).run(suite)
    assert result.wasSuccessful(), report.getvalue()
    assert result.testsRun >= 14  # 14 in Python 3.11's file, 32 in 3.13's


# -- stress: many threads, every item counted ---------------------------------


# The queue's storage, made to report on itself from inside the queue's lock:
# both BlockingQueue and queue.Queue call append() and popleft() on `self.queue`
# only while holding the mutex, so it records the exact order items entered and
# left, and the deepest the queue ever was.
WatchedDeque = stress.WatchedDeque


STRESS_ITEMS = 100_000
STRESS_PRODUCERS = 8
STRESS_CONSUMERS = 8
STRESS_MAXSIZE = 16


def run_stress(
    q, producers: int, consumers: int, items: int, timed: bool, batched: bool = False
) -> list[list]:
    """Producers put (producer, sequence) pairs; consumers get until a stop marker.

    With `timed`, half the producers and half the consumers use a short
    timeout and retry on Full/Empty, so timed and untimed waits race on the
    same conditions and on the queue's count of wake-ups in flight. With
    `batched`, they use put_many() and get_many() with random batch sizes up
    to twice maxsize, so batches are split, partial, and cut by timeouts.
    The run ends quietly, where a lost wake-up shows (see below). Returns
    what each consumer got.
    """
    per_producer = items // producers
    received: list[list] = [[] for _ in range(consumers)]
    errors: list[BaseException] = []
    wait = {"timeout": 0.001}

    def put(me: int, chunk: list, rng: random.Random) -> int:
        """Put some of `chunk` (at least its first item, unless timed); return how many."""
        timing = wait if timed and not me % 2 else {}  # with `timed`, half still block
        try:
            if batched:
                return q.put_many(chunk[: rng.randint(1, 2 * q.maxsize)], **timing)
            q.put(chunk[0], **timing)
            return 1
        except queue.Full:
            return 0

    def produce(me: int) -> None:
        rng = random.Random(me)
        mine = [(me, sequence) for sequence in range(per_producer)]
        done = 0
        try:
            while done < len(mine):
                done += put(me, mine[done:], rng)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    def take(me: int, rng: random.Random) -> list:
        timing = wait if timed and me % 2 else {}
        try:
            if batched:
                return q.get_many(rng.randint(1, 2 * q.maxsize), **timing)
            return [q.get(**timing)]
        except queue.Empty:
            return []

    def consume(me: int) -> None:
        rng = random.Random(-me)
        mine = received[me]
        try:
            while True:
                batch = take(me, rng)
                for n, item in enumerate(batch):
                    if item is None:  # the end: one marker each, so pass on any others taken
                        for _ in batch[n + 1 :]:
                            q.put(None)
                        return
                    mine.append(item)
                    if len(mine) % 97 == 0:
                        assert q.qsize() <= q.maxsize  # and from outside, now and then
                    q.task_done()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    threads += [threading.Thread(target=consume, args=(c,), daemon=True) for c in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads[:producers]:
        thread.join(60)
    Worker(q.join).finish()  # every item taken and marked done
    # The quiet end. While consumers keep coming back for more, an item whose
    # notify() was skipped is simply taken by the next consumer to call get():
    # counting cannot see a lost wake-up mid-run. So wait until the consumers
    # that block without a timeout are all asleep on the empty queue, then put
    # one stop marker per consumer, back to back: a skipped notify() leaves a
    # consumer asleep beside its marker, and it never finishes.
    wait_for_sleepers(q.not_empty, consumers - consumers // 2 if timed else consumers)
    for _ in range(consumers):
        q.put(None)
    for thread in threads:
        thread.join(BOUND)
    assert not any(t.is_alive() for t in threads), "a thread is still running"
    assert not errors, errors
    return received


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batches"])
@pytest.mark.parametrize("timed", [False, True], ids=["blocking", "timeouts"])
def test_stress_every_item_arrives_exactly_once_in_order_within_maxsize(timed, batched):
    q = bq.BlockingQueue(STRESS_MAXSIZE)
    q.queue = storage = WatchedDeque()
    received = run_stress(q, STRESS_PRODUCERS, STRESS_CONSUMERS, STRESS_ITEMS, timed, batched)

    got = [item for mine in received for item in mine]
    expected = {
        (p, s) for p in range(STRESS_PRODUCERS) for s in range(STRESS_ITEMS // STRESS_PRODUCERS)
    }
    assert len(got) == len(expected) == STRESS_ITEMS  # nothing lost, nothing extra
    assert set(got) == expected  # and so nothing duplicated
    # FIFO, seen from inside: items left in exactly the order they entered...
    assert storage.left == storage.entered
    # ...so each producer's items left in its order, and each consumer saw them so.
    for mine in [[item for item in storage.left if item is not None], *received]:
        last: dict[int, int] = {}
        for producer, sequence in mine:
            assert sequence > last.get(producer, -1)
            last[producer] = sequence
    assert storage.deepest <= STRESS_MAXSIZE
    assert storage.deepest == STRESS_MAXSIZE  # it did fill up: the blocking paths ran
    assert_nobody_counted_waiting(q)


def test_stress_the_same_check_passes_on_queue_queue():
    """The stress check is a fair test: queue.Queue passes it too."""
    q = queue.Queue(STRESS_MAXSIZE)
    q.queue = storage = WatchedDeque()
    received = run_stress(q, 4, 4, 20_000, timed=False)
    entered = [item for item in storage.entered if item is not None]
    assert sorted(item for mine in received for item in mine) == sorted(entered)
    assert storage.left == storage.entered and storage.deepest <= STRESS_MAXSIZE


@pytest.mark.parametrize("immediate", [False, True])
def test_stress_shutdown_in_the_middle_leaves_nobody_blocked(immediate):
    q = bq.BlockingQueue(4)
    q.queue = storage = WatchedDeque()
    received: list[list] = [[] for _ in range(6)]
    refused = []

    def produce(me: int) -> None:
        sequence = 0
        try:
            while True:
                q.put((me, sequence))
                sequence += 1
        except bq.ShutDown:
            refused.append(me)

    def consume(me: int) -> None:
        try:
            while True:
                received[me].append(q.get())
        except bq.ShutDown:
            pass

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(6)]
    threads += [threading.Thread(target=consume, args=(c,), daemon=True) for c in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + BOUND
    while len(storage.left) < 5_000 and time.monotonic() < deadline:  # let it run a while
        time.sleep(0.01)
    q.shutdown(immediate=immediate)
    for thread in threads:
        thread.join(BOUND)
    assert not any(t.is_alive() for t in threads), "a thread stayed blocked after shutdown"
    assert sorted(refused) == list(range(6))  # every producer was told
    got = [item for mine in received for item in mine]
    assert len(got) == len(set(got)) == len(storage.left)  # nothing received twice
    assert storage.left == storage.entered[: len(storage.left)]  # and in FIFO order
    if immediate:
        assert len(storage.entered) - len(storage.left) <= 4  # the discarded ones
    else:
        assert storage.left == storage.entered  # drained: everything put was received
    assert_nobody_counted_waiting(q)


# -- the textbook queue, and the stress that catches its broken variants -------


def test_the_textbook_queue_is_a_bounded_fifo():
    q = textbook.TextbookQueue(2)
    q.put("a")
    q.put("b")
    putter = Worker(q.put, "c")
    wait_for_sleepers(q.not_full, 1)  # full: the third put waits
    assert [q.get(), q.get()] == ["a", "b"]
    putter.finish()
    assert q.get() == "c"
    getter = Worker(q.get)
    wait_for_sleepers(q.not_empty, 1)  # empty: get waits
    q.put("d")
    assert getter.finish().result == "d"
    for maxsize in (0, -1):
        with pytest.raises(ValueError, match="maxsize must be at least 1"):
            textbook.TextbookQueue(maxsize)


@pytest.mark.parametrize("setup", list(stress.SETUPS))
@pytest.mark.parametrize("name", list(stress.CORRECT))
def test_the_stress_passes_the_correct_queues(name, setup):
    verdict = stress.stress(stress.CORRECT[name], stress.SETUPS[setup])
    assert verdict.problem == ""
    assert verdict.moved == stress.SETUPS[setup].items


# Which set-up catches which bug, every time (README.md says why). An `if`
# around a wait lets a getter pop from an empty deque or a putter go past
# maxsize, whichever happens first; a missing notify and one condition shared
# by both sides leave everyone asleep within a few items; a queue that only
# notifies on empty -> non-empty wakes one of the consumers that sleep when the
# stop markers arrive all at once.
IF_BROKEN = ("crashed: consumer-", "over the limit: ")
CAUGHT_BY = [
    ("IfInsteadOfWhile", "spurious", IF_BROKEN),
    ("IfInsteadOfWhile", "crowd", IF_BROKEN),
    ("MissingNotify", "crowd", "deadlock: "),
    ("MissingNotify", "hand-over", "deadlock: "),
    ("NotifyOnTransitionOnly", "crowd", "deadlock: "),
    ("OneConditionNotifyOne", "crowd", "deadlock: "),
    ("OneConditionNotifyOne", "hand-over", "deadlock: "),
]


@pytest.mark.parametrize("name, setup, problem", CAUGHT_BY)
def test_the_stress_catches_each_broken_queue(name, setup, problem):
    verdict = stress.run_in_child(name, setup)  # its stuck threads die with the child
    assert verdict.problem.startswith(problem), verdict


def test_every_broken_queue_has_a_set_up_that_catches_it():
    assert {name for name, _, _ in CAUGHT_BY} == set(stress.BROKEN)


def test_queue_stress_script_reports_a_caught_queue_and_a_missed_one():
    caught = run_script("BlockingQueue/queue_stress.py", "--queue", "MissingNotify")
    assert caught.returncode == 0, caught.stdout + caught.stderr
    assert caught.stdout.count("CAUGHT after") == len(stress.SETUPS)
    assert "every correct queue passed and every broken one was caught" in caught.stdout
    # With one slot every put empties -> non-empty and every get full -> not full:
    # notifying "only on a transition" is then notifying always, and nothing shows.
    missed = run_script(
        "BlockingQueue/queue_stress.py", "--queue", "NotifyOnTransitionOnly", "--setup", "hand-over"
    )
    assert missed.returncode == 1
    assert "FAIL  NotifyOnTransitionOnly is broken but got through hand-over" in missed.stdout


# -- the bounded executor, and the trap it fixes --------------------------------


def busy_pool(make_pool, workers: int):
    """A pool whose workers are all running a task that waits until `release` is set."""
    release = threading.Event()
    pool = make_pool()
    stuck = [pool.submit(release.wait, BOUND) for _ in range(workers)]
    wait_until(lambda: all(f.running() for f in stuck))
    return pool, release, stuck


def wait_until(condition) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.001)


def test_thread_pool_executor_submit_never_blocks_however_much_waits():
    """The trap: with every worker busy, 2,000 more submits all return at once."""
    pool, release, _ = busy_pool(lambda: concurrent.futures.ThreadPoolExecutor(2), 2)
    submitter = Worker(lambda: [pool.submit(len, b"x") for _ in range(2_000)])
    assert len(submitter.finish().result) == 2_000
    assert pool._work_queue.qsize() >= 2_000 - 2  # all of it waiting, in memory
    release.set()
    pool.shutdown()


def test_bounded_executor_submit_blocks_at_its_limit_until_a_worker_frees_a_place():
    pool, release, stuck = busy_pool(lambda: executors.BoundedExecutor(2, max_queued=3), 2)
    queued = [pool.submit(pow, 2, n) for n in range(3)]  # fills the queue
    blocked = Worker(pool.submit, pow, 2, 10)
    wait_for_sleepers(pool.work.not_full, 1)  # the fourth waits: backpressure
    assert pool.work.qsize() == 3
    release.set()
    assert blocked.finish().result.result(timeout=BOUND) == 1024
    assert [f.result(timeout=BOUND) for f in queued] == [1, 2, 4]
    assert all(f.result(timeout=BOUND) for f in stuck)
    pool.shutdown()


def test_bounded_executor_runs_tasks_and_reports_their_exceptions():
    with executors.BoundedExecutor(3, max_queued=4) as pool:
        assert list(pool.map(pow, range(20), [2] * 20)) == [n * n for n in range(20)]
        failing = pool.submit(int, "not a number")
        with pytest.raises(ValueError, match="invalid literal"):
            failing.result(timeout=BOUND)
    assert not any(w.is_alive() for w in pool.workers)  # `with` waited for them


@pytest.mark.parametrize("cancel", [False, True], ids=["run", "cancel"])
def test_bounded_executor_shutdown_runs_what_is_queued_or_cancels_it(cancel):
    pool, release, _ = busy_pool(lambda: executors.BoundedExecutor(1, max_queued=5), 1)
    queued = [pool.submit(pow, 3, n) for n in range(5)]
    stopper = Worker(pool.shutdown, cancel_futures=cancel)  # waits for the busy worker
    wait_until(lambda: pool.work.is_shutdown)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(pow, 0, 0)
    if cancel:  # every queued task cancelled before the worker is free to take one
        wait_until(lambda: pool.work.qsize() == 0)
    release.set()
    stopper.finish()
    if cancel:
        assert all(f.cancelled() for f in queued)
    else:
        assert [f.result(timeout=BOUND) for f in queued] == [1, 3, 9, 27, 81]
    assert not any(w.is_alive() for w in pool.workers)


def test_bounded_executor_a_submit_blocked_at_shutdown_is_refused_not_lost():
    pool, release, _ = busy_pool(lambda: executors.BoundedExecutor(1, max_queued=1), 1)
    pool.submit(pow, 2, 2)
    blocked = Worker(pool.submit, pow, 2, 3)
    wait_for_sleepers(pool.work.not_full, 1)
    pool.shutdown(wait=False)
    assert isinstance(blocked.finish().error, RuntimeError)
    release.set()
    for worker in pool.workers:
        worker.join(BOUND)
    assert not any(w.is_alive() for w in pool.workers)


EXIT_WITH_TASKS_PENDING = """
import os, sys, time
sys.path.insert(0, {folder!r})
from concurrent.futures import ThreadPoolExecutor
from bounded_executor import BoundedExecutor
pool = {make_pool}
def task(n):
    time.sleep(0.01)
    os.write(1, f"ran {{n}}\\n".encode())  # one write per line: no interleaving
for n in range(6):
    pool.submit(task, n)
{then}
"""


@pytest.mark.parametrize("then", ["", "pool.shutdown(wait=False)"], ids=["never", "no-wait"])
@pytest.mark.parametrize(
    "make_pool", ["ThreadPoolExecutor(2)", "BoundedExecutor(2, max_queued=10)"]
)
def test_the_program_does_not_end_before_every_submitted_task_has_run(make_pool, then):
    """concurrent.futures' promise: whether or not shutdown() waits, the program
    exits only once every pending future is done (BoundedExecutor's workers are
    daemon threads: without its exit hook, the queued tasks vanished silently)."""
    code = EXIT_WITH_TASKS_PENDING.format(
        folder=str(ROOT / "BlockingQueue"), make_pool=make_pool, then=then
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split("\n")[:-1]) == [f"ran {n}" for n in range(6)]


def test_a_pool_interrupted_while_it_starts_its_workers_does_not_break_the_exit_hook(
    monkeypatch,
):
    """Ctrl+C during BoundedExecutor(...) left a pool with unstarted threads in
    the exit hook's list: `join()` on them raised at exit, with a traceback."""

    class InterruptedSecondStart(threading.Thread):
        starts = 0

        def start(self) -> None:
            InterruptedSecondStart.starts += 1
            if InterruptedSecondStart.starts == 2:
                raise KeyboardInterrupt  # Ctrl+C, between two workers' start()
            super().start()

    # Only the executor module sees the interrupting Thread (the test runner starts threads too).
    monkeypatch.setattr(
        executors, "threading", types.SimpleNamespace(Thread=InterruptedSecondStart)
    )
    with pytest.raises(KeyboardInterrupt):
        executors.BoundedExecutor(3, max_queued=2)
    monkeypatch.undo()
    executors.finish_every_pool()  # what atexit runs: nothing to raise


def test_map_submits_as_results_are_taken_so_an_endless_input_works():
    """Executor.map submits every call before returning: on a bounded pool it
    would block until nearly all had run, holding every Future, and an endless
    input would never yield. BoundedExecutor.map keeps a window in flight."""
    pool = executors.BoundedExecutor(2, max_queued=3)
    window = 2 + 3  # workers + max_queued
    taken = []  # arguments map() has read from the input
    got = []  # results the loop has received

    def endless():
        for n in itertools.count():
            taken.append(n)
            yield n

    def first_fifty() -> None:
        for result in pool.map(abs, endless()):
            got.append(result)
            assert len(taken) - len(got) <= window  # calls in flight, never more
            if len(got) == 50:
                return

    assert Worker(first_fifty).finish().error is None
    assert got == list(range(50))
    pool.shutdown()


def test_map_timeout_counts_from_the_call_and_map_itself_never_waits_for_it():
    pool = executors.BoundedExecutor(1, max_queued=1)
    release = threading.Event()
    ran = []

    def stuck(n: int) -> None:
        ran.append(n)
        release.wait(BOUND)

    started = time.monotonic()
    mapping = Worker(pool.map, stuck, range(100), timeout=0.2)
    results = mapping.finish().result  # before the fix: blocked here until 98 calls had run
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    assert time.monotonic() - started < BOUND
    release.set()
    pool.shutdown()
    assert ran == [0]  # the queued call was cancelled, the other 98 never submitted


def test_a_task_that_submits_to_its_own_full_pool_runs_the_call_itself():
    """A worker blocked in submit() waits for room only workers can make: with
    one worker, that is forever. Java's CallerRunsPolicy: the worker runs it."""
    pool = executors.BoundedExecutor(1, max_queued=1)

    def fan_out() -> list:
        return [pool.submit(pow, 2, n) for n in range(5)]

    inner = pool.submit(fan_out).result(timeout=BOUND)
    assert [f.result(timeout=BOUND) for f in inner] == [1, 2, 4, 8, 16]
    pool.shutdown()


@pytest.mark.parametrize("workers, queued", [(0, 1), (1, 0), (-1, 5)])
def test_bounded_executor_refuses_a_limit_below_one(workers, queued):
    with pytest.raises(ValueError, match="must be at least 1"):
        executors.BoundedExecutor(workers, queued)


def test_bounded_executor_job_script_reports_its_memory():
    result = run_script(
        "BlockingQueue/bounded_executor.py",
        *("--executor", "bounded", "--tasks", "200", "--payload", "1024", "--max-queued", "8"),
    )
    assert result.returncode == 0, result.stderr
    assert "BoundedExecutor (4 workers, max_queued 8): 200 tasks of 1,024 B" in result.stdout
    assert "peak RSS" in result.stdout


def test_a_job_measured_in_a_child_process_reports_its_own_peak_not_its_parents():
    # getrusage's ru_maxrss would start the child at this process's size: Linux
    # carries the high-water mark across fork and exec.
    ballast = b"\x01" * (300 * executors.MiB)  # written, so resident
    report = executors.run_job_in_child("unbounded", tasks=50, payload=4096, workers=2)
    assert (report.executor, report.tasks, report.max_queued) == ("unbounded", 50, None)
    assert report.baseline_rss <= report.peak_rss < len(ballast) / 2
    assert report.seconds >= report.submitting > 0
    del ballast


# -- guarantees beyond queue.Queue's ------------------------------------------


class InterruptOnce(threading.Condition):
    """A condition whose first wake-up becomes an exception (think Ctrl+C) in the woken thread."""

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.interrupted = False

    def wait(self, timeout=None):
        woken = super().wait(timeout)
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return woken


def test_a_getter_interrupted_after_its_wake_up_passes_the_wake_up_on():
    q = bq.BlockingQueue(1)
    q.not_empty = InterruptOnce(q.mutex)
    first = Worker(q.get)
    wait_for_sleepers(q.not_empty, 1)
    second = Worker(q.get)
    wait_for_sleepers(q.not_empty, 2)
    q.put("item")  # wakes `first` only, which is then interrupted
    assert isinstance(first.finish().error, KeyboardInterrupt)
    assert second.finish().result == "item"  # not stuck beside a waiting item
    assert_nobody_counted_waiting(q)


def test_a_putter_interrupted_after_its_wake_up_passes_the_wake_up_on():
    q = bq.BlockingQueue(1)
    q.put("filler")
    q.not_full = InterruptOnce(q.mutex)
    first = Worker(q.put, "first")
    wait_for_sleepers(q.not_full, 1)
    second = Worker(q.put, "second")
    wait_for_sleepers(q.not_full, 2)
    assert q.get() == "filler"  # one free slot: wakes `first` only, which is then interrupted
    assert isinstance(first.finish().error, KeyboardInterrupt)
    assert second.finish().error is None  # the slot went to the other putter
    assert q.get_nowait() == "second"
    assert_nobody_counted_waiting(q)


def test_waiter_counts_return_to_zero_after_timeouts():
    q = bq.BlockingQueue(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.01)
    assert_nobody_counted_waiting(q)


# -- the scripts ----------------------------------------------------------------


def test_pipeline_delivers_everything_and_reports_backpressure():
    stats = pipeline.run_pipeline(
        bq.BlockingQueue(5),
        producers=3,
        consumers=2,
        items=600,
        produce_rate=0,
        consume_rate=2_000,
        payload=16,
        progress=False,
    )
    assert stats.produced == stats.consumed == 600
    assert stats.exactly_once and stats.joined and stats.threads_left == 0
    assert stats.producer_blocks > 0  # fast producers, slow consumers: they blocked
    assert stats.max_depth <= 5


def test_pipeline_counts_what_an_immediate_shutdown_discards():
    stats = pipeline.run_pipeline(
        bq.BlockingQueue(0),
        producers=1,
        consumers=1,
        items=None,
        produce_rate=0,
        consume_rate=200,
        payload=16,
        stop_after=0.3,
        immediate=True,
        progress=False,
    )
    assert stats.threads_left == 0 and stats.joined
    assert stats.discarded > 0 and stats.duplicates == stats.out_of_order == 0
    assert stats.produced == stats.consumed + stats.discarded


def run_pipeline_within_bound(**kwargs):
    """run_pipeline in a helper thread, so a pipeline that hangs fails the test instead."""
    run = Worker(pipeline.run_pipeline, bq.BlockingQueue(kwargs.pop("maxsize")), **kwargs)
    run.join(2 * pipeline.JOIN_TIMEOUT + BOUND)
    assert not run.is_alive(), "run_pipeline hangs"
    assert run.error is None, run.error
    return run.result


def test_pipeline_stops_when_its_consumers_die():
    # The issue's own case: a rate so low that sleep(1 / rate) raises OverflowError
    # in both consumers; the producers then blocked forever on a full queue.
    stats = run_pipeline_within_bound(
        maxsize=5, producers=2, consumers=2, items=200, consume_rate=1e-300, progress=False
    )
    assert stats.failures  # the first death stops the run; the other may not get to die
    for cause in stats.failures:
        assert cause.startswith("consumer-") and "died: OverflowError" in cause
    assert stats.threads_left == 0  # the producers blocked on the full queue were released
    assert stats.duplicates == stats.out_of_order == 0


def test_pipeline_reports_producers_that_die_instead_of_a_clean_empty_run():
    stats = run_pipeline_within_bound(maxsize=5, items=100, payload=-1, progress=False)
    assert stats.failures and all("died: ValueError" in c for c in stats.failures)
    assert stats.produced == 0 and stats.threads_left == 0


def test_pipeline_stops_the_others_when_one_consumer_dies():
    # The other consumer alone could finish the work: the run must still stop and
    # say so, not hide the crash behind a slower success.
    stats = run_pipeline_within_bound(
        maxsize=10,
        producers=1,
        consumers=2,
        items=100_000,
        produce_rate=0,
        consume_rate=0,
        payload=16,
        crash_consumer_after=50,
        progress=False,
    )
    assert stats.failures == ["consumer-0 died: RuntimeError: crashed on purpose after 50 items"]
    assert stats.consumed_by[0] == 50
    assert stats.produced < 100_000  # stopped early, not run to the end
    assert stats.threads_left == 0 and stats.duplicates == stats.out_of_order == 0


def test_producer_consumer_script_exits_non_zero_with_the_cause_when_a_consumer_dies():
    result = run_script(
        "BlockingQueue/producer_consumer.py",
        *("--items", "100000", "--produce-rate", "0", "--consume-rate", "0"),
        *("--crash-consumer-after", "20"),
        timeout=60,
    )
    assert result.returncode == 1
    assert "consumer-0 died: RuntimeError: crashed on purpose after 20 items" in result.stderr
    assert "Traceback" not in result.stderr


def test_producer_consumer_script_runs_and_prints_its_report():
    result = run_script(
        "BlockingQueue/producer_consumer.py",
        *("--producers", "2", "--consumers", "1", "--maxsize", "10", "--items", "300"),
        *("--produce-rate", "0", "--consume-rate", "3000"),
    )
    assert result.returncode == 0, result.stderr
    assert "items put / done                   300 / 300" in result.stdout
    assert "delivered exactly once, in order   yes" in result.stdout
    assert "items done  depth" in result.stdout  # the progress line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "a-file"], "cannot write the plots"),
        (["--out", "a-file/below"], "cannot write the plots"),
        (["--out", "x", "--save-images"], "not allowed with argument"),
        (["--out", ""], "--out: needs a folder name"),  # "": the current folder, the repository
    ],
)
def test_demo_refuses_a_plot_folder_it_cannot_write_before_running(tmp_path, args, message):
    (tmp_path / "a-file").write_text("a file where a folder should be")
    args = [str(tmp_path / a) if a.startswith(("a-file", "x")) else a for a in args]
    result = run_script("BlockingQueue/demo.py", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "Lesson" not in result.stdout  # refused before the runs, not after


BAD_INPUT = {  # script: [(arguments, what its one-line error says)]
    "producer_consumer.py": [
        (["--producers", "0"], "must be between 1 and"),
        (["--consumers", "x"], "invalid int value"),
        (["--producers", "1000"], "must be between 1 and 256"),
        (["--items", "-5"], "must be between 0 and"),
        (["--consume-rate", "-1"], "must be 0 or between"),
        (["--produce-rate", "nan"], "must be a number"),
        (["--payload", "100000000000"], "must be between 0 and"),
        (["--consume-rate", "1e-300"], "must be 0 or between"),
        (["--produce-rate", "inf"], "must be 0 or between"),
        (["--maxsize", "-1"], "must be between 0 and"),
        (["--maxsize", "99999999999999999999"], "must be between 0 and"),
        (["--items", "99999999999999999999"], "must be between 0 and"),
        (["--crash-consumer-after", "-1"], "must be between 0 and"),
        (["--maxsize", "1000", "--payload", "16000000"], "would hold up to"),
        (["--maxsize", "0", "--items", "1000000", "--payload", "4096"], "would hold up to"),
        (["--maxsize", "0", "--items", "10000000", "--payload", "0"], "would hold up to"),
    ],
    "queue_stress.py": [
        (["--queue", "NoSuchQueue"], "invalid choice"),
        (["--setup", "huge"], "invalid choice"),
        (["--time-limit", "nan"], "--time-limit must be between 1 and 3600"),
        (["--time-limit", "0"], "--time-limit must be between 1 and 3600"),
        (["--child", "NoSuchQueue", "crowd"], "--child needs a queue and a set-up by name"),
    ],
    "bounded_executor.py": [
        (["--executor", "bounded", "--tasks", "0"], "must be between 1 and"),
        (["--executor", "bounded", "--payload", "-1"], "must be between 0 and"),
        (["--executor", "unbounded", "--workers", "1000"], "must be between 1 and 64"),
        (["--executor", "bounded", "--max-queued", "x"], "invalid int value"),
        (["--executor", "unbounded", "--tasks", "100000", "--payload", "4194304"], "MiB, which"),
        (["--executor", "none"], "invalid choice"),
    ],
    "bench.py": [
        (["--repeats", "0"], "must be between 1 and 50"),
        (["--scale", "nan"], "must be between 0.01 and 100"),
    ],
}


@pytest.mark.parametrize(
    "script, args, message",
    [(script, args, message) for script, cases in BAD_INPUT.items() for args, message in cases],
)
def test_scripts_refuse_bad_input_with_one_clear_line(script, args, message):
    result = run_script(f"BlockingQueue/{script}", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "script",
    ["producer_consumer.py", "queue_stress.py", "bounded_executor.py", "demo.py", "bench.py"],
)
def test_every_script_has_help(script):
    result = run_script(f"BlockingQueue/{script}", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


# Each script, and the first line it prints once it is at work.
AT_WORK = {
    "producer_consumer.py": (["--items", "1000000", "--payload", "0"], "producers at"),
    "queue_stress.py": ([], "set-ups"),
    "bounded_executor.py": (
        ["--executor", "bounded", "--tasks", "50000", "--payload", "0"],
        "BoundedExecutor (4 workers",
    ),
    "demo.py": (["--out", "OUT"], "1. "),
    "bench.py": ([], "machine:"),
}


@pytest.mark.parametrize("script", list(AT_WORK))
def test_ctrl_c_stops_a_script_with_exit_code_130_and_no_traceback(script, tmp_path):
    args, first_line = AT_WORK[script]
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "BlockingQueue" / script)]
        + [str(tmp_path) if a == "OUT" else a for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = iter(child.stdout.readline, "")  # until the end of its output
        assert first_line in next(line for line in lines if line.strip())  # it is at work
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err


def test_demo_shows_its_lesson(tmp_path):
    result = run_script("BlockingQueue/demo.py", "--out", str(tmp_path), timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    lesson = [line for line in result.stdout.splitlines() if line.startswith("Lesson")]
    assert len(lesson) == 1 and lesson[0].startswith("Lesson: with maxsize 50 the queue never")
    assert "ThreadPoolExecutor took +" in lesson[0]
    for plot in ("queue_depth.png", "executor_memory.png"):
        assert (tmp_path / plot).stat().st_size > 10_000
