"""A bounded blocking queue with the contract of `queue.Queue`, on one lock and three conditions.

`BlockingQueue(maxsize)` is a drop-in for `queue.Queue` as of Python 3.13,
shutdown included: the same methods, arguments, attributes and exceptions.
It is built from the same parts (a `threading.Lock` and three
`threading.Condition`s sharing it) and differs in one idea: it counts the
threads asleep on each condition and the wake-ups already sent to them, and
calls `notify()` only when some thread is asleep with no wake-up on its way.
Most put() and get() calls then cost a few attribute reads instead of a call
into `threading.Condition`. Beyond queue.Queue it has put_many() and
get_many(), which move a batch per lock round trip. README.md explains the
ideas in order: the producer-consumer problem, why every wait sits in a
`while` loop, lost wake-ups, notify vs notify_all, backpressure, batching,
and "Why it is faster".
"""

from __future__ import annotations

import operator
import queue
import threading
import types
from collections import deque
from collections.abc import Iterable
from queue import Empty, Full
from threading import TIMEOUT_MAX
from time import monotonic
from typing import Any

if hasattr(queue, "ShutDown"):
    # Python 3.13+: reuse the very class queue.Queue raises, so an
    # `except queue.ShutDown:` written for queue.Queue catches ours too.
    ShutDown = queue.ShutDown
else:

    class ShutDown(Exception):  # type: ignore[no-redef]
        """Raised by put() on a shut-down queue, and by get() once it is also empty."""


__all__ = ["BlockingQueue", "Empty", "Full", "ShutDown"]

# queue.Queue's own messages, word for word: code that matches on them keeps working.
NEGATIVE_TIMEOUT = "'timeout' must be a non-negative number"
TOO_MANY_TASK_DONE = "task_done() called too many times"


