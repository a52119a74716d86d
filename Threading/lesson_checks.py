"""What each part of the demo's lesson needs before demo.py may claim it.

demo.py measures; these functions decide from the figures alone whether the run
showed each part, and say it in words either way: the lesson with its figures
when it showed, what was seen instead when it did not. On a machine shared with
other programs, a ratio closer to 1 than NOISE can be their load rather than the
lesson, so every claim that one way beat another needs at least that margin.
README.md, "What you will see", explains the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import convoy
import deadlock
import payload_sweep
import race

NOISE = 1.25  # a ratio closer to 1 than this may be other programs' load, not the lesson
IO_SPEEDUP = 2.0  # one thread per wait must at least halve the time of the waits
# Beside one computing thread a round trip must be at least this much slower than
# alone, and than beside one computing process (the control: as busy a core, but a
# GIL of its own), for the slowdown to be the convoy and not a lack of cores.
CONVOY = 2.0


@dataclass(frozen=True)
class Part:
    """One part of the lesson: whether this run showed it, in words either way."""

    shown: bool
    lesson: str  # what the run showed, with its figures
    seen: str  # what the run saw instead, with its figures and what fell short


def verdict(words: str, shortfalls: list[str]) -> Part:
    """A part shown when nothing fell short; otherwise the words and each shortfall."""
    return Part(not shortfalls, words, f"{words}: {' and '.join(shortfalls)}")


def cpu_part(
    processes: float, threads: float, workers: int, cores: int, gil: bool, load: str
) -> Part:
    """Speed-ups over sequential of `workers` processes and threads on CPU-bound work."""
    figures = (
        f"the speed-up on CPU-bound work was {processes:.2f}x in {workers} processes "
        f"{'but' if gil else 'and'} {threads:.2f}x in {workers} threads"
    )
    shortfalls = []
    if cores < 2:
        # On one core a "speed-up" of processes is never parallelism: two processes
        # merely get more turns than one beside other programs' work.
        shortfalls.append("one core cannot run two processes at once")
    elif not gil:  # free-threaded: threads compute in parallel too; both must help
        if min(processes, threads) < NOISE:
            shortfalls.append(f"without the GIL both should be {NOISE}x faster than sequential")
    else:
        if processes < NOISE:
            shortfalls.append(f"processes were not {NOISE}x faster than sequential")
        if processes < NOISE * threads:
            shortfalls.append(f"processes were not {NOISE}x faster than threads")
        if threads >= NOISE:  # the GIL rules it out: sequential was slowed by other programs
            shortfalls.append(
                f"threads were {NOISE}x faster than sequential, which the GIL rules out"
            )
    on_cores = f"on {cores} core" + "s" * (cores != 1)
    return Part(
        not shortfalls,
        f"{on_cores}, {figures} ({'the GIL' if gil else 'no GIL'})",
        f"{on_cores} (load average {load}), {figures}: {' and '.join(shortfalls)}",
    )


def io_part(waits: int, speedup: float) -> Part:
    """The speed-up of one thread per wait over waiting one at a time."""
    words = f"{waits} threads made {waits} waits {speedup:.1f}x faster"
    shortfalls = [] if speedup >= IO_SPEEDUP else [f"not even {IO_SPEEDUP:g}x"]
    return verdict(words, shortfalls)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def convoy_part(rows: dict[float, list[convoy.Convoy]]) -> Part:
    """Round trips at the first (default) switch interval, alone, beside threads and beside
    the control process; the second interval's one-thread row, if it shortened the queue."""
    default, *others = rows.values()
    alone = next(row for row in default if row.beside == "nothing")
    one = next(row for row in default if row.beside == "1 thread")
    most = max(default, key=lambda row: row.cpu_threads)
    control = next(row for row in default if row.beside == "1 process")
    words = (
        f"a round trip of {ms(alone.median)} alone took {ms(one.median)} beside 1 computing "
        f"thread and {ms(most.median)} beside {most.beside} (the convoy), but "
        f"{ms(control.median)} beside 1 computing process (a GIL of its own)"
    )
    for other in others:  # say it only where this run showed it
        shorter = next(row for row in other if row.beside == "1 thread")
        if shorter.median * CONVOY <= one.median:
            words += (
                f"; beside 1 thread at a {shorter.switch_interval * 1000:g} ms switch interval, "
                f"{ms(shorter.median)}"
            )
    shortfalls = []
    if one.median < CONVOY * alone.median:
        shortfalls.append(f"beside 1 thread it was not {CONVOY:g}x slower than alone")
    if one.median < CONVOY * control.median:
        shortfalls.append(f"not {CONVOY:g}x slower than beside a process, so not the GIL")
    return verdict(words, shortfalls)


def payload_part(runs: list[payload_sweep.SizeRun]) -> Part:
    """Threads, pickling processes and shared memory at the smallest and largest sizes."""
    smallest, largest = runs[0], runs[-1]
    threads, pickled, shared = (largest.seconds[name] for name in payload_sweep.RUNNERS)
    label = payload_sweep.size_label
    # Processes' time over threads': what the copying adds shows as its growth with size.
    small_cost = smallest.seconds["processes"] / smallest.seconds["threads"]
    large_cost = pickled / threads
    words = (
        f"processes took {small_cost:.2f}x threads' time with {label(smallest.size)} per "
        f"task and {large_cost:.2f}x with {label(largest.size)} ({pickled:.2f} s against "
        f"{threads:.2f} s: pickling), {shared:.2f} s from shared memory"
    )
    shortfalls = []
    if large_cost < NOISE:
        shortfalls.append(
            f"at {label(largest.size)} processes were not {NOISE}x slower than threads"
        )
    if large_cost < NOISE * small_cost:
        shortfalls.append(f"their cost did not grow {NOISE}x with the data")
    if shared * NOISE > pickled:
        shortfalls.append(f"shared memory was not {NOISE}x faster than pickling")
    return verdict(words, shortfalls)


def race_part(races: dict[tuple[str, str], list[race.RaceResult]]) -> Part:
    """The unlocked races (lockstep, and with a plain call) lose deposits; locked ones none."""
    lockstep = race.Spread.of(races[("sleep", "no lock")])
    call = race.Spread.of(races[("call", "no lock")])
    locked_lost = sum(r.lost for key in races if key[1] == "with Lock" for r in races[key])
    words = (
        f"unlocked deposits were lost in {lockstep.runs_with_loss} of {lockstep.runs} "
        f"lockstep runs (median {lockstep.median:.1%}) and, with a plain call instead of a "
        f"sleep, in {call.runs_with_loss} of {call.runs} runs ({call.low:.0%} to "
        f"{call.high:.0%}); locked ones lost {locked_lost:,}"
    )
    shortfalls = []
    if lockstep.runs_with_loss < lockstep.runs:
        shortfalls.append("the lockstep race did not lose in every run")
    if not call.runs_with_loss:
        shortfalls.append("the race with a call lost nothing in any run")
    if locked_lost:
        shortfalls.append("the Lock did not protect the balance")
    return verdict(words, shortfalls)


def deadlock_part(broken: deadlock.TransferRun, fixed: deadlock.TransferRun) -> Part:
    """The opposite-order run deadlocks and is detected; the ordered one never deadlocks."""
    done = broken.completed + fixed.completed
    shown = bool(broken.deadlocks) and not fixed.deadlocks and done == 4
    return Part(
        shown,
        "the lock-order deadlock was detected and one global order avoided it",
        f"opposite lock order deadlocked {len(broken.deadlocks)} time(s), one global order "
        f"{len(fixed.deadlocks)} time(s), {done} of 4 transfers done",
    )
