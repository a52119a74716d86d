"""Break it: the deadlock. Two transfers lock two accounts in opposite order.

Transfer 1 locks alice, then bob; transfer 2 locks bob, then alice. If each
takes its first lock before the other takes its second, both wait forever. This
script never waits forever: every wait is `acquire(timeout=...)`, and a wait
that times out looks for a cycle in "who waits for whom". A cycle is a deadlock:
one thread (the victim) reports it, lets go of what it holds and retries, the
way a database aborts one transaction of a deadlocked pair. Then the fix: every
thread takes the locks in one global order, and no cycle can form. README.md,
"Break it: the deadlock", explains the run.

    python Threading/deadlock.py --timeout 0.5
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field

import command_line

WAIT_TIMEOUT = 0.5  # seconds a thread waits for a lock before it looks for a deadlock
MAX_WAIT = 30.0  # seconds any one lock may be waited for in total, deadlock or not
MAX_ATTEMPTS = 5  # a transfer that backs off this often gives up
BACK_OFF = 0.05  # seconds a transfer waits before retrying, so the other thread gets in first
BARRIER_TIMEOUT = 10.0  # seconds the two transfers wait for each other to hold one lock
START_BALANCE = 100


class LockWaitTooLong(RuntimeError):
    """A lock was waited for longer than MAX_WAIT without any deadlock being found."""


@dataclass(frozen=True)
class Waiter:
    """One thread in a deadlock: what it holds, and the lock it is waiting for."""

    ident: int  # threading.get_ident(): what the monitor tells threads apart by
    thread: str  # the thread's name, for people: two threads may share one
    holds: tuple[str, ...]
    waits_for: str


@dataclass(frozen=True)
class Deadlock:
    """A cycle of threads, each waiting for a lock the next one holds."""

    victim: int  # ident of the thread that backed off to break the cycle
    cycle: tuple[Waiter, ...]

    def labels(self) -> dict[int, str]:
        """Each thread's name; where two threads share one, with the thread id added."""
        names = [waiter.thread for waiter in self.cycle]
        return {
            w.ident: w.thread if names.count(w.thread) == 1 else f"{w.thread} [{w.ident}]"
            for w in self.cycle
        }

    def describe(self) -> list[str]:
        label = self.labels()
        lines = []
        for i, waiter in enumerate(self.cycle):
            holder = self.cycle[(i + 1) % len(self.cycle)].ident
            lines.append(
                f"{label[waiter.ident]} holds {', '.join(waiter.holds)} and waits for "
                f"{waiter.waits_for} (held by {label[holder]})"
            )
        return lines


class LockMonitor:
    """Named locks that remember who holds them and who waits for them.

    Threads are told apart by `threading.get_ident()`, never by name: names are
    labels a program chooses, and two threads may well both be called "worker".
    The bookkeeping (`holder`, `waiting`, `names`) is guarded by `_guard`, which
    is only ever held for a few dictionary operations, never while waiting for a
    lock.
    """

    def __init__(self, names: list[str], timeout: float = WAIT_TIMEOUT) -> None:
        self.timeout = timeout
        self._locks = {name: threading.Lock() for name in names}
        self._guard = threading.Lock()
        self.holder: dict[str, int] = {}  # lock name -> ident of the thread holding it
        self.waiting: dict[int, str] = {}  # thread ident -> lock name it is waiting for
        self.names: dict[int, str] = {}  # thread ident -> its name, for messages
        self.deadlocks: list[Deadlock] = []

    def acquire(self, name: str) -> bool:
        """Take lock `name`. True once held; False if waiting would deadlock.

        On False the caller is the victim: it must release what it holds and
        retry later. Raises LockWaitTooLong after MAX_WAIT without a deadlock.
        """
        me = threading.get_ident()
        lock = self._locks[name]
        with self._guard:
            self.waiting[me] = name
            self.names[me] = threading.current_thread().name
        give_up = time.monotonic() + MAX_WAIT
        while not lock.acquire(timeout=self.timeout):
            with self._guard:  # one thread at a time inspects the graph and may back off
                cycle = self._cycle_through(me)
                if cycle:
                    del self.waiting[me]  # from now on nobody waits for us: the cycle is broken
                    self.deadlocks.append(Deadlock(me, cycle))  # me: the victim
                    return False
            if time.monotonic() > give_up:  # slow, not deadlocked: still never hang
                with self._guard:
                    del self.waiting[me]
                raise LockWaitTooLong(f"{self.names[me]} waited {MAX_WAIT:g} s for {name}")
        with self._guard:
            del self.waiting[me]
            self.holder[name] = me
        return True

    def release(self, name: str) -> None:
        """Let go of lock `name`. RuntimeError if the calling thread does not hold it."""
        with self._guard:
            if self.holder.get(name) != threading.get_ident():
                raise RuntimeError(
                    f"{threading.current_thread().name} releases {name}, which it does not hold"
                )
            del self.holder[name]
        self._locks[name].release()

    def held_by(self, thread: int) -> tuple[str, ...]:
        return tuple(sorted(name for name, owner in self.holder.items() if owner == thread))

    def _cycle_through(self, start: int) -> tuple[Waiter, ...]:
        """Follow "waits for a lock held by" from `start`; the cycle if it comes back.

        Called with `_guard` held. Empty if the chain ends at a free lock or at a
        thread that is running (not waiting): then the wait is slow, not stuck.
        """
        chain: list[Waiter] = []
        thread: int | None = start
        while thread in self.waiting and len(chain) <= len(self.waiting):
            wanted = self.waiting[thread]
            chain.append(Waiter(thread, self.names[thread], self.held_by(thread), wanted))
            thread = self.holder.get(wanted)  # None: the lock is free, no chain
            if thread == start:
                return tuple(chain)
        return ()