class BlockingQueue:
    """A FIFO queue for threads: `put` blocks while it is full, `get` while it is empty.

    `maxsize` is the most items it holds; `maxsize <= 0` means no limit (then
    `put` never blocks). As with `queue.Queue`, `maxsize` may be changed on a
    live queue; the new limit applies from the next `put`.
    """

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self.queue: deque[Any] = deque()  # the items, oldest on the left
        self.unfinished_tasks = 0  # put() adds one, task_done() takes one away
        self.is_shutdown = False

        # One mutex guards every field of the queue. Each public method takes it
        # once and calls no other public method while holding it: a Lock is not
        # re-entrant, so a nested `with self.mutex` would deadlock.
        self.mutex = threading.Lock()

        # not_empty -- waited on by get() while there are no items.
        #   Notified (one thread) by put() after adding an item, and (all
        #   threads) by shutdown(), so that getters re-check and raise ShutDown.
        self.not_empty = threading.Condition(self.mutex)
        # not_full -- waited on by put() while len(queue) >= maxsize.
        #   Notified (one thread) by get() after removing an item, and (all
        #   threads) by shutdown(), so that putters raise ShutDown.
        self.not_full = threading.Condition(self.mutex)
        # all_tasks_done -- waited on by join() while unfinished_tasks > 0.
        #   Notified (all threads) by task_done() when the count reaches 0, and
        #   by shutdown(immediate=True), which marks the discarded items done.
        self.all_tasks_done = threading.Condition(self.mutex)

        # Who is asleep, and who has already been woken. For get() and put():
        #   *_waiting: threads inside the wait loop (counted in before the
        #              first wait, out when they leave the loop);
        #   *_woken:   notify() calls whose thread has not yet come back from
        #              wait() (it is waiting for the mutex, or for its turn to
        #              run). Each thread coming back from wait() takes one off,
        #              whether it was notified or timed out.
        # So `waiting - woken` is never less than the number of threads asleep
        # with no wake-up on its way: when it is 0, notify() would wake nobody
        # who needs it and is skipped. It may be more (a thread that timed out
        # takes one off a wake-up sent to another): that costs a notify() that
        # wakes nobody, never a lost wake-up. README.md, "Why it is faster".
        self.getters_waiting = 0
        self.getters_woken = 0
        self.putters_waiting = 0
        self.putters_woken = 0
        self.joiners_waiting = 0  # join() callers asleep; task_done() wakes them all at once

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add `item` at the back of the queue.

        Blocks while the queue is full: with `timeout=None` until a get() makes
        room; with a number for at most `timeout` seconds, then raises `Full`.
        With `block=False` it never blocks and raises `Full` at once (`timeout`
        is ignored). Raises `ShutDown` if the queue is shut down, including to
        a put() blocked when shutdown() is called. Raises `ValueError` for a
        negative or NaN timeout on a bounded queue (an unbounded queue never
        waits, so, as in queue.Queue, it does not look at the timeout). A
        timeout of `inf`, or too long for the lock to wait, waits like None.
        """
        with self.mutex:
            if self.is_shutdown:
                raise ShutDown
            if self.maxsize > 0:
                if not block:
                    if len(self.queue) >= self.maxsize:
                        raise Full
                elif timeout is None:
                    if len(self.queue) >= self.maxsize:
                        self._wait_for_room()
                elif not timeout >= 0:  # negative, or nan (false in every comparison)
                    raise ValueError(NEGATIVE_TIMEOUT)
                elif len(self.queue) >= self.maxsize:
                    self._wait_for_room(monotonic() + timeout)
            self.queue.append(item)
            self.unfinished_tasks += 1
            if self.getters_waiting > self.getters_woken:  # a getter sleeps, nobody woke it
                self.getters_woken += 1
                self.not_empty.notify()  # one new item: wake one getter, not all

    def _wait_for_room(self, deadline: float | None = None) -> None:
        """Sleep on not_full until there is room (mutex held). Raises Full or ShutDown."""
        self.putters_waiting += 1
        try:
            # `while`, not `if`: waking up only means "look again". Another
            # putter may have taken the free slot before this thread got the
            # mutex back.
            while len(self.queue) >= self.maxsize:
                timeout = None
                if deadline is not None:
                    # One deadline for the whole call, on the monotonic clock:
                    # a wake-up that finds the queue full again waits only for
                    # the time that is left, not for `timeout` afresh.
                    timeout = deadline - monotonic()
                    if timeout <= 0.0:
                        raise Full
                    # The lock cannot wait longer than TIMEOUT_MAX (about 292
                    # years); an `inf` deadline simply waits that long, in turns.
                    timeout = min(timeout, TIMEOUT_MAX)
                try:
                    self.not_full.wait(timeout)
                finally:
                    if self.putters_woken:  # back from wait(): one wake-up less in flight
                        self.putters_woken -= 1
                if self.is_shutdown:
                    raise ShutDown
        except BaseException:
            # Leaving without putting (Full, ShutDown, or an exception such as
            # KeyboardInterrupt raised inside wait()). If a get() had woken this
            # thread for a free slot, pass the wake-up on, or the slot would go
            # unused while another putter sleeps.
            self.putters_waiting -= 1
            if len(self.queue) < self.maxsize and self.putters_waiting > self.putters_woken:
                self.putters_woken += 1
                self.not_full.notify()
            raise
        self.putters_waiting -= 1

    def put_many(
        self, items: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> int:
        """Add `items` at the back, in order, and return how many were added.

        Takes the mutex once per chunk instead of once per item: everything at
        once if it fits (always, on an unbounded queue); otherwise as many as
        there is room for, then it waits while the queue is full and adds the
        next chunk, so a batch larger than maxsize flows through as consumers
        make room. The batch keeps its order; another putter's items may land
        between two chunks. Wakes one sleeping getter per item added.

        Returns fewer than len(items) (the first n went in, the rest did not)
        when the queue filled with `block=False`, when `timeout` (one deadline
        for the whole call) ran out, or when the queue was shut down part-way.
        Raises instead, as put() would, if not even the first item went in:
        `Full`, or `ShutDown`. `ValueError` for a negative or NaN timeout on a
        bounded queue. An exception raised inside the wait (KeyboardInterrupt)
        passes through as it is, even when some chunks already went in, and
        then nobody learns how many did. `items` is read into a list before
        the lock is taken, so a generator's code never runs while the queue
        is locked.
        """
        items = list(items)
        with self.mutex:
            if self.is_shutdown:
                raise ShutDown
            deadline = None
            if self.maxsize > 0 and block and timeout is not None:
                if not timeout >= 0:  # as in put()
                    raise ValueError(NEGATIVE_TIMEOUT)
                deadline = monotonic() + timeout
            added = 0
            while added < len(items):
                room = self.maxsize - len(self.queue) if self.maxsize > 0 else len(items)
                if room <= 0:
                    try:
                        if not block:
                            raise Full
                        self._wait_for_room(deadline)
                    except (Full, ShutDown):
                        if added:
                            return added  # the caller learns which items went in
                        raise
                    continue
                chunk = items[added : added + room]
                self.queue.extend(chunk)
                added += len(chunk)
                self.unfinished_tasks += len(chunk)
                self._wake_getters(len(chunk))
            return added

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the item at the front of the queue.

        Blocks while the queue is empty: with `timeout=None` until a put();
        with a number for at most `timeout` seconds, then raises `Empty`. With
        `block=False` it never blocks and raises `Empty` at once (`timeout` is
        ignored). After shutdown() it still returns the items left, then
        raises `ShutDown`, including to a get() blocked when shutdown() is
        called. Raises `ValueError` for a negative or NaN timeout, even when an
        item is there (as queue.Queue does for a negative one). A timeout of
        `inf`, or too long for the lock to wait, waits like None.
        """
        with self.mutex:
            self._until_an_item(block, timeout)
            item = self.queue.popleft()
            if self.putters_waiting > self.putters_woken:  # a putter sleeps, nobody woke it
                self.putters_woken += 1
                self.not_full.notify()  # one free slot: wake one putter, not all
            return item

    def _until_an_item(self, block: bool, timeout: float | None) -> None:
        """Return once an item is queued (mutex held), waiting as get() describes, or raise."""
        if self.is_shutdown and not self.queue:
            raise ShutDown
        if not block:
            if not self.queue:
                raise Empty
        elif timeout is None:
            if not self.queue:
                self._wait_for_item()
        elif not timeout >= 0:  # as in put()
            raise ValueError(NEGATIVE_TIMEOUT)
        elif not self.queue:
            self._wait_for_item(monotonic() + timeout)

    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[Any]:
        """Remove and return up to `max_items` items from the front, oldest first.

        Waits for the first item exactly as get() does (`block`, `timeout`,
        `Empty`, `ShutDown`, and `ValueError` for a negative or NaN timeout),
        then takes whatever else is queued, up to `max_items`, without waiting
        for more: a short batch is normal, an empty one never returned. This
        is Java's `drainTo(collection, max)` after a blocking `take()`. Wakes
        one sleeping putter per slot it frees. Each item still needs its own
        task_done() if you use join(). Raises `ValueError` if max_items < 1,
        `TypeError` if it is not an integer (both before taking the lock, so
        a bad argument can never strand a wake-up).
        """
        max_items = operator.index(max_items)
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        with self.mutex:
            self._until_an_item(block, timeout)
            popleft = self.queue.popleft
            items = [popleft() for _ in range(min(max_items, len(self.queue)))]
            self._wake_putters(len(items))
            return items

    def _wait_for_item(self, deadline: float | None = None) -> None:
        """Sleep on not_empty until an item is queued (mutex held). Raises Empty or ShutDown."""
        self.getters_waiting += 1
        try:
            while not self.queue:  # `while`, for the reasons given in _wait_for_room
                timeout = None
                if deadline is not None:
                    timeout = deadline - monotonic()
                    if timeout <= 0.0:
                        raise Empty
                    timeout = min(timeout, TIMEOUT_MAX)
                try:
                    self.not_empty.wait(timeout)
                finally:
                    if self.getters_woken:  # back from wait(): one wake-up less in flight
                        self.getters_woken -= 1
                if self.is_shutdown and not self.queue:
                    raise ShutDown
        except BaseException:
            # Leaving without an item: pass on a wake-up meant for us (see above).
            self.getters_waiting -= 1
            if self.queue and self.getters_waiting > self.getters_woken:
                self.getters_woken += 1
                self.not_empty.notify()
            raise
        self.getters_waiting -= 1

    # put_many() and get_many() change several items at once, so they wake up
    # to that many sleepers, by the same rule put() and get() write inline for
    # one (inline there because a method call costs more than the rest of a put).
    def _wake_getters(self, items_added: int) -> None:
        """One sleeping getter per item added, not counting those already woken (mutex held)."""
        wake = min(items_added, self.getters_waiting - self.getters_woken)
        if wake > 0:
            self.getters_woken += wake
            self.not_empty.notify(wake)

    def _wake_putters(self, slots_freed: int) -> None:
        """One sleeping putter per slot freed, not counting those already woken (mutex held)."""
        wake = min(slots_freed, self.putters_waiting - self.putters_woken)
        if wake > 0:
            self.putters_woken += wake
            self.not_full.notify(wake)

    def put_nowait(self, item: Any) -> None:
        """put(item, block=False): add the item if there is room now, else raise `Full`."""
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        """get(block=False): return an item if there is one now, else raise `Empty`."""
        return self.get(block=False)

    def task_done(self) -> None:
        """Record that the work on one item taken by get() is finished.

        When every item ever put has been marked done, join() returns. Never
        blocks. Raises `ValueError` if called more times than items were put.
        """
        with self.mutex:
            unfinished = self.unfinished_tasks - 1
            if unfinished < 0:
                raise ValueError(TOO_MANY_TASK_DONE)
            self.unfinished_tasks = unfinished
            if unfinished == 0 and self.joiners_waiting:
                self.all_tasks_done.notify_all()  # every joiner waits for the same thing

    def join(self) -> None:
        """Block until every item put has been taken and marked done with task_done().

        Returns at once if nothing is unfinished. Has no timeout and raises
        nothing (as queue.Queue). shutdown(immediate=True) counts the items it
        discards as done; items already taken still need their task_done().
        """
        with self.mutex:
            if not self.unfinished_tasks:
                return
            self.joiners_waiting += 1
            try:
                while self.unfinished_tasks:
                    self.all_tasks_done.wait()
            finally:
                self.joiners_waiting -= 1

    def qsize(self) -> int:
        """How many items the queue holds now; by the time you act on it, it may differ."""
        with self.mutex:
            return len(self.queue)

    def empty(self) -> bool:
        """True if the queue holds no items now (the same caveat as qsize())."""
        with self.mutex:
            return not self.queue

    def full(self) -> bool:
        """True if a put() would block now; always False for an unbounded queue."""
        with self.mutex:
            return 0 < self.maxsize <= len(self.queue)

    def shutdown(self, immediate: bool = False) -> None:
        """Refuse new items and wake every blocked put() and get(), so none waits forever.

        From now on put() raises `ShutDown`; get() returns the items still
        queued, then raises `ShutDown`. With `immediate=True` the queued items
        are discarded instead, each counted as done (which may release join()),
        and get() raises `ShutDown` at once. Never blocks; calling it again is
        harmless, and `immediate=True` may follow a plain shutdown().
        """
        with self.mutex:
            self.is_shutdown = True
            if immediate:
                discarded = len(self.queue)
                self.queue.clear()
                # As queue.Queue does: one task_done() per discarded item, never below 0.
                self.unfinished_tasks = max(0, self.unfinished_tasks - discarded)
                self.all_tasks_done.notify_all()
            # Everyone, not one each: every sleeper must wake and re-check now
            # (putters to raise, getters to take what is left or raise), since
            # no put() will ever wake them again.
            self.not_empty.notify_all()
            self.not_full.notify_all()

    # BlockingQueue[int] in a type hint, as queue.Queue[int].
    __class_getitem__ = classmethod(types.GenericAlias)
