"""A stress test that catches the classic blocking-queue bugs and says which one it saw.

P producers put (producer, n) pairs into a queue, C consumers get them, and once
the producers are done a closer puts one stop marker per consumer. The run is
watched from outside and ends the moment it goes wrong:

- crashed: a thread raised (an `if` around a wait pops from an empty deque);
- over the limit: the queue held more than maxsize items (an `if` in put);
- deadlock: every live thread is asleep in a wait, so nobody is left to wake
  anyone (a lost wake-up). Checked exactly, under the queue's own lock, and
  not by a timeout, so a slow machine cannot fake one and a real one is seen
  within milliseconds;
- lost, duplicated or out of order: every item counted at the end.

Each (queue, set-up) runs in its own process, so the threads a deadlocked queue
leaves behind die with it. README.md, "The textbook queue, and four ways to
break it", shows the output.

    python BlockingQueue/queue_stress.py                         # every queue, every set-up
    python BlockingQueue/queue_stress.py --queue TextbookQueue   # after you edit it
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import broken_queues
import textbook_queue

from BlockingQueue import BlockingQueue

# The queues, by name. Each must keep its items in `self.queue` (a deque it
# touches only while holding `self.mutex`) and wait on threading.Conditions it
# keeps as attributes: then the stress can watch it from outside.
CORRECT: dict[str, Callable[[int], Any]] = {
    "TextbookQueue": textbook_queue.TextbookQueue,
    "OneConditionNotifyAll": broken_queues.OneConditionNotifyAll,
    "BlockingQueue": BlockingQueue,
    "queue.Queue": queue.Queue,
}
BROKEN: dict[str, Callable[[int], Any]] = {
    "IfInsteadOfWhile": broken_queues.IfInsteadOfWhile,
    "MissingNotify": broken_queues.MissingNotify,
    "NotifyOnTransitionOnly": broken_queues.NotifyOnTransitionOnly,
    "OneConditionNotifyOne": broken_queues.OneConditionNotifyOne,
}
QUEUES = CORRECT | BROKEN


@dataclass(frozen=True)
class SetUp:
    """One way to load a queue; each catches different bugs (README.md says which)."""

    producers: int
    consumers: int
    maxsize: int
    items: int  # in all, shared out among the producers
    spurious: bool = False  # another thread wakes every waiter now and then, for nothing

    def describe(self) -> str:
        text = (
            f"{self.producers} producers, {self.consumers} consumers, maxsize {self.maxsize}, "
            f"{self.items:,} items"
        )
        if self.spurious:
            text += f", spurious wake-ups every {SPURIOUS_EVERY * 1000:.0f} ms"
        return text


SETUPS = {
    # Many threads on a tiny queue: both sides block all the time.
    "crowd": SetUp(producers=4, consumers=4, maxsize=2, items=20_000),
    # One slot: every item is a hand-over, putters and getters wait in turn.
    "hand-over": SetUp(producers=2, consumers=2, maxsize=1, items=5_000),
    # A wake-up with nothing to do, which POSIX condition variables allow and
    # any notify_all() elsewhere (a shutdown, say) produces: only `while` survives it.
    "spurious": SetUp(producers=2, consumers=4, maxsize=2, items=5_000, spurious=True),
}
SPURIOUS_EVERY = 0.001  # seconds between two rounds of notify_all() on every condition
WATCH_EVERY = 0.005  # seconds between two looks at the threads
TIME_LIMIT = 60.0  # seconds a run may take before it counts as hung (a correct one takes ~1)
STOP = object()  # the marker a consumer ends on


class WatchedDeque(deque):
    """A queue's storage that reports on itself from inside the queue's lock:
    the order items entered and left, and the deepest it ever was."""

    def __init__(self) -> None:
        super().__init__()
        self.deepest = 0
        self.entered: list = []
        self.left: list = []

    def append(self, item: Any) -> None:
        super().append(item)
        self.deepest = max(self.deepest, len(self))
        self.entered.append(item)

    def extend(self, items: Any) -> None:  # deque.extend() would not call append()
        for item in items:
            self.append(item)

    def popleft(self) -> Any:
        item = super().popleft()
        self.left.append(item)
        return item


@dataclass
class Verdict:
    problem: str  # "" when the run found nothing wrong
    moved: int  # items the consumers received
    seconds: float


def stress(
    make_queue: Callable[[int], Any], setup: SetUp, time_limit: float = TIME_LIMIT
) -> Verdict:
    """Run one set-up against a fresh queue; stop at the first problem and name it.

    A broken queue can leave threads blocked forever (they are daemons): run it
    in a process of its own (`run_in_child`) when that matters.
    """
    q = make_queue(setup.maxsize)
    q.queue = storage = WatchedDeque()
    # Every condition the queue waits on (OneConditionNotifyOne has one under three names).
    conditions = {id(c): c for c in vars(q).values() if isinstance(c, threading.Condition)}
    received: list[list] = [[] for _ in range(setup.consumers)]
    crashes: list[str] = []
    finished = threading.Event()

    def thread(name: str, body: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except BaseException as error:  # noqa: BLE001 - the crash is the finding
                crashes.append(f"{name} raised {type(error).__name__}: {error}")

        return threading.Thread(target=run, name=name, daemon=True)

    def producer(me: int) -> Callable[[], None]:
        share = setup.items // setup.producers + (me < setup.items % setup.producers)

        def body() -> None:
            for n in range(share):
                q.put((me, n))

        return body

    def consumer(me: int) -> Callable[[], None]:
        def body() -> None:
            while (item := q.get()) is not STOP:
                received[me].append(item)

        return body

    def close() -> None:
        for _ in range(setup.consumers):
            q.put(STOP)

    def wake_for_nothing() -> None:
        while not finished.wait(SPURIOUS_EVERY):
            with q.mutex:
                for condition in conditions.values():
                    condition.notify_all()

    def asleep() -> int:
        """Threads waiting on the queue's conditions, not yet notified (hold q.mutex)."""
        return sum(len(c._waiters) for c in conditions.values())

    producers = [thread(f"producer-{p}", producer(p)) for p in range(setup.producers)]
    consumers = [thread(f"consumer-{c}", consumer(c)) for c in range(setup.consumers)]
    closer = thread("closer", close)
    started = time.monotonic()
    deadline = started + time_limit

    def watch(workers: list[threading.Thread], until: Callable[[], bool]) -> str:
        """Look at the run every few ms until `until()` holds or something is wrong."""
        while True:
            if crashes:
                return "crashed: " + crashes[0]
            if storage.deepest > setup.maxsize:
                return f"over the limit: held {storage.deepest} items, maxsize {setup.maxsize}"
            with q.mutex:  # nobody can notify anyone while we hold it: the count is exact
                alive = [t for t in workers if t.is_alive()]
                if until():
                    return ""
                if alive and asleep() >= len(alive):
                    return (
                        f"deadlock: {who(alive)} all asleep at once; "
                        f"{plural(len(storage), 'item')} queued"
                    )
            if time.monotonic() > deadline:
                return f"no progress: still running after {time_limit:.0f} s"
            time.sleep(WATCH_EVERY)

    def all_consumers_asleep_on_an_empty_queue() -> bool:
        return not storage and asleep() == sum(t.is_alive() for t in consumers)

    threads = producers + consumers
    if setup.spurious:
        threads.append(threading.Thread(target=wake_for_nothing, daemon=True))
    for t in threads:
        t.start()
    try:
        problem = watch(producers + consumers, lambda: not any(t.is_alive() for t in producers))
        if not problem and not setup.spurious:
            # A quiet end: every consumer asleep before the stop markers come, all
            # at once. A queue that wakes fewer getters than it gets items fails here.
            problem = watch(consumers, all_consumers_asleep_on_an_empty_queue)
        if not problem:
            closer.start()
            problem = watch(
                [*consumers, closer], lambda: not any(t.is_alive() for t in [*consumers, closer])
            )
    finally:
        finished.set()
    seconds = time.monotonic() - started
    got = [item for mine in received for item in mine]
    return Verdict(problem or check_delivery(setup, storage, received), len(got), seconds)


