"""The price of sending data to processes: a sweep of payload sizes, 1 KB to 64 MB per task.

Every task does the same computing (counting primes, ~40 ms) on a block of data
that grows from run to run; it reads one byte of every 4 KB page of its block,
so every page really reaches it. Threads share the block: each gets a reference,
whatever its size. A process pool pickles the block into every task's message,
sends it down a pipe and unpickles it in the child: a copy or more per task,
which grows with the block until it costs more than the second core saves.
`multiprocessing.shared_memory` puts the block in memory both sides map: it is
copied in once, and each task carries only its name. README.md, "The price of
sending data to processes", explains the run.

    python Threading/payload_sweep.py --sizes 1KB,1MB,16MB,64MB
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import command_line
import parent_watch
import workloads

TASKS = 4  # tasks per run, each with its own copy (or view) of the block
WORKERS = 2  # threads or processes: the 2 cores of the target machine
WORK_SIZE = 20_000  # numbers per task's prime count: ~40 ms of pure Python
PAGE = 4096  # a task reads one byte per page of its block
PATTERN = bytes(range(251))  # a prime length, so the byte read from each page varies
KB, MB = 1024, 1024 * 1024
DEFAULT_SIZES = (KB, 64 * KB, MB, 8 * MB, 16 * MB, 32 * MB, 64 * MB)
MAX_SIZE = 256 * MB  # per task; a pool may hold a few pickled copies at once
MAX_REPEATS = 20
MAX_TOTAL = 4 * 1024 * MB  # bytes of blocks in a whole run (sizes x repeats): about a minute
UNITS = {"B": 1, "KB": KB, "MB": MB}
SHM_FOLDER = "/dev/shm"  # where Linux keeps shared memory segments


def make_block(size: int) -> bytes:
    """`size` bytes of a repeating pattern (not zeros, so a wrong copy shows in the answer)."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def page_sum(block: bytes | memoryview) -> int:
    """One byte from every page: the cheapest read that still touches all of the block."""
    return sum(block[::PAGE])


def task_on_bytes(args: tuple[int, bytes]) -> int:
    """A task given its block directly: with threads a reference, with processes a copy."""
    window, block = args
    return workloads.count_primes(window, WORK_SIZE) + page_sum(block)


def task_on_shared_memory(args: tuple[int, str, int]) -> int:
    """A task given only the name of a shared-memory block: it maps the block, copies nothing."""
    window, name, size = args
    block = shared_memory.SharedMemory(name=name)
    try:
        with block.buf[:size] as view:  # a view must be released before the block is closed
            return workloads.count_primes(window, WORK_SIZE) + page_sum(view)
    finally:
        block.close()  # this process's mapping; the parent unlinks the block itself


@dataclass
class Pools:
    """A thread pool and a process pool, started once and reused for every size,
    so the sweep measures moving data, not starting workers."""

    threads: ThreadPoolExecutor
    processes: ProcessPoolExecutor


@contextmanager
def started_pools() -> Iterator[Pools]:
    # The resource tracker (the process that unlinks shared memory a program
    # forgot) must be running before the pool's children start, so that they
    # share it. A child started before it would run a tracker of its own, which
    # warns about "leaked" blocks at exit and may unlink them while in use.
    resource_tracker.ensure_running()
    with (
        ThreadPoolExecutor(max_workers=WORKERS) as threads,
        ProcessPoolExecutor(
            max_workers=WORKERS,
            initializer=parent_watch.exit_with_parent,  # no orphans, no leaked segments
            initargs=(os.getpid(),),
        ) as processes,
    ):
        list(processes.map(abs, range(WORKERS)))  # start the children now, not mid-measure
        yield Pools(threads, processes)


def run_threads(block: bytes, pools: Pools) -> list[int]:
    tasks = [(window, block) for window in range(TASKS)]  # TASKS references to one block
    return list(pools.threads.map(task_on_bytes, tasks))


def run_processes(block: bytes, pools: Pools) -> list[int]:
    tasks = [(window, block) for window in range(TASKS)]  # each pickled with its own copy
    return list(pools.processes.map(task_on_bytes, tasks))


def shared_memory_free() -> int | None:
    """Bytes free in /dev/shm, where Linux keeps shared memory; None where there is none."""
    try:
        stats = os.statvfs(SHM_FOLDER)
    except (OSError, AttributeError):  # not Linux: the OS sizes shared memory itself
        return None
    return stats.f_bavail * stats.f_frsize


def run_shared_memory(block: bytes, pools: Pools) -> list[int]:
    # A segment is created sparse: writing past what /dev/shm can hold kills this
    # process with SIGBUS, no exception (Docker gives containers 64 MB by default).
    free = shared_memory_free()
    if free is not None and free < len(block):
        raise OSError(
            errno.ENOSPC,
            f"{size_label(len(block))} does not fit in {SHM_FOLDER} ({free // MB} MB free; "
            "in Docker, run with --shm-size=1g)",
        )
    shared = shared_memory.SharedMemory(create=True, size=max(len(block), 1))
    try:
        shared.buf[: len(block)] = block  # the one copy
        tasks = [(window, shared.name, len(block)) for window in range(TASKS)]
        return list(pools.processes.map(task_on_shared_memory, tasks))
    finally:
        shared.close()
        shared.unlink()  # the block outlives every process that mapped it until this


