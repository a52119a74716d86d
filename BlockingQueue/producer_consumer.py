"""Producers -> a BlockingQueue -> consumers, with the backpressure measured.

Each producer makes items (a few KiB each) at its own pace and put()s them on
the queue; each consumer get()s them and spends a while on each. When the
consumers are slower, a bounded queue fills up and put() blocks: the producers
are held to the consumers' pace (backpressure). The run counts how often and
how long producers blocked, samples the queue's depth and the memory the
program holds, checks that every item arrived exactly once and in order, and
keeps a live progress line. If any thread dies, the run notices, stops the
others and reports the cause instead of hanging. README.md ("Backpressure")
explains the figures.

    python BlockingQueue/producer_consumer.py --producers 2 --consumers 2 --maxsize 100
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

from BlockingQueue import BlockingQueue, Full, ShutDown

# Defaults for the command line: consumers slower than producers, so the queue fills.
DEFAULT_PRODUCERS = 2
DEFAULT_CONSUMERS = 2
DEFAULT_MAXSIZE = 100
DEFAULT_ITEMS = 4_000
DEFAULT_PRODUCE_RATE = 1_000.0  # items per second, per producer
DEFAULT_CONSUME_RATE = 500.0  # items per second, per consumer
DEFAULT_PAYLOAD = 4_096  # bytes per item: enough that a growing queue shows in memory

SAMPLE_EVERY = 0.02  # seconds between two looks at the queue's depth and memory
JOIN_TIMEOUT = 10.0  # seconds to wait for a thread that should already be finishing
PROGRESS_LINES = 4  # lines printed when the output is not a terminal (every 25%)

# What the command line accepts. Anything outside is a typo, not an experiment,
# and is refused with a one-line error before a thread starts.
MiB = 1024 * 1024
MAX_THREADS = 256  # per side
MAX_MAXSIZE = 1_000_000
MAX_ITEMS = 10_000_000
MIN_RATE, MAX_RATE = 0.1, 1_000_000.0  # items/s per thread: one per 10 s .. one per µs
MAX_PAYLOAD = 16 * MiB  # bytes per item
MAX_HELD = 1024 * MiB  # bytes the queue and the threads may hold at once
ITEM_OVERHEAD = 120  # bytes of an item besides its payload: the tuple, two ints, a bytes header


@dataclass
class Sample:
    """One look at the pipeline while it runs."""

    seconds: float  # since the start
    depth: int  # items in the queue (qsize())
    memory: int  # bytes the program holds (tracemalloc), queued items included


@dataclass
class Stats:
    """What one run did. The queue keeps no statistics; the threads measure themselves."""

    producers: int
    consumers: int
    maxsize: int
    seconds: float = 0.0
    # Per-thread counters, one slot per producer or consumer (made in __post_init__):
    # each thread writes only its own slot, so they need no lock; the progress line
    # reads them while they change, and a number a few items stale is fine there.
    # The totals below are read after every join().
    produced_by: list[int] = field(init=False)  # put() calls that succeeded
    consumed_by: list[int] = field(init=False)  # items taken and finished
    blocks_by: list[int] = field(init=False)  # put() calls that found it full
    blocked_by: list[float] = field(init=False)  # seconds blocked in put()
    longest_by: list[float] = field(init=False)  # longest single blocked put()
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "consumer-0 died: ...", one per dead thread
    # Checked at the end, from what the consumers received:
    duplicates: int = 0  # items received more than once
    queued_at_shutdown: int = 0  # qsize() just before shutdown() (a producer may add one more)
    finished_after_shutdown: int = 0  # items consumers finished after shutdown(): the drain
    lost: int = 0  # items put but never received (after a plain shutdown(): must be 0)
    discarded: int = 0  # items put but never received, after shutdown(immediate=True)
    out_of_order: int = 0  # items a consumer saw before an earlier one of the same producer
    threads_left: int = 0  # threads still running after the run (should be 0)
    joined: bool = False  # queue.join() returned: every item was marked done

    def __post_init__(self) -> None:
        self.produced_by = [0] * self.producers
        self.consumed_by = [0] * self.consumers
        self.blocks_by = [0] * self.producers
        self.blocked_by = [0.0] * self.producers
        self.longest_by = [0.0] * self.producers

    @property
    def produced(self) -> int:
        return sum(self.produced_by)

    @property
    def consumed(self) -> int:
        return sum(self.consumed_by)

    @property
    def producer_blocks(self) -> int:
        return sum(self.blocks_by)

    @property
    def producer_blocked(self) -> float:
        return sum(self.blocked_by)

    @property
    def longest_block(self) -> float:
        """The longest single blocked put() of any producer, in seconds."""
        return max(self.longest_by, default=0.0)

    @property
    def max_depth(self) -> int:
        return max((s.depth for s in self.samples), default=0)

    @property
    def peak_memory(self) -> int:
        return max((s.memory for s in self.samples), default=0)

    @property
    def exactly_once(self) -> bool:
        return self.duplicates == 0 and self.lost == 0 and self.out_of_order == 0


def pause(rate: float, stopping: threading.Event) -> Callable[[], None]:
    """A function that sleeps 1/rate seconds: the time it takes to make or to process one item.

    `rate` 0 means no pause at all (as fast as the queue allows). The sleep is a
    wait on `stopping`, so a run that is being stopped does not sit out a long pause.
    """
    interval = 1.0 / rate if rate > 0 else 0.0
    return (lambda: stopping.wait(interval)) if interval else (lambda: None)


class Progress:
    """One line that rewrites itself on a terminal; a line per quarter of the work otherwise."""

    def __init__(self, total: int | None, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.next_quarter = 1
        self.width = 0

    def update(self, stats: Stats, sample: Sample) -> None:
        if not self.enabled:
            return
        limit = f"{stats.maxsize:,}" if stats.maxsize > 0 else "unbounded"
        done = f"{stats.consumed:,}" + (f"/{self.total:,}" if self.total else "")
        line = (
            f"  {sample.seconds:5.1f} s  {done} items done  depth {sample.depth:,} "
            f"(limit {limit})  producers blocked {stats.producer_blocks:,}x  "
            f"memory {sample.memory / MiB:.1f} MiB"
        )
        if self.tty:
            sys.stdout.write("\r" + line.ljust(self.width))
            sys.stdout.flush()
            self.width = len(line)
        elif self.total and stats.consumed * PROGRESS_LINES >= self.next_quarter * self.total:
            print(line, flush=True)
            self.next_quarter = stats.consumed * PROGRESS_LINES // self.total + 1

    def finish(self) -> None:
        if self.enabled and self.tty and self.width:
            sys.stdout.write("\r" + " " * self.width + "\r")
            sys.stdout.flush()


def run_pipeline(
    queue: BlockingQueue,
    *,
    producers: int = DEFAULT_PRODUCERS,
    consumers: int = DEFAULT_CONSUMERS,
    items: int | None = DEFAULT_ITEMS,
    produce_rate: float = DEFAULT_PRODUCE_RATE,
    consume_rate: float = DEFAULT_CONSUME_RATE,
    payload: int = DEFAULT_PAYLOAD,
    stop_after: float | None = None,
    immediate: bool = False,
    progress: bool = True,
    crash_consumer_after: int | None = None,
) -> Stats:
    """Run producers and consumers through `queue` and measure what happened.

    `items` are shared out among the producers (`None`: they produce until
    stopped). The run ends when the producers are done and the queue is
    drained, or after `stop_after` seconds. Either way it then calls
    `queue.shutdown(immediate)`: blocked producers get `ShutDown`, consumers
    finish what is queued (or, if `immediate`, it is discarded) and get
    `ShutDown` too. Every thread is joined (each bounded by JOIN_TIMEOUT).

    A thread that dies (any exception) ends the run early: its cause goes to
    `stats.failures`, the queue is shut down immediately and every pause cut
    short, so the others stop too. Without that, one dead consumer would leave
    the producers blocked on a full queue forever. `crash_consumer_after=n`
    makes consumer 0 raise after n items, to watch it happen.
    """
    stats = Stats(producers, consumers, queue.maxsize)
    received: list[list[tuple[int, int]]] = [[] for _ in range(consumers)]
    shares = share_out(items, producers)
    stopping = threading.Event()  # set when a thread died: the others stop too

    def produce(me: int) -> None:
        make_item = pause(produce_rate, stopping)
        share = shares[me]
        try:
            while share is None or stats.produced_by[me] < share:
                make_item()
                item = (me, stats.produced_by[me], bytes(payload))
                try:
                    queue.put_nowait(item)
                except Full:  # no room: block until a consumer makes some, and time it
                    started = time.monotonic()
                    queue.put(item)
                    took = time.monotonic() - started
                    stats.blocks_by[me] += 1
                    stats.blocked_by[me] += took
                    stats.longest_by[me] = max(stats.longest_by[me], took)
                stats.produced_by[me] += 1
        except ShutDown:
            pass  # stopped; the put() that raised added nothing

    def consume(me: int) -> None:
        process_item = pause(consume_rate, stopping)
        mine = received[me]
        try:
            while True:
                producer, sequence, _ = queue.get()
                if me == 0 and stats.consumed_by[0] == crash_consumer_after:
                    raise RuntimeError(f"crashed on purpose after {crash_consumer_after} items")
                mine.append((producer, sequence))
                process_item()
                queue.task_done()
                stats.consumed_by[me] += 1
        except ShutDown:
            pass  # shut down and drained (or shut down immediately)

    def run(body: Callable[[int], None], me: int) -> None:
        """A thread's whole life: if it dies, say why and make the others stop."""
        try:
            body(me)
        except BaseException as error:  # noqa: BLE001 - anything that ends a thread early
            name = threading.current_thread().name
            stats.failures.append(f"{name} died: {type(error).__name__}: {error}")
            stopping.set()

    threads = [
        threading.Thread(target=run, args=(produce, p), name=f"producer-{p}", daemon=True)
        for p in range(producers)
    ]
    threads += [
        threading.Thread(target=run, args=(consume, c), name=f"consumer-{c}", daemon=True)
        for c in range(consumers)
    ]
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    display = Progress(items, progress)
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        while True:
            sample = Sample(
                time.monotonic() - started, queue.qsize(), tracemalloc.get_traced_memory()[0]
            )
            stats.samples.append(sample)
            display.update(stats, sample)
            if stopping.is_set():  # a thread died: stop everyone
                break
            if stop_after is not None and sample.seconds >= stop_after:
                break
            if not any(t.is_alive() for t in threads[:producers]) and sample.depth == 0:
                break
            stopping.wait(SAMPLE_EVERY)
        immediate = immediate or stopping.is_set()
        stats.queued_at_shutdown = queue.qsize()
        finished_before = stats.consumed
        queue.shutdown(immediate=immediate)
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        stats.finished_after_shutdown = stats.consumed - finished_before
        stats.seconds = time.monotonic() - started
        stats.threads_left = sum(t.is_alive() for t in threads)
    finally:
        display.finish()
        if not tracing:
            tracemalloc.stop()
    # A dead consumer never marks its last item done, so join() could not return.
    stats.joined = not stats.failures and join_within(queue, JOIN_TIMEOUT)
    check_delivery(stats, received, immediate)
    return stats


