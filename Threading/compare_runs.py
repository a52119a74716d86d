"""The command line MultiThreading.py and MultiProcessing.py share: the options
(--kind, --workers, --tasks, --delay) and one table comparing sequential with each
way of running the tasks. README.md, "Threads" and "Processes", shows the tables."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from concurrent.futures import BrokenExecutor

import command_line
import machine_info
import workloads
from slow_server import SlowServer

MAX_THREADS = 256  # sanity limits: each thread reserves a stack,
MAX_PROCESSES = 64  # each process is a whole interpreter, tens of MB
MAX_TASKS = 10_000
DEFAULT_TASKS = {"cpu": 16, "io": 32}  # ~1 s of primes; 32 waits, as in the README
CPU_TASK_SECONDS = 0.06  # about what one window of primes takes on one core
MAX_SEQUENTIAL_SECONDS = 120.0  # the sequential baseline alone may take this long at most


def argument_parser(
    description: str, default_kind: str, workers_are: str, max_workers: int
) -> argparse.ArgumentParser:
    """The options both scripts take: --kind, --workers, --tasks, --delay."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--kind", choices=workloads.KINDS, default=default_kind, help=f"default: {default_kind}"
    )
    parser.add_argument(
        "--workers",
        type=command_line.bounded_int(max_workers),
        default=4,
        help=f"{workers_are} (default: 4)",
    )
    parser.add_argument(
        "--tasks",
        type=command_line.bounded_int(MAX_TASKS),
        help=f"how many tasks (default: {DEFAULT_TASKS['cpu']} cpu, {DEFAULT_TASKS['io']} io)",
    )
    parser.add_argument(
        "--delay",
        type=command_line.delay_seconds,
        default=workloads.IO_DELAY,
        help=f"io: seconds the server waits before each answer (default: {workloads.IO_DELAY})",
    )
    return parser


def parse_checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the options, and refuse a run whose sequential baseline alone would take minutes."""
    args = parser.parse_args(argv)
    args.tasks = args.tasks or DEFAULT_TASKS[args.kind]
    each = CPU_TASK_SECONDS if args.kind == "cpu" else args.delay
    if args.tasks * each > MAX_SEQUENTIAL_SECONDS:
        parser.error(
            f"{args.tasks} {args.kind} tasks of about {each:g} s would take about "
            f"{args.tasks * each:.0f} s one after another, and as long again for each way of "
            f"running them; keep tasks x seconds per task under {MAX_SEQUENTIAL_SECONDS:.0f} s"
        )
    return args


def compare(args: argparse.Namespace, runners: dict[str, Callable[..., list[int]]]) -> int:
    """Run the tasks sequentially, then with each runner; print one table; 0 if answers agree."""
    count = args.tasks
    print(
        f"{count} {args.kind}-bound tasks, {args.workers} workers, "
        f"{machine_info.usable_cores()} CPU cores, Python {platform.python_version()}"
    )
    try:
        with SlowServer(args.delay) as server:  # only io tasks talk to it
            tasks = workloads.make_tasks(args.kind, count, address=server.address)
            baseline, expected = workloads.timed(workloads.run_sequentially, tasks)
            rows = [("sequential", baseline, expected)]
            for name, run in runners.items():
                seconds, answers = workloads.timed(run, tasks, args.workers)
                rows.append((name, seconds, answers))
    except (workloads.RunFailed, BrokenExecutor, OSError) as failure:
        # A worker killed or crashed, a task that raised, the slow server gone: one
        # line that says so, not a traceback through the runner's plumbing.
        print(f"FAILED: {type(failure).__name__}: {failure}")
        return 1
    except KeyboardInterrupt:
        print("Interrupted.")
        return 130

    width = max(len(name) for name, _, _ in rows)
    print(f"{'how':<{width}}  {'seconds':>7}  {'speed-up':>8}  answers")
    for name, seconds, answers in rows:
        same = "same as sequential" if answers == expected else "DIFFERENT from sequential"
        print(f"{name:<{width}}  {seconds:7.3f}  {baseline / seconds:7.2f}x  {same}")
    return 0 if all(answers == expected for _, _, answers in rows) else 1