@dataclass
class TransferRun:
    """What one run of `run_transfers` saw."""

    ordered: bool
    timeout: float
    seconds: float
    balances: dict[str, int]
    completed: int
    deadlocks: list[Deadlock] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)  # transfers that raised LockWaitTooLong


def transfer(
    monitor: LockMonitor,
    accounts: dict[str, int],
    source: str,
    target: str,
    amount: int,
    ordered: bool,
    both_hold_one: threading.Barrier | None = None,
) -> bool:
    """Move `amount` from `source` to `target` holding both accounts' locks.

    Unordered, it locks source then target: two opposite transfers can deadlock.
    Ordered, it locks the two in alphabetical order, whatever the direction.
    The optional barrier makes both transfers hold their first lock before
    either asks for its second, so the unordered run deadlocks every time, not
    just sometimes. (Ordered, that moment cannot happen: whoever gets the first
    lock in the order is the only one that can go on to want a second.)
    """
    if source == target:
        raise ValueError(f"a transfer needs two different accounts, got {source!r} twice")
    first, second = sorted((source, target)) if ordered else (source, target)
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(BACK_OFF)  # a victim waits a moment, so the other thread gets in first
        if not monitor.acquire(first):
            continue
        try:  # whatever happens from here on, the first lock is let go of
            if both_hold_one is not None and attempt == 0:
                try:
                    both_hold_one.wait(timeout=BARRIER_TIMEOUT)
                except threading.BrokenBarrierError:
                    pass  # the other transfer is waiting on our lock: it cannot come
            if not monitor.acquire(second):  # the victim: back off and retry
                continue
            try:
                accounts[source] -= amount
                accounts[target] += amount
            finally:
                monitor.release(second)
            return True
        finally:  # also when acquire(second) raised LockWaitTooLong
            monitor.release(first)
    return False


def run_transfers(ordered: bool, timeout: float = WAIT_TIMEOUT) -> TransferRun:
    """alice sends bob 30 while bob sends alice 10, in two threads at once."""
    accounts = {"alice": START_BALANCE, "bob": START_BALANCE}
    monitor = LockMonitor(sorted(accounts), timeout)
    both_hold_one = None if ordered else threading.Barrier(2)
    done: list[bool] = []
    gave_up: list[str] = []

    def move_money(source: str, target: str, amount: int) -> None:
        try:
            done.append(transfer(monitor, accounts, source, target, amount, ordered, both_hold_one))
        except LockWaitTooLong as slow:  # reported with the run, not as a thread's traceback
            gave_up.append(str(slow))

    threads = [
        threading.Thread(
            target=move_money,
            args=move,
            name=f"transfer {move[0]}->{move[1]}",
            daemon=True,  # a bug here must not keep the interpreter alive
        )
        for move in (("alice", "bob", 30), ("bob", "alice", 10))
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=MAX_WAIT * MAX_ATTEMPTS)
    seconds = time.perf_counter() - started
    return TransferRun(ordered, timeout, seconds, accounts, sum(done), monitor.deadlocks, gave_up)


def report(run: TransferRun, indent: str = "") -> None:
    """Print what happened in one run: each deadlock found, then the outcome."""
    order = "in one global order (alphabetical)" if run.ordered else "each from its own side"
    print(f"{indent}Locks taken {order}:")
    for deadlock in run.deadlocks:
        print(f"{indent}  DEADLOCK detected after waiting {run.timeout:g} s:")
        for line in deadlock.describe():
            print(f"{indent}    {line}")
        victim = deadlock.labels()[deadlock.victim]
        print(f"{indent}    {victim} backs off: releases its lock and retries")
    for reason in run.gave_up:
        print(f"{indent}  GAVE UP: {reason}")
    balances = ", ".join(f"{name} {balance}" for name, balance in run.balances.items())
    print(
        f"{indent}  {run.completed} of 2 transfers done in {run.seconds:.2f} s, "
        f"{len(run.deadlocks)} deadlock(s); balances: {balances}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Provoke a deadlock between two transfers, detect it with lock "
        "timeouts, then fix it with a global lock order."
    )
    parser.add_argument(
        "--timeout",
        type=command_line.bounded_seconds(0.01, 5),
        default=WAIT_TIMEOUT,
        help=f"seconds to wait for a lock before looking for a deadlock (default: {WAIT_TIMEOUT})",
    )
    args = parser.parse_args(argv)
    broken = run_transfers(ordered=False, timeout=args.timeout)
    report(broken)
    fixed = run_transfers(ordered=True, timeout=args.timeout)
    report(fixed)
    expected = {"alice": START_BALANCE - 30 + 10, "bob": START_BALANCE + 30 - 10}
    showed = (
        broken.deadlocks
        and not fixed.deadlocks
        and broken.completed == fixed.completed == 2
        and broken.balances == fixed.balances == expected
    )
    if not showed:
        print(
            "FAILED: expected a deadlock in the first run only, both transfers done in each, "
            f"and balances {expected}"
        )
    return 0 if showed else 1


if __name__ == "__main__":
    sys.exit(main())
