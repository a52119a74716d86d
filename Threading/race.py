"""Break it: the lost update. Many threads deposit into one account; money vanishes.

A deposit is three steps: read the balance, work out the new one, write it back.
If another thread deposits between the read and the write, the write overwrites
that deposit: it is lost. The fix is a Lock around all three steps, so they run
as one. README.md, "Break it: the lost update", explains the run.

    python Threading/race.py --threads 8 --deposits 1000

Between the read and the write, `Account` pauses with `time.sleep(0)`. That
stands for the real work that sits there in practice (a database round trip, a
log line, a call into another function) and hands the GIL to another thread
right where the damage is done. Without it (`--no-pause`), CPython 3.11 hands
the GIL over only at a function call or a loop's jump back, and there is
neither between this read and write, so the same bug stays hidden: which is
how it survives testing, until a free-threaded Python or one added call
between the two lines exposes it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass

import command_line

DEFAULT_THREADS = 8
DEFAULT_DEPOSITS = 1_000  # per thread
MAX_THREADS = 256
MAX_DEPOSITS = 1_000_000
JOIN_TIMEOUT = 60.0  # seconds: a run that takes longer is reported, never waited on forever


class Account:
    """A balance updated by read-modify-write, with no protection at all."""

    def __init__(self, pause: bool = True) -> None:
        self.balance = 0
        self.pause = pause  # yield between the read and the write (see the module docstring)

    def deposit(self, amount: int) -> None:
        current = self.balance  # 1. read
        if self.pause:
            time.sleep(0)  # another thread may run here and deposit too...
        self.balance = current + amount  # 2. write: ...and this overwrites its deposit


class LockedAccount(Account):
    """The same account, fixed: the read and the write happen under one Lock."""

    def __init__(self, pause: bool = True) -> None:
        super().__init__(pause)
        self._lock = threading.Lock()  # held for the whole read-modify-write

    def deposit(self, amount: int) -> None:
        with self._lock:  # no other deposit can start until this one has written
            super().deposit(amount)


@dataclass
class RaceResult:
    """What one run of `deposit_concurrently` measured."""

    threads: int
    deposits: int  # how many deposits of 1 were made, in total
    balance: int  # what the account holds afterwards
    seconds: float

    @property
    def lost(self) -> int:
        """Deposits that vanished: each deposit adds 1, so expected minus actual."""
        return self.deposits - self.balance


def deposit_concurrently(account: Account, threads: int, deposits_each: int) -> RaceResult:
    """`threads` threads each deposit 1, `deposits_each` times, into `account`.

    A barrier releases all the threads at once, so they really do overlap.
    """
    start_together = threading.Barrier(threads)

    def depositor() -> None:
        start_together.wait()
        for _ in range(deposits_each):
            account.deposit(1)

    workers = [
        threading.Thread(target=depositor, name=f"depositor-{i}", daemon=True)
        for i in range(threads)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(worker.is_alive() for worker in workers):
        raise TimeoutError(f"the depositors did not finish within {JOIN_TIMEOUT:.0f} s")
    return RaceResult(
        threads, threads * deposits_each, account.balance, time.perf_counter() - started
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Provoke a lost-update race on a shared account, then fix it with a Lock."
    )
    parser.add_argument(
        "--threads",
        type=command_line.bounded_int(MAX_THREADS),
        default=DEFAULT_THREADS,
        help=f"depositing threads (default: {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--deposits",
        type=command_line.bounded_int(MAX_DEPOSITS),
        default=DEFAULT_DEPOSITS,
        help=f"deposits of 1 per thread (default: {DEFAULT_DEPOSITS})",
    )
    parser.add_argument(
        "--no-pause",
        action="store_true",
        help="do not yield between read and write (the bug hides; see the docstring)",
    )
    args = parser.parse_args(argv)

    threads = f"{args.threads} thread" + "s" * (args.threads != 1)
    print(f"{threads} x {args.deposits} deposits of 1 into one account")
    print(
        f"{'account':<13} {'expected':>9} {'balance':>9} {'lost':>9} {'lost %':>7} {'seconds':>8}"
    )
    results = {}
    for name, kind in (("no lock", Account), ("with Lock", LockedAccount)):
        result = deposit_concurrently(kind(pause=not args.no_pause), args.threads, args.deposits)
        results[name] = result
        print(
            f"{name:<13} {result.deposits:>9,} {result.balance:>9,} {result.lost:>9,} "
            f"{100 * result.lost / result.deposits:>6.1f}% {result.seconds:>8.2f}"
        )
    if args.threads == 1:
        print("One thread cannot race with itself: nothing can be lost. Try --threads 2.")
    elif args.no_pause:
        print("Without the pause, CPython 3.11 all but never switches mid-deposit: the bug hides.")
    # The lock must never lose a deposit; with one thread or no pause the unlocked
    # run may honestly lose nothing, so only a pausing race must show the loss.
    failures = []
    if results["no lock"].lost == 0 and args.threads > 1 and not args.no_pause:
        failures.append("the unlocked account lost no deposits this time")
    if results["with Lock"].lost != 0:
        failures.append(f"the locked account lost {results['with Lock'].lost:,} deposits")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
