"""Break it: the lost update. Many threads deposit into one account; money vanishes.

A deposit is three steps: read the balance, work out the new one, write it back.
If another thread deposits between the read and the write, the write overwrites
that deposit: it is lost. The fix is a Lock around all three steps, so they run
as one. README.md, "Break it: the lost update", explains the runs.

    python Threading/race.py --runs 10

What sits between the read and the write decides how the bug shows:

- `sleep`: `time.sleep(0)` hands the GIL to another thread every time, right
  where the damage is done. The race runs in lockstep and loses nearly the same
  share of deposits in every run: the textbook picture.
- `call`: an ordinary function call (`check_amount`), no sleep. CPython asks a
  thread to let go of the GIL only every 5 ms (`sys.getswitchinterval()`), and
  the thread does so at its next function call or loop jump. Most of those land
  outside the read-to-write window and harm nothing; now and then one lands
  inside it, and the thread later writes back a balance that is 5 ms or more
  out of date, erasing everything the other threads deposited meanwhile. The
  loss is rare and comes in bursts: nothing in one run, most of it in the next.
  This is the race programmers meet.
- `nothing`: on CPython 3.11 no thread is ever switched out between these two
  lines, so nothing is lost and the bug hides until the code or the
  interpreter changes (a free-threaded Python, or one added call).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import command_line

BETWEEN = {  # what sits between the read and the write, and how to say it
    "sleep": "time.sleep(0)",
    "call": "a function call",
    "nothing": "nothing",
}
DEFAULT_BETWEEN = ("sleep", "call")
DEFAULT_THREADS = 8
DEFAULT_RUNS = 10
# Deposits per thread and run: the lockstep race shows in a few hundred; the
# call race needs each run to outlast several 5 ms switch intervals.
DEFAULT_DEPOSITS = {"sleep": 500, "call": 50_000, "nothing": 50_000}
MAX_THREADS = 64  # more only queue longer for the lock (the tests run 64)
MAX_DEPOSITS = 1_000_000  # per thread
MAX_RUNS = 100
# threads x deposits x runs allowed, per kind of pause. The locked account is the
# slow one: with sleep(0) a deposit costs 100-160 us (every sleep wakes threads
# that then queue on the lock), with a call 1-4 us, so each limit is at most
# ~16 s of locked deposits on 2 cores, far inside JOIN_TIMEOUT even when busy.
MAX_TOTAL_DEPOSITS = {"sleep": 100_000, "call": 4_000_000, "nothing": 4_000_000}
JOIN_TIMEOUT = 120.0  # seconds one run may take; longer is reported, never waited on forever


def check_amount(amount: int) -> None:
    """The extra call in the `call` race: the kind of check real code makes mid-update."""
    if amount <= 0:
        raise ValueError(f"a deposit must be positive, got {amount}")


class Account:
    """A balance updated by read-modify-write, with no protection at all."""

    def __init__(self, between: str = "sleep") -> None:
        if between not in BETWEEN:
            raise ValueError(f"unknown pause {between!r}; choose one of {', '.join(BETWEEN)}")
        self.balance = 0
        self.between = between  # what runs between the read and the write (module docstring)

    def deposit(self, amount: int) -> None:
        current = self.balance  # 1. read
        if self.between == "sleep":
            time.sleep(0)  # hands the GIL to another thread, which deposits too...
        elif self.between == "call":
            check_amount(amount)  # ...or, now and then, the GIL is handed over in here
        self.balance = current + amount  # 2. write: ...and this overwrites its deposit


class LockedAccount(Account):
    """The same account, fixed: the read and the write happen under one Lock."""

    def __init__(self, between: str = "sleep") -> None:
        super().__init__(between)
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

    @property
    def lost_share(self) -> float:
        return self.lost / self.deposits


def deposit_concurrently(account: Account, threads: int, deposits_each: int) -> RaceResult:
    """`threads` threads each deposit 1, `deposits_each` times, into `account`.

    A barrier releases all the threads at once, so they really do overlap.
    Raises TimeoutError if they have not finished within JOIN_TIMEOUT seconds.
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


@dataclass(frozen=True)
class Spread:
    """The losses of many runs of the same race: how often, how much, how unevenly."""

    runs: int
    runs_with_loss: int
    median: float  # share of deposits lost, 0..1
    low: float
    high: float
    seconds: float  # median seconds per run

    @classmethod
    def of(cls, results: list[RaceResult]) -> Spread:
        shares = [result.lost_share for result in results]
        return cls(
            runs=len(results),
            runs_with_loss=sum(result.lost > 0 for result in results),
            median=statistics.median(shares),
            low=min(shares),
            high=max(shares),
            seconds=statistics.median(result.seconds for result in results),
        )