def share_out(items: int | None, producers: int) -> list[int | None]:
    """Split `items` among producers as evenly as possible (None: no limit)."""
    if items is None:
        return [None] * producers
    return [items // producers + (p < items % producers) for p in range(producers)]


def check_delivery(stats: Stats, received: list[list[tuple[int, int]]], immediate: bool) -> None:
    """Count duplicates, lost items and order breaks in what the consumers received.

    Producer p put items (p, 0), (p, 1), ... (p, produced_by[p] - 1). After a
    plain shutdown() each must arrive exactly once. shutdown(immediate=True)
    throws away what is queued, so there the items that never arrived are
    counted as discarded, and only duplicates and order are checked. One
    producer's items enter the queue in order and leave it in order, so each
    consumer must see any one producer's items in increasing order.
    """
    seen: set[tuple[int, int]] = set()
    for mine in received:
        last: dict[int, int] = {}
        for producer, sequence in mine:
            if (producer, sequence) in seen:
                stats.duplicates += 1
            seen.add((producer, sequence))
            if sequence <= last.get(producer, -1):
                stats.out_of_order += 1
            last[producer] = sequence
    put = {(p, s) for p, count in enumerate(stats.produced_by) for s in range(count)}
    missing = len(put - seen)
    stats.discarded, stats.lost = (missing, 0) if immediate else (0, missing)
    stats.duplicates += len(seen - put)  # received but never put: as wrong as a duplicate


def join_within(queue: BlockingQueue, timeout: float) -> bool:
    """queue.join() has no timeout (as in queue.Queue), so wait for it in a helper thread."""
    joiner = threading.Thread(target=queue.join, daemon=True)
    joiner.start()
    joiner.join(timeout)
    return not joiner.is_alive()


def print_report(stats: Stats) -> None:
    limit = f"{stats.maxsize:,}" if stats.maxsize > 0 else "none (unbounded)"
    rows = [
        ("producers / consumers", f"{stats.producers} / {stats.consumers}"),
        ("queue limit (maxsize)", limit),
        ("items put / done", f"{stats.produced:,} / {stats.consumed:,}"),
        ("seconds", f"{stats.seconds:.2f}"),
        ("items per second", f"{stats.consumed / stats.seconds:,.0f}" if stats.seconds else "-"),
        ("deepest queue seen", f"{stats.max_depth:,} items"),
        ("peak memory", f"{stats.peak_memory / MiB:.1f} MiB"),
        ("producers blocked on a full queue", f"{stats.producer_blocks:,} times"),
        ("time producers spent blocked", f"{stats.producer_blocked:.2f} s (all producers)"),
        ("longest single block", f"{stats.longest_block * 1000:.0f} ms"),
        ("delivered exactly once, in order", "yes" if stats.exactly_once else "NO"),
        *([("discarded when the run stopped", f"{stats.discarded:,}")] if stats.discarded else []),
        ("threads left running", f"{stats.threads_left}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of `kind` between `low` and `high`, or a one-line error."""

    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:  # also refuses nan, which compares false to everything
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def rate(text: str) -> float:
    """Items per second per thread: 0 (no pause at all) or MIN_RATE..MAX_RATE."""
    value = float(text)
    if value != value:  # nan: no number compares equal to it, not even itself
        raise argparse.ArgumentTypeError(f"must be a number, got {text}")
    if value != 0 and not MIN_RATE <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"must be 0 or between {MIN_RATE:g} and {MAX_RATE:,.0f} items/s, got {text}"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Producers -> a bounded BlockingQueue -> consumers, with the "
        "backpressure measured: how often and how long producers blocked on a full queue."
    )
    threads = bounded(int, 1, MAX_THREADS)
    parser.add_argument("--producers", type=threads, default=DEFAULT_PRODUCERS)
    parser.add_argument("--consumers", type=threads, default=DEFAULT_CONSUMERS)
    parser.add_argument(
        "--maxsize",
        type=bounded(int, 0, MAX_MAXSIZE),
        default=DEFAULT_MAXSIZE,
        help="queue limit; 0: unbounded",
    )
    parser.add_argument(
        "--items", type=bounded(int, 0, MAX_ITEMS), default=DEFAULT_ITEMS, help="items in all"
    )
    parser.add_argument(
        "--produce-rate",
        type=rate,
        default=DEFAULT_PRODUCE_RATE,
        help="items per second per producer (0: as fast as possible)",
    )
    parser.add_argument(
        "--consume-rate",
        type=rate,
        default=DEFAULT_CONSUME_RATE,
        help="items per second per consumer (0: as fast as possible)",
    )
    parser.add_argument(
        "--payload",
        type=bounded(int, 0, MAX_PAYLOAD),
        default=DEFAULT_PAYLOAD,
        help="bytes per item",
    )
    parser.add_argument(
        "--crash-consumer-after",
        type=bounded(int, 0, MAX_ITEMS),
        metavar="N",
        help="fault injection: consumer 0 raises after N items, to watch the run stop",
    )
    args = parser.parse_args(argv)
    # The most items alive at once: a full queue, plus one in each thread's hands.
    capacity = args.maxsize or args.items
    held = (capacity + args.producers + args.consumers) * (args.payload + ITEM_OVERHEAD)
    if held > MAX_HELD:
        parser.error(
            f"{args.payload:,} + {ITEM_OVERHEAD} bytes per item x (queue of {capacity:,} + "
            f"{args.producers + args.consumers} threads) would hold up to {held / MiB:,.0f} MiB; "
            f"the limit is {MAX_HELD / MiB:,.0f} MiB"
        )

    print(
        f"{args.producers} producers at {args.produce_rate:g}/s each -> queue "
        f"(maxsize {args.maxsize}) -> {args.consumers} consumers at {args.consume_rate:g}/s each"
    )
    stats = run_pipeline(
        BlockingQueue(args.maxsize),
        producers=args.producers,
        consumers=args.consumers,
        items=args.items,
        produce_rate=args.produce_rate,
        consume_rate=args.consume_rate,
        payload=args.payload,
        crash_consumer_after=args.crash_consumer_after,
    )
    print_report(stats)
    sys.stdout.flush()  # the report first, then the cause on stderr
    for cause in stats.failures:
        print(f"run stopped: {cause}", file=sys.stderr)
    delivered = stats.produced == stats.consumed == args.items
    ok = delivered and stats.exactly_once and not stats.threads_left and stats.joined
    return 0 if ok and not stats.failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the worker threads are daemons: they end with the program
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by Ctrl+C"
