"""BlockingQueue benchmark: items per second through BlockingQueue and queue.Queue, same run.

    python BlockingQueue/bench.py                 # 9 set-ups, median of 5 runs each, ~1 min
    python BlockingQueue/bench.py --repeats 3     # quicker, noisier

For 1, 4 and 8 producers (and as many consumers) and maxsize 1, 64 and 0
(unbounded), P producers put N items in all and C consumers get() them until a
stop marker, as fast as they can. Each run is timed from the moment every
thread is ready until the last consumer is done; the two queues take turns, so
a busy moment on the machine hurts both. Prints items/s (median of the runs),
the ratio and the machine; then each target as a PASS or FAIL line (4P/4C,
maxsize 64: BlockingQueue at least 1.2x queue.Queue), a `headline:` line, and
`targets: N of M met`. Exits 1 when any target was missed.
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

from BlockingQueue import BlockingQueue

THREADS = (1, 4, 8)  # producers, and as many consumers
MAXSIZES = (1, 64, 0)
ITEMS = {1: 20_000, 64: 200_000, 0: 200_000}  # per run; maxsize 1 hands over one at a time
TARGET = (4, 64, 1.2)  # 4 producers / 4 consumers, maxsize 64: at least 1.2x
STOP = object()  # the marker that tells a consumer to finish
PEERS = {"queue.Queue": queue.Queue, "BlockingQueue": BlockingQueue}


def items_per_second(make_queue, threads: int, maxsize: int, items: int) -> float:
    """One run: `threads` producers put `items` in all, as many consumers take them."""
    q = make_queue(maxsize)
    per_producer = items // threads
    received = [0] * threads
    ready = threading.Barrier(2 * threads + 1)  # everyone, and the clock

    def produce() -> None:
        put = q.put
        ready.wait()
        for n in range(per_producer):
            put(n)

    def consume(me: int) -> None:
        get = q.get
        count = 0
        ready.wait()
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
    for _ in consumers:
        q.put(STOP)
    for thread in consumers:
        thread.join()
    seconds = time.perf_counter() - started
    if sum(received) != per_producer * threads:
        sys.exit(f"{make_queue.__name__} lost items: {sum(received)} of {per_producer * threads}")
    return per_producer * threads / seconds


def measure(threads: int, maxsize: int, items: int, repeats: int) -> dict[str, float]:
    """Median items/s of each peer; the peers alternate who goes first."""
    rates: dict[str, list[float]] = {name: [] for name in PEERS}
    for run in range(repeats):
        order = list(PEERS) if run % 2 == 0 else list(reversed(PEERS))
        for name in order:
            rates[name].append(items_per_second(PEERS[name], threads, maxsize, items))
    return {name: statistics.median(values) for name, values in rates.items()}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Items per second through BlockingQueue and queue.Queue, in the same run, "
        "for 1/4/8 producers and consumers at maxsize 1, 64 and 0."
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs per set-up")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the items per run (default 1: 200,000, or 20,000 at maxsize 1)",
    )
    args = parser.parse_args()
    if not 0.01 <= args.scale <= 100:
        parser.error(f"--scale must be between 0.01 and 100, got {args.scale}")

    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()} ({platform.python_implementation()}), "
        f"switch interval {sys.getswitchinterval() * 1000:.0f} ms"
    )
    rows = []
    for threads in THREADS:
        for maxsize in MAXSIZES:
            items = max(1_000, int(ITEMS[maxsize] * args.scale))
            print(
                f"  {threads}P/{threads}C maxsize {maxsize}: {items:,} items x {args.repeats} ...",
                flush=True,
            )
            rates = measure(threads, maxsize, items, args.repeats)
            rows.append((threads, maxsize, rates))

    print(f"\nitems/s, median of {args.repeats} runs (higher is better)")
    table = [["threads", "maxsize", "queue.Queue", "BlockingQueue", "ratio"]]
    for threads, maxsize, rates in rows:
        ratio = rates["BlockingQueue"] / rates["queue.Queue"]
        table.append(
            [
                f"{threads}P/{threads}C",
                f"{maxsize}",
                f"{rates['queue.Queue']:,.0f}",
                f"{rates['BlockingQueue']:,.0f}",
                f"{ratio:.2f}x",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    target_threads, target_maxsize, target_ratio = TARGET
    rates = next(r for t, m, r in rows if (t, m) == (target_threads, target_maxsize))
    ratio = rates["BlockingQueue"] / rates["queue.Queue"]
    setup = f"{target_threads}P/{target_threads}C maxsize {target_maxsize}"
    targets = [
        (
            ratio >= target_ratio,
            f"{setup}: BlockingQueue {ratio:.2f}x queue.Queue (target >= {target_ratio}x)",
        )
    ]
    print()
    for met, claim in targets:
        print(f"  {'PASS' if met else 'FAIL'}  {claim}")
    print(f"\nheadline: BlockingQueue moves {ratio:.2f}x the items/s of queue.Queue at {setup}")
    met = sum(met for met, _ in targets)
    print(f"targets: {met} of {len(targets)} met")
    return 0 if met == len(targets) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by Ctrl+C"