RUNNERS = {
    "threads": run_threads,
    "processes": run_processes,
    "shared memory": run_shared_memory,
}


class WrongAnswers(RuntimeError):
    """A runner's answers differ from the expected ones: the data did not arrive intact."""


@dataclass(frozen=True)
class SizeRun:
    """Seconds each runner took for TASKS tasks with `size` bytes each."""

    size: int
    seconds: dict[str, float]

    def ratio(self, slower: str, faster: str) -> float:
        """How many times faster `faster` was than `slower` (below 1: it was slower)."""
        return self.seconds[slower] / self.seconds[faster]


@functools.cache
def prime_counts() -> tuple[int, ...]:
    """Each task's prime count, the part of its answer that no block size changes:
    counted once, in this process, rather than again before every row of the sweep."""
    return tuple(workloads.count_primes(window, WORK_SIZE) for window in range(TASKS))


def measure(size: int, pools: Pools) -> SizeRun:
    """Time each runner on TASKS tasks of `size` bytes; check every answer."""
    block = make_block(size)
    data_sum = page_sum(block)
    expected = [count + data_sum for count in prime_counts()]
    seconds = {}
    for name, run in RUNNERS.items():
        started = time.perf_counter()
        answers = run(block, pools)
        seconds[name] = time.perf_counter() - started
        if answers != expected:
            raise WrongAnswers(f"{name} gave wrong answers for {size_label(size)} per task")
    return SizeRun(size, seconds)


def size_label(size: int) -> str:
    for unit in ("MB", "KB"):
        if size >= UNITS[unit] and size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]} {unit}"
    return f"{size} B"


def parse_size(text: str) -> int:
    """An argparse type: a size like 64KB, 16MB or 4096 (bytes), from 1 B to MAX_SIZE."""
    match = re.fullmatch(r"\s*(\d+)\s*(B|KB|MB)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size like 64KB or 16MB, got {text!r}")
    size = int(match[1]) * UNITS[(match[2] or "B").upper()]
    if not 1 <= size <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be from 1 B to {size_label(MAX_SIZE)}, got {text}")
    return size


def print_header(indent: str = "") -> None:
    names = "".join(f"{name:>15}" for name in RUNNERS)
    print(f"{indent}{'per task':>9}{names}{'processes vs threads':>22}")


def print_row(run: SizeRun, indent: str = "") -> None:
    cells = "".join(f"{run.seconds[name]:>13.3f} s" for name in RUNNERS)
    print(f"{indent}{size_label(run.size):>9}{cells}{run.ratio('threads', 'processes'):>21.2f}x")


def run_table(
    sizes: tuple[int, ...],
    repeats: int = 1,
    indent: str = "",
    progress: Callable[[str], None] = lambda text: None,
) -> list[SizeRun]:
    """Measure every size `repeats` times and print a row per size with the median times.

    The repeats are interleaved (every size once, then again), so a burst of load
    elsewhere hits all sizes alike; each row is printed as its last repeat ends.
    """
    print_header(indent)
    seconds: dict[int, dict[str, list[float]]] = {size: {} for size in sizes}
    runs = []
    with started_pools() as pools:
        for repeat in range(1, repeats + 1):
            for size in sizes:
                progress(f"payload: run {repeat} of {repeats}, {size_label(size)}")
                for name, took in measure(size, pools).seconds.items():
                    seconds[size].setdefault(name, []).append(took)
                if repeat == repeats:
                    medians = {name: statistics.median(t) for name, t in seconds[size].items()}
                    runs.append(SizeRun(size, medians))
                    print_row(runs[-1], indent)
    progress("")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Run {TASKS} tasks of the same computing, each with a block of data of "
        f"a given size, in {WORKERS} threads, {WORKERS} processes (the block pickled into "
        "each task) and 2 processes reading it from shared memory; compare the times."
    )
    parser.add_argument(
        "--sizes",
        type=command_line.comma_list(parse_size),
        default=DEFAULT_SIZES,
        help="comma-separated sizes per task, e.g. 1KB,1MB,64MB "
        "(default: 1KB,64KB,1MB,8MB,16MB,32MB,64MB; at most 256MB)",
    )
    parser.add_argument(
        "--repeats",
        type=command_line.bounded_int(MAX_REPEATS),
        default=1,
        help=f"runs of every size; the table shows medians (default: 1, at most {MAX_REPEATS})",
    )
    args = parser.parse_args(argv)
    if sum(args.sizes) * args.repeats > MAX_TOTAL:
        parser.error(
            f"{size_label(sum(args.sizes))} of blocks x {args.repeats} repeats is over "
            f"{size_label(MAX_TOTAL)} in all; fewer or smaller --sizes, or fewer --repeats"
        )
    print(
        f"{TASKS} tasks of ~40 ms of computing each, on {WORKERS} workers (pools started "
        f"beforehand); seconds per run, median of {args.repeats}"
    )
    try:
        run_table(args.sizes, args.repeats)
    except WrongAnswers as wrong:
        print(f"FAILED: {wrong}")
        return 1
    except (BrokenExecutor, OSError) as failure:  # a child killed, shared memory too small
        print(f"FAILED: {type(failure).__name__}: {failure}")
        return 1
    except KeyboardInterrupt:
        print("Interrupted.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
