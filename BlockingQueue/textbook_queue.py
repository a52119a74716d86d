"""The textbook bounded blocking queue: one lock, two conditions, nothing else.

This is the design every operating-systems course teaches, and the one
BlockingQueue.py starts from before it adds timeouts, task_done/join, shutdown
and the skipped notifications. broken_queues.py holds the same queue with one
line wrong in each of five ways, and queue_stress.py catches every one.
README.md, "The textbook queue, and five ways to break it", walks through them.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class TextbookQueue:
    """A FIFO queue of at most `maxsize` items: put() waits while full, get() while empty."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.queue: deque[Any] = deque()  # the items, oldest on the left
        self.mutex = threading.Lock()  # guards self.queue; both conditions share it
        # not_empty: get() waits on it while there are no items; put() notifies one.
        self.not_empty = threading.Condition(self.mutex)
        # not_full: put() waits on it while the queue is full; get() notifies one.
        self.not_full = threading.Condition(self.mutex)

    def put(self, item: Any) -> None:
        """Add `item` at the back, waiting while the queue is full."""
        with self.mutex:
            while len(self.queue) >= self.maxsize:  # while, not if: a wake-up means "look again"
                self.not_full.wait()
            self.queue.append(item)
            self.not_empty.notify()  # one item: one getter can use it

    def get(self) -> Any:
        """Remove and return the item at the front, waiting while the queue is empty."""
        with self.mutex:
            while not self.queue:
                self.not_empty.wait()
            item = self.queue.popleft()
            self.not_full.notify()  # one free slot: one putter can use it
            return item
