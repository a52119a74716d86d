"""BlockingQueue benchmark: speed against queue.Queue, batching, and a bounded executor's memory.

    python BlockingQueue/bench.py                 # median of 5 runs per row, ~2 min
    python BlockingQueue/bench.py --repeats 3     # quicker, noisier

1. For 1, 4 and 8 producers (and as many consumers) and maxsize 1, 64 and 0
   (unbounded), P producers put N items in all and C consumers get() them
   until a stop marker, as fast as they can, through queue.Queue and through
   BlockingQueue. The two queues take turns, so a busy moment hurts both.
2. At 4 producers and 4 consumers: single put()/get() against put_many() /
   get_many() in batches of 64, and queue.SimpleQueue (a C queue with no
   limit) beside BlockingQueue without one. Batched runs end with shutdown().
3. The same job (4,000 chunks of 64 KiB, each "sent" by one of 4 workers)
   through ThreadPoolExecutor and through BoundedExecutor, at two sizes, each
   run in its own process: peak RSS, and how much the job added to it.

Each run is timed from the moment every thread is ready until the last
consumer is done. Prints items/s (the median), ratios and the machine, then
each target as a PASS or FAIL line, a `headline:` line, and `targets: N of M
met`. Exits 1 when any target was missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import bounded_executor
from producer_consumer import MiB, bounded

from BlockingQueue import BlockingQueue, ShutDown

THREADS = (1, 4, 8)  # producers, and as many consumers
MAXSIZES = (1, 64, 0)
ITEMS = {1: 20_000, 64: 200_000, 0: 200_000}  # per run; maxsize 1 hands over one at a time
TARGET_VS_QUEUE = (4, 64, 1.2)  # 4 producers / 4 consumers, maxsize 64: at least 1.2x
STOP = object()  # the marker that tells a consumer to finish

BATCH = 64  # items per put_many() / get_many()
BATCH_THREADS = 4
BATCH_MAXSIZE = 1024  # room for 16 batches; with room for one, a batch is a hand-over
BATCH_ITEMS = 1_000_000  # per batched run: they are fast
TARGET_BATCH = 3.0  # batches of 64: at least 3x the items/s of single calls

JOB_SIZES = (1_000, 4_000)  # tasks per executor job
TARGET_FLAT = 2.0  # bounded executor's growth: at most 2x what its limit lets it hold


def unlimited_simple_queue(maxsize: int) -> queue.SimpleQueue:
    return queue.SimpleQueue()  # it has no maxsize


def items_per_second(
    make_queue: Callable[[int], Any], threads: int, maxsize: int, items: int, batch: int = 0
) -> float:
    """One run: `threads` producers put `items` in all, as many consumers take them.

    With `batch`, they use put_many()/get_many() of that size and the run ends
    with shutdown(); otherwise single put()/get() and one stop marker each.
    """
    q = make_queue(maxsize)
    per_producer = items // threads
    received = [0] * threads
    ready = threading.Barrier(2 * threads + 1)  # everyone, and the clock

    def produce() -> None:
        ready.wait()
        if batch:
            chunk = list(range(batch))
            for _ in range(per_producer // batch):
                q.put_many(chunk)
            q.put_many(range(per_producer % batch))
        else:
            put = q.put
            for n in range(per_producer):
                put(n)

    def consume(me: int) -> None:
        count = 0
        ready.wait()
        if batch:
            get_many = q.get_many
            try:
                while True:
                    count += len(get_many(batch))
            except ShutDown:
                pass
        else:
            get = q.get
            while get() is not STOP:
                count += 1
        received[me] = count

    # Daemon threads: if Ctrl+C stops the main thread mid-run, the consumers never
    # get their stop marker, and the program must still be able to exit.
    producers = [threading.Thread(target=produce, daemon=True) for _ in range(threads)]
    consumers = [threading.Thread(target=consume, args=(c,), daemon=True) for c in range(threads)]
    for thread in producers + consumers:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in producers:
        thread.join()
    if batch:
        q.shutdown()  # consumers take what is left, then stop
    else:
        for _ in consumers:
            q.put(STOP)
    for thread in consumers:
        thread.join()
    seconds = time.perf_counter() - started
    if sum(received) != per_producer * threads:
        sys.exit(f"{make_queue.__name__} lost items: {sum(received)} of {per_producer * threads}")
    return per_producer * threads / seconds


def median_rates(ways: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median items/s of each way; the ways take turns and alternate who goes first."""
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for run in range(repeats):
        order = list(ways) if run % 2 == 0 else list(reversed(ways))
        for name in order:
            rates[name].append(ways[name]())
    return {name: statistics.median(values) for name, values in rates.items()}


