"""The textbook queue with one thing wrong: four bugs that look harmless, and one repair.

Each class below is TextbookQueue (textbook_queue.py) with one method written
differently; the line that differs is marked `# BROKEN:`. Each one passes a
quick test that puts a few items and gets them back, and each crashes,
overfills or deadlocks under queue_stress.py. README.md, "The textbook queue, and four
ways to break it", says why and which stress set-up catches which.
"""

from __future__ import annotations

import threading
from typing import Any

from textbook_queue import TextbookQueue


class IfInsteadOfWhile(TextbookQueue):
    """Checks the condition once. A wake-up only means "look again": another
    thread may have taken the item (or the slot) first, or nobody changed
    anything at all (a spurious wake-up)."""

    def put(self, item: Any) -> None:
        with self.mutex:
            if len(self.queue) >= self.maxsize:  # BROKEN: if, not while
                self.not_full.wait()
            self.queue.append(item)
            self.not_empty.notify()

    def get(self) -> Any:
        with self.mutex:
            if not self.queue:  # BROKEN: if, not while
                self.not_empty.wait()
            item = self.queue.popleft()
            self.not_full.notify()
            return item


class MissingNotify(TextbookQueue):
    """get() frees a slot and tells nobody: a putter that found the queue full
    sleeps forever, however empty the queue becomes."""

    def get(self) -> Any:
        with self.mutex:
            while not self.queue:
                self.not_empty.wait()
            return self.queue.popleft()  # BROKEN: no self.not_full.notify()


class NotifyOnTransitionOnly(TextbookQueue):
    """Wakes a getter only when the queue goes from empty to non-empty (and a
    putter only when it goes from full to not full), to save notify() calls.
    Two quick puts while two getters sleep wake one of them: the other sleeps
    beside an item. (notify_all() at the transition would be correct.)"""

    def put(self, item: Any) -> None:
        with self.mutex:
            while len(self.queue) >= self.maxsize:
                self.not_full.wait()
            self.queue.append(item)
            if len(self.queue) == 1:  # BROKEN: only on empty -> non-empty
                self.not_empty.notify()

    def get(self) -> Any:
        with self.mutex:
            while not self.queue:
                self.not_empty.wait()
            item = self.queue.popleft()
            if len(self.queue) == self.maxsize - 1:  # BROKEN: only on full -> not full
                self.not_full.notify()
            return item


class OneConditionNotifyOne(TextbookQueue):
    """Putters and getters sleep on one condition, and notify() wakes one of
    them, whichever waited longest. A put() can wake another putter, which
    finds the queue still full and sleeps again; the getter the item was for
    was never told. Once everyone is asleep, nobody is left to wake anyone."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.changed = threading.Condition(self.mutex)  # BROKEN: one condition for both sides
        self.not_empty = self.not_full = self.changed

    def put(self, item: Any) -> None:
        with self.mutex:
            while len(self.queue) >= self.maxsize:
                self.changed.wait()
            self.queue.append(item)
            self.changed.notify()  # BROKEN: may wake a putter; notify_all() is needed

    def get(self) -> Any:
        with self.mutex:
            while not self.queue:
                self.changed.wait()
            item = self.queue.popleft()
            self.changed.notify()  # BROKEN: may wake a getter; notify_all() is needed
            return item


class OneConditionNotifyAll(OneConditionNotifyOne):
    """The repair, and not a bug: with one condition for both sides, every
    change must wake everyone, who all re-check and all but one sleep again.
    Correct, and it passes the stress; it pays with a thundering herd, which
    is why TextbookQueue keeps two conditions and wakes one thread."""

    def put(self, item: Any) -> None:
        with self.mutex:
            while len(self.queue) >= self.maxsize:
                self.changed.wait()
            self.queue.append(item)
            self.changed.notify_all()

    def get(self) -> Any:
        with self.mutex:
            while not self.queue:
                self.changed.wait()
            item = self.queue.popleft()
            self.changed.notify_all()
            return item
