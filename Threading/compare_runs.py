"""The command line MultiThreading.py and MultiProcessing.py share: the options
(--kind, --workers, --tasks, --delay) and one table comparing sequential with each
way of running the tasks. README.md, "Threads" and "Processes", shows the tables."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import command_line
import machine_info
import workloads
from slow_server import SlowServer

MAX_WORKERS = 256  # a sanity limit: each process costs tens of MB, each thread a stack
MAX_TASKS = 10_000
DEFAULT_TASKS = {"cpu": 16, "io": 32}  # ~1 s of primes; 32 waits, as in the README


def argument_parser(
    description: str, default_kind: str, workers_are: str
) -> argparse.ArgumentParser:
    """The options both scripts take: --kind, --workers, --tasks, --delay."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--kind", choices=workloads.KINDS, default=default_kind, help=f"default: {default_kind}"
    )
    parser.add_argument(
        "--workers",
        type=command_line.bounded_int(MAX_WORKERS),
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


def compare(args: argparse.Namespace, runners: dict[str, Callable[..., list[int]]]) -> int:
    """Run the tasks sequentially, then with each runner; print one table; 0 if answers agree."""
    count = args.tasks or DEFAULT_TASKS[args.kind]
    print(
        f"{count} {args.kind}-bound tasks, {args.workers} workers, "
        f"{machine_info.usable_cores()} CPU cores, Python {platform.python_version()}"
    )
    with SlowServer(args.delay) as server:  # only io tasks talk to it
        tasks = workloads.make_tasks(args.kind, count, address=server.address)
        baseline, expected = workloads.timed(workloads.run_sequentially, tasks)
        rows = [("sequential", baseline, expected)]
        for name, run in runners.items():
            seconds, answers = workloads.timed(run, tasks, args.workers)
            rows.append((name, seconds, answers))

    width = max(len(name) for name, _, _ in rows)
    print(f"{'how':<{width}}  {'seconds':>7}  {'speed-up':>8}  answers")
    for name, seconds, answers in rows:
        same = "same as sequential" if answers == expected else "DIFFERENT from sequential"
        print(f"{name:<{width}}  {seconds:7.3f}  {baseline / seconds:7.2f}x  {same}")
    return 0 if all(answers == expected for _, _, answers in rows) else 1