def who(threads: list[threading.Thread]) -> str:
    """'3 producers and 2 consumers', from the threads' names."""
    counts: dict[str, int] = {}
    for t in threads:
        role = t.name.split("-")[0]
        counts[role] = counts.get(role, 0) + 1
    return " and ".join(plural(n, role) for role, n in counts.items())


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def check_delivery(setup: SetUp, storage: WatchedDeque, received: list[list]) -> str:
    """After a run that ended: every item exactly once, in FIFO order."""
    got = [item for mine in received for item in mine]
    expected = setup.items
    if len(set(got)) != len(got):
        return f"duplicated: {len(got) - len(set(got))} items received twice"
    if len(got) != expected:
        return f"lost: {expected - len(got)} of {expected:,} items never received"
    entered = [item for item in storage.entered if item is not STOP]
    left = [item for item in storage.left if item is not STOP]
    if left != entered:
        return "out of order: items left the queue in another order than they entered"
    return ""


def run_in_child(queue_name: str, setup_name: str, time_limit: float = TIME_LIMIT) -> Verdict:
    """stress() in a fresh process, so a deadlocked queue's threads die with it."""
    command = [
        sys.executable,
        __file__,
        "--child",
        queue_name,
        setup_name,
        "--time-limit",
        str(time_limit),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=time_limit + 30)
    except subprocess.TimeoutExpired:
        return Verdict(f"the child process hung past {time_limit + 30:.0f} s", 0, time_limit + 30)
    if done.returncode != 0 or not done.stdout.strip():
        return Verdict(f"the child process failed: {done.stderr.strip()[-300:]}", 0, 0.0)
    return Verdict(**json.loads(done.stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the textbook queue, its broken variants and the real queues through "
        "the same stress; show which bugs each set-up catches. Exits 1 if a correct queue "
        "failed or a broken one got through."
    )
    parser.add_argument(
        "--queue", choices=QUEUES, action="append", help="only this queue (repeatable)"
    )
    parser.add_argument(
        "--setup", choices=SETUPS, action="append", help="only this set-up (repeatable)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        help=f"seconds before a run counts as hung (default {TIME_LIMIT:.0f})",
    )
    parser.add_argument("--child", nargs=2, metavar=("QUEUE", "SETUP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.time_limit <= 3600:  # also refuses nan
        parser.error(f"--time-limit must be between 1 and 3600 seconds, got {args.time_limit}")

    if args.child:  # one run, in this process; the parent reads the JSON line
        queue_name, setup_name = args.child
        if queue_name not in QUEUES or setup_name not in SETUPS:
            parser.error(f"--child needs a queue and a set-up by name, got {args.child}")
        verdict = stress(QUEUES[queue_name], SETUPS[setup_name], args.time_limit)
        print(json.dumps(asdict(verdict)), flush=True)
        os._exit(0)  # do not wait for threads a broken queue left blocked

    queues = args.queue or list(QUEUES)
    setups = args.setup or list(SETUPS)
    print("set-ups (each run in its own process; a run stops at the first problem):")
    for name in setups:
        print(f"  {name:<10} {SETUPS[name].describe()}")
    print(f"\n{'queue':<24} {'set-up':<10} result", flush=True)
    surprises = []
    for queue_name in queues:
        caught = []
        for setup_name in setups:
            verdict = run_in_child(queue_name, setup_name, args.time_limit)
            if verdict.problem:
                caught.append(setup_name)
                result = f"CAUGHT after {plural(verdict.moved, 'item')}: {verdict.problem}"
            else:
                result = f"ok: {verdict.moved:,} items in {verdict.seconds:.1f} s"
            print(f"{queue_name:<24} {setup_name:<10} {result}", flush=True)
        if queue_name in CORRECT and caught:
            surprises.append(f"{queue_name} should be correct but failed {', '.join(caught)}")
        if queue_name in BROKEN and not caught:
            surprises.append(f"{queue_name} is broken but got through {', '.join(setups)}")

    print()
    for surprise in surprises:
        print(f"FAIL  {surprise}")
    if not surprises:
        print("every correct queue passed and every broken one was caught")
    return 1 if surprises else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # each run's child process gets the Ctrl+C too and ends with it
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by Ctrl+C"