def print_table(rows: list[list[str]]) -> None:
    """The first row is the header; the first column is left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        first, *rest = row
        cells = [first.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * width for width in widths))


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), switch interval "
        f"{sys.getswitchinterval() * 1000:.0f} ms, load average {load:.2f} at the start"
    )


def versus_queue_queue(repeats: int, scale: float) -> tuple[list[list[str]], float]:
    """Part 1: the 9 set-ups; returns the table and the target set-up's ratio."""
    table = [["threads", "maxsize", "queue.Queue", "BlockingQueue", "ratio"]]
    target_ratio = 0.0
    for threads in THREADS:
        for maxsize in MAXSIZES:
            items = max(1_000, int(ITEMS[maxsize] * scale))
            print(f"  {threads}P/{threads}C maxsize {maxsize}: {items:,} items ...", flush=True)
            rates = median_rates(
                {
                    "queue.Queue": partial(items_per_second, queue.Queue, threads, maxsize, items),
                    "ours": partial(items_per_second, BlockingQueue, threads, maxsize, items),
                },
                repeats,
            )
            ratio = rates["ours"] / rates["queue.Queue"]
            if (threads, maxsize) == TARGET_VS_QUEUE[:2]:
                target_ratio = ratio
            table.append(
                [
                    f"{threads}P/{threads}C",
                    f"{maxsize}",
                    f"{rates['queue.Queue']:,.0f}",
                    f"{rates['ours']:,.0f}",
                    f"{ratio:.2f}x",
                ]
            )
    return table, target_ratio


def batches_and_simple_queue(repeats: int, scale: float) -> tuple[list[list[str]], float]:
    """Part 2: batching and queue.SimpleQueue at 4P/4C; returns the table and the batch gain."""
    single_items = max(1_000, int(ITEMS[64] * scale))
    batch_items = max(1_000, int(BATCH_ITEMS * scale))
    n = BATCH_THREADS
    batched = f"BlockingQueue put_many/get_many of {BATCH}"
    ways: dict[str, tuple[int, Callable[[], float]]] = {  # name: (maxsize, one run)
        "BlockingQueue put/get": (
            BATCH_MAXSIZE,
            partial(items_per_second, BlockingQueue, n, BATCH_MAXSIZE, single_items),
        ),
        batched: (
            BATCH_MAXSIZE,
            partial(items_per_second, BlockingQueue, n, BATCH_MAXSIZE, batch_items, BATCH),
        ),
        "  the same, with room for one batch": (
            BATCH,
            partial(items_per_second, BlockingQueue, n, BATCH, batch_items, BATCH),
        ),
        "queue.Queue put/get": (
            BATCH_MAXSIZE,
            partial(items_per_second, queue.Queue, n, BATCH_MAXSIZE, single_items),
        ),
        "BlockingQueue put/get, no limit": (
            0,
            partial(items_per_second, BlockingQueue, n, 0, single_items),
        ),
        "queue.SimpleQueue put/get (C, no limit)": (
            0,
            partial(items_per_second, unlimited_simple_queue, n, 0, single_items),
        ),
    }
    print(f"  {n}P/{n}C: single calls, batches of {BATCH}, queue.SimpleQueue ...", flush=True)
    rates = median_rates({name: run for name, (_, run) in ways.items()}, repeats)
    base = rates["BlockingQueue put/get"]
    table = [[f"{n}P/{n}C", "maxsize", "items/s", "vs BlockingQueue put/get"]]
    for name, (maxsize, _) in ways.items():
        table.append([name, f"{maxsize}", f"{rates[name]:,.0f}", f"{rates[name] / base:.2f}x"])
    return table, rates[batched] / base