def race_runs(
    account_kind: type[Account], between: str, threads: int, deposits_each: int, runs: int
) -> list[RaceResult]:
    """Run the same race `runs` times, each with a fresh account (`Spread.of` sums them up)."""
    return [
        deposit_concurrently(account_kind(between), threads, deposits_each) for _ in range(runs)
    ]


def print_spread_header(indent: str = "") -> None:
    print(
        f"{indent}{'between read and write':<24}{'account':<11}{'deposits/run':>12}"
        f"{'runs with loss':>16}{'lost: median':>14}{'min':>7}{'max':>7}{'s/run':>7}"
    )


def print_spread(
    between: str, account: str, deposits: int, spread: Spread, indent: str = ""
) -> None:
    print(
        f"{indent}{BETWEEN[between]:<24}{account:<11}{deposits:>12,}"
        f"{f'{spread.runs_with_loss} of {spread.runs}':>16}{spread.median:>14.1%}"
        f"{spread.low:>7.1%}{spread.high:>7.1%}{spread.seconds:>7.2f}"
    )


def run_table(
    deposits: dict[str, int], threads: int, runs: int, locked_runs: int, indent: str = ""
) -> dict[tuple[str, str], list[RaceResult]]:
    """For each pause in `deposits` (its deposits per thread and run): the unlocked race
    `runs` times, the locked one `locked_runs` times; a row printed for each."""
    print_spread_header(indent)
    races = {}
    for between, each in deposits.items():
        for name, kind, count in (
            ("no lock", Account, runs),
            ("with Lock", LockedAccount, locked_runs),
        ):
            races[(between, name)] = race_runs(kind, between, threads, each, count)
            print_spread(between, name, threads * each, Spread.of(races[(between, name)]), indent)
    return races


def between_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names from BETWEEN, in the order given."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [name for name in names if name not in BETWEEN]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(map(repr, unknown))} in {text!r}; choose from {', '.join(BETWEEN)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Provoke a lost-update race on a shared account, many runs of it, with a "
        "sleep(0) or a plain function call between the read and the write; then fix it "
        "with a Lock."
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
        help="deposits of 1 per thread and run (default: "
        + ", ".join(f"{n:,} with {name}" for name, n in DEFAULT_DEPOSITS.items())
        + ")",
    )
    parser.add_argument(
        "--runs",
        type=command_line.bounded_int(MAX_RUNS),
        default=DEFAULT_RUNS,
        help=f"runs of each race, to see how the loss varies (default: {DEFAULT_RUNS})",
    )
    parser.add_argument(
        "--between",
        type=between_list,
        default=DEFAULT_BETWEEN,
        help="what runs between the read and the write, comma-separated: sleep (lockstep), "
        "call (the realistic race), nothing (the hidden bug) (default: sleep,call)",
    )
    args = parser.parse_args(argv)
    for between in args.between:
        deposits = args.deposits or DEFAULT_DEPOSITS[between]
        total = args.threads * deposits * args.runs
        if total > MAX_TOTAL_DEPOSITS[between]:
            parser.error(
                f"{args.threads} threads x {deposits:,} deposits x {args.runs} runs = "
                f"{total:,} deposits with {between} between read and write; at most "
                f"{MAX_TOTAL_DEPOSITS[between]:,} (fewer --threads, --deposits or --runs)"
            )

    threads = f"{args.threads} thread" + "s" * (args.threads != 1)
    verb = "deposits" if args.threads == 1 else "deposit"
    print(f"{threads} {verb} 1 at a time into one account; {args.runs} runs of each race")
    deposits = {between: args.deposits or DEFAULT_DEPOSITS[between] for between in args.between}
    try:
        races = run_table(deposits, args.threads, args.runs, args.runs)
    except TimeoutError as slow:
        print(f"Stopped: {slow}; the machine is busy or the run too big: try fewer --deposits")
        return 1
    except KeyboardInterrupt:
        print("Interrupted.")
        return 130
    failures = [
        f"the locked account lost deposits ({between} between)"
        for (between, name), results in races.items()
        if name == "with Lock" and any(result.lost for result in results)
    ]
    lockstep = races.get(("sleep", "no lock"), [])
    if args.threads > 1 and not all(result.lost for result in lockstep):
        failures.append("the lockstep race lost nothing in some runs")
    if args.threads == 1:
        print("One thread cannot race with itself: nothing can be lost. Try --threads 2.")
    if "nothing" in args.between:
        print("With nothing between read and write, CPython 3.11 never switches mid-deposit:")
        print("the bug is there but hides. One added call (--between call) brings it back.")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
