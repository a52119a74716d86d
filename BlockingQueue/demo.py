"""BlockingQueue demo: a fast producer, slow consumers, and what a queue limit changes.

    python BlockingQueue/demo.py

1. The same pipeline twice, for a few seconds each: a producer that makes
   items four times faster than the consumers can process them, through a
   bounded queue (maxsize 50) and through an unbounded one (maxsize 0).
2. A table of what happened: the bounded queue stayed at its limit while the
   producer blocked (backpressure); the unbounded one grew, and memory with it.
3. Shutdown, both ways: shutdown() lets the consumers finish what is queued,
   shutdown(immediate=True) discards it; either way no thread is left blocked.
4. The same trap in the standard library: ThreadPoolExecutor.submit() never
   blocks, so a job submitted faster than it runs waits in memory, whole; a
   BoundedExecutor (bounded_executor.py) on BlockingQueue holds it flat.
Ends with a `Lesson:` line, or with `Lesson not shown:` and exit code 1 when the
run did not show it. The plots go to out/ (git-ignored); only `--save-images`
(`make images`) rewrites images/queue_depth.png and images/executor_memory.png,
the README's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bounded_executor
import producer_consumer

from BlockingQueue import BlockingQueue

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"  # the tracked pictures the README shows: only --save-images
OUT = HERE / "out"  # git-ignored: every other run's plots
SECONDS = 3.0  # each run; the shutdown ends it
MAXSIZE = 50
PRODUCERS, PRODUCE_RATE = 1, 2_000.0  # one fast producer: 2,000 items/s
CONSUMERS, CONSUME_RATE = 2, 250.0  # two slow consumers: 500 items/s together
PAYLOAD = 8_192  # bytes per item, so a growing queue shows in memory
MiB = producer_consumer.MiB
PLOTS = ("queue_depth.png", "executor_memory.png")


JOB_TASKS = 4_000  # chunks submitted to each executor
EXECUTOR_NAMES = {
    "unbounded": "ThreadPoolExecutor",
    "bounded": f"BoundedExecutor(max_queued={bounded_executor.DEFAULT_MAX_QUEUED})",
}


def heading(text: str) -> None:
    print(f"\n{text}", flush=True)


def run(maxsize: int, immediate: bool) -> producer_consumer.Stats:
    return producer_consumer.run_pipeline(
        BlockingQueue(maxsize),
        producers=PRODUCERS,
        consumers=CONSUMERS,
        items=None,  # produce until stopped
        produce_rate=PRODUCE_RATE,
        consume_rate=CONSUME_RATE,
        payload=PAYLOAD,
        stop_after=SECONDS,
        immediate=immediate,
        progress=False,
    )


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        first, *rest = row
        print(
            "  "
            + first.ljust(widths[0])
            + "  "
            + "  ".join(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def pyplot():
    """matplotlib.pyplot, imported when the first plot is drawn, not at the top of the
    file: it takes seconds, and --help or a bad argument should answer at once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(bounded: producer_consumer.Stats, unbounded: producer_consumer.Stats, path: Path) -> None:
    plt = pyplot()
    fig, (depth_ax, memory_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for stats, name, colour in (
        (unbounded, "unbounded (maxsize 0)", "tab:red"),
        (bounded, f"bounded (maxsize {MAXSIZE})", "tab:blue"),
    ):
        label = f"{name}: {stats.produced / stats.seconds:,.0f} items/s made"
        seconds = [s.seconds for s in stats.samples]
        depth_ax.plot(seconds, [s.depth for s in stats.samples], label=label, color=colour)
        memory_ax.plot(seconds, [s.memory / MiB for s in stats.samples], label=label, color=colour)
    depth_ax.axhline(MAXSIZE, color="tab:blue", linestyle=":", linewidth=1)
    depth_ax.set_ylabel("items in the queue")
    depth_ax.set_title(
        f"A producer that could make {PRODUCE_RATE:,.0f} items/s; "
        f"{CONSUMERS} consumers take {CONSUME_RATE:,.0f}/s each"
    )
    depth_ax.legend(loc="upper left")
    memory_ax.set_ylabel("memory held (MiB)")
    memory_ax.set_xlabel("seconds")
    memory_ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_memory(jobs: dict[str, bounded_executor.JobReport], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for executor, colour in (("unbounded", "tab:red"), ("bounded", "tab:blue")):
        job = jobs[executor]
        seconds = [t for t, _ in job.samples]
        added = [(rss - job.baseline_rss) / MiB for _, rss in job.samples]
        ax.plot(seconds, added, color=colour, label=f"{EXECUTOR_NAMES[executor]}")
        ax.axvline(job.submitting, color=colour, linestyle=":", linewidth=1)
    ax.set_title(
        f"{JOB_TASKS:,} chunks of {jobs['bounded'].payload // 1024} KiB, submitted as fast as "
        f"they are made\n(dotted: when the last submit() returned)"
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("memory added to the process (MiB of RSS)")
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_folder(text: str) -> Path:
    """--out: a folder named on purpose. An empty name (an unset "$DIR", say) would
    mean the current folder, and from the repository's root dirty the checkout."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder name, got an empty one")
    return Path(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="A fast producer and slow consumers through a bounded and an unbounded "
        "BlockingQueue: depth, memory, backpressure, both kinds of shutdown, then "
        "ThreadPoolExecutor against a bounded executor. About 15 s."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--save-images",
        action="store_true",
        help="write the plots to images/, the pictures the README shows (make images)",
    )
    where.add_argument(
        "--out",
        type=plot_folder,
        default=OUT,
        help="folder for the plots (default: BlockingQueue/out/, git-ignored)",
    )
    args = parser.parse_args()
    folder = IMAGES if args.save_images else args.out
    depth_plot, memory_plot = (folder / name for name in PLOTS)
    try:  # find out now, not after the runs, whether the plots can be written there
        folder.mkdir(parents=True, exist_ok=True)
        depth_plot.touch()
        memory_plot.touch()
    except OSError as error:
        parser.error(f"cannot write the plots to {folder}: {error.strerror}")
    failures: list[str] = []

    heading(
        f"1. {SECONDS:.0f} s of a producer that can make {PRODUCE_RATE:,.0f} items/s and "
        f"{CONSUMERS} consumers processing {CONSUME_RATE * CONSUMERS:,.0f}/s in all"
    )
    print(f"  bounded queue, maxsize {MAXSIZE} ...", flush=True)
    bounded = run(MAXSIZE, immediate=False)
    print("  unbounded queue, maxsize 0 ...", flush=True)
    unbounded = run(0, immediate=True)

    heading("2. What the queue limit changed")
    print_table(
        ["", f"maxsize {MAXSIZE}", "unbounded"],
        [
            ["items made", f"{bounded.produced:,}", f"{unbounded.produced:,}"],
            ["items processed", f"{bounded.consumed:,}", f"{unbounded.consumed:,}"],
            ["deepest queue seen", f"{bounded.max_depth:,}", f"{unbounded.max_depth:,}"],
            [
                "peak memory (MiB)",
                f"{bounded.peak_memory / MiB:.1f}",
                f"{unbounded.peak_memory / MiB:.1f}",
            ],
            [
                "producer blocked on a full queue",
                f"{bounded.producer_blocks:,} times",
                f"{unbounded.producer_blocks:,} times",
            ],
            [
                "time the producer spent blocked",
                f"{bounded.producer_blocked:.1f} s",
                f"{unbounded.producer_blocked:.1f} s",
            ],
        ],
    )
    print(
        "  bounded: the producer is held to the consumers' pace (backpressure);\n"
        "  unbounded: it runs ahead and the difference piles up in memory"
    )
    if bounded.max_depth > MAXSIZE:
        failures.append(f"the bounded queue held {bounded.max_depth} items, over {MAXSIZE}")
    if not bounded.producer_blocks:
        failures.append("the producer never blocked on the bounded queue")
    if unbounded.max_depth <= 4 * MAXSIZE or unbounded.peak_memory <= 2 * bounded.peak_memory:
        failures.append("the unbounded queue did not grow")

    heading("3. Shutdown at the end of each run: nobody stays blocked")
    print_table(
        ["", "shutdown()", "shutdown(immediate=True)"],
        [
            ["run", f"maxsize {MAXSIZE}", "unbounded"],
            [
                "items queued at shutdown",
                f"{bounded.queued_at_shutdown:,}",
                f"{unbounded.queued_at_shutdown:,}",
            ],
            [
                "items finished after shutdown",
                f"{bounded.finished_after_shutdown:,}",
                f"{unbounded.finished_after_shutdown:,}",
            ],
            ["discarded", f"{bounded.discarded:,}", f"{unbounded.discarded:,}"],
            ["threads still running", f"{bounded.threads_left}", f"{unbounded.threads_left}"],
            ["join() returned", yes(bounded.joined), yes(unbounded.joined)],
            [
                "no item lost, twice or out of order",
                yes(bounded.exactly_once),
                yes(unbounded.exactly_once),
            ],
        ],
    )
    for name, stats in (("bounded", bounded), ("unbounded", unbounded)):
        if stats.threads_left or not stats.joined:
            failures.append(f"{name}: a thread stayed blocked after shutdown")
        if not stats.exactly_once:
            failures.append(f"{name}: items were lost, duplicated or reordered")

    heading(
        f"4. The same trap in concurrent.futures: {JOB_TASKS:,} chunks of "
        f"{bounded_executor.DEFAULT_PAYLOAD // 1024} KiB, made faster than "
        f"{bounded_executor.DEFAULT_WORKERS} workers can send them "
        f"({bounded_executor.ROUND_TRIP * 1000:.0f} ms each)"
    )
    jobs = {}
    for executor in ("unbounded", "bounded"):
        print(f"  {EXECUTOR_NAMES[executor]}, in a process of its own ...", flush=True)
        jobs[executor] = bounded_executor.run_job_in_child(executor, tasks=JOB_TASKS)
    pool, limited = jobs["unbounded"], jobs["bounded"]
    print_table(
        ["", EXECUTOR_NAMES["unbounded"], EXECUTOR_NAMES["bounded"]],
        [
            ["submitting took", f"{pool.submitting:.2f} s", f"{limited.submitting:.2f} s"],
            ["the whole job took", f"{pool.seconds:.2f} s", f"{limited.seconds:.2f} s"],
            ["peak RSS", f"{pool.peak_rss / MiB:.1f} MiB", f"{limited.peak_rss / MiB:.1f} MiB"],
            ["added by the job", f"{pool.growth / MiB:.1f} MiB", f"{limited.growth / MiB:.1f} MiB"],
        ],
    )
    print(
        "  ThreadPoolExecutor's submit() never blocks (its work queue has no limit), so the\n"
        f"  chunks waited in memory; BoundedExecutor's submit() waited whenever "
        f"{limited.max_queued} were queued"
    )
    if limited.growth > 2 * limited.limit_allows:
        failures.append(
            f"the bounded executor grew {limited.growth / MiB:.1f} MiB, over twice the "
            f"{limited.limit_allows / MiB:.1f} MiB its limit allows"
        )
    if pool.growth < 4 * max(limited.growth, limited.limit_allows):
        failures.append("ThreadPoolExecutor's memory did not pile up")

    plot(bounded, unbounded, depth_plot)
    plot_memory(jobs, memory_plot)
    print()
    for path in (depth_plot, memory_plot):
        shown = path.resolve()
        if shown.is_relative_to(Path.cwd()):
            shown = shown.relative_to(Path.cwd())
        print(f"  plot: {shown}")

    seen = (
        f"with maxsize {MAXSIZE} the queue never held more than "
        f"{bounded.max_depth} items and {bounded.peak_memory / MiB:.1f} MiB while the producer "
        f"blocked {bounded.producer_blocks:,} times; unbounded it grew to "
        f"{unbounded.max_depth:,} items and {unbounded.peak_memory / MiB:.1f} MiB "
        f"in {SECONDS:.0f} s; ThreadPoolExecutor took +{pool.growth / MiB:.0f} MiB for "
        f"{JOB_TASKS:,} queued chunks where BoundedExecutor took +{limited.growth / MiB:.1f} MiB"
    )
    if failures:
        print(f"\nLesson not shown: {'; '.join(failures)}. Seen: {seen}")
        return 1
    print(f"\nLesson: {seen}")
    return 0


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the pipeline's threads are daemons: they end with the program
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by Ctrl+C"