def executor_memory() -> tuple[list[list[str]], dict[tuple[str, int], bounded_executor.JobReport]]:
    """Part 3: each executor at each job size, each run in a fresh process."""
    reports = {}
    for tasks in JOB_SIZES:
        for executor in ("unbounded", "bounded"):
            print(f"  {executor} executor, {tasks:,} tasks ...", flush=True)
            reports[executor, tasks] = bounded_executor.run_job_in_child(executor, tasks=tasks)
    table = [["executor", "tasks", "seconds", "submitting", "peak RSS", "added by the job"]]
    for (executor, tasks), r in reports.items():
        name = (
            "ThreadPoolExecutor (no limit)"
            if executor == "unbounded"
            else f"BoundedExecutor (max_queued {r.max_queued})"
        )
        table.append(
            [
                name,
                f"{tasks:,}",
                f"{r.seconds:.2f}",
                f"{r.submitting:.2f} s",
                f"{r.peak_rss / MiB:,.1f} MiB",
                f"{r.growth / MiB:,.1f} MiB",
            ]
        )
    return table, reports


def main() -> int:
    parser = argparse.ArgumentParser(
        description="BlockingQueue against queue.Queue (1/4/8 threads a side, maxsize 1/64/0), "
        "batches of 64 against single calls, queue.SimpleQueue, and a bounded executor's "
        "memory against ThreadPoolExecutor's. About 2 minutes."
    )
    parser.add_argument(
        "--repeats", type=bounded(int, 1, 50), default=5, help="runs per row (median)"
    )
    parser.add_argument(
        "--scale",
        type=bounded(float, 0.01, 100),
        default=1.0,
        help="multiply the items per run (default 1: 200,000, or 20,000 at maxsize 1)",
    )
    args = parser.parse_args()

    print(f"machine: {machine()}")
    print("\n1. BlockingQueue against queue.Queue")
    versus, ratio = versus_queue_queue(args.repeats, args.scale)
    print(f"\n2. Batches, and the C queue ({BATCH_THREADS} producers, {BATCH_THREADS} consumers)")
    batches, batch_gain = batches_and_simple_queue(args.repeats, args.scale)
    print("\n3. The same job through two executors, each run in its own process")
    memory, reports = executor_memory()

    print(f"\nitems/s, median of {args.repeats} runs (higher is better)")
    print_table(versus)
    print()
    print_table(batches)
    job = reports["bounded", JOB_SIZES[-1]]
    print(
        f"\n{job.tasks:,} chunks of {job.payload // 1024} KiB, {job.workers} workers, each task "
        f"{bounded_executor.ROUND_TRIP * 1000:.0f} ms; peak RSS of the whole process"
    )
    print_table(memory)

    allowed = job.limit_allows
    unbounded = reports["unbounded", JOB_SIZES[-1]]
    threads, maxsize, at_least = TARGET_VS_QUEUE
    targets = [
        (
            ratio >= at_least,
            f"{threads}P/{threads}C maxsize {maxsize}: BlockingQueue {ratio:.2f}x queue.Queue "
            f"(target >= {at_least}x)",
        ),
        (
            batch_gain >= TARGET_BATCH,
            f"{BATCH_THREADS}P/{BATCH_THREADS}C maxsize {BATCH_MAXSIZE}: batches of {BATCH} "
            f"{batch_gain:.2f}x the items/s of single put/get (target >= {TARGET_BATCH:.0f}x)",
        ),
        (
            all(reports["bounded", n].growth <= TARGET_FLAT * allowed for n in JOB_SIZES),
            "BoundedExecutor stays flat: "
            + " and ".join(
                f"+{reports['bounded', n].growth / MiB:.1f} MiB at {n:,} tasks" for n in JOB_SIZES
            )
            + f" (target <= {TARGET_FLAT:.0f}x the {allowed / MiB:.1f} MiB its limit allows; "
            f"ThreadPoolExecutor: +{unbounded.growth / MiB:.0f} MiB at {unbounded.tasks:,})",
        ),
    ]
    print()
    for met, claim in targets:
        print(f"  {'PASS' if met else 'FAIL'}  {claim}")
    print(
        f"\nheadline: batches of {BATCH} move {batch_gain:.1f}x the items/s of single calls, "
        f"BlockingQueue is {ratio:.2f}x queue.Queue at 4P/4C maxsize 64, and a bounded "
        f"executor held +{job.growth / MiB:.1f} MiB where ThreadPoolExecutor took "
        f"+{unbounded.growth / MiB:.0f} MiB"
    )
    met = sum(met for met, _ in targets)
    print(f"targets: {met} of {len(targets)} met")
    return 0 if met == len(targets) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by Ctrl+C"
