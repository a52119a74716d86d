"""A thread pool whose submit() blocks while too much work is waiting: backpressure for executors.

`concurrent.futures.ThreadPoolExecutor` keeps the tasks it has not started in
an unbounded queue, so `submit()` never blocks: a loop that submits faster
than the workers finish piles every task, and every argument it carries, up
in memory. `BoundedExecutor` is the same pool on a `BlockingQueue(max_queued)`:
`submit()` blocks while `max_queued` tasks wait, so the submitting loop runs
at the workers' pace and memory stays flat. README.md, "The unbounded
executor trap", shows both; run this file to measure one of them:

    python BlockingQueue/bounded_executor.py --executor unbounded --tasks 4000
    python BlockingQueue/bounded_executor.py --executor bounded --tasks 4000
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import psutil
from producer_consumer import MiB, bounded

from BlockingQueue import BlockingQueue, Empty, Full, ShutDown


class BoundedExecutor(Executor):
    """`max_workers` threads running submitted calls; submit() blocks while `max_queued` wait.

    A drop-in for ThreadPoolExecutor where it matters (submit, map, shutdown,
    `with`), minus its initializer and thread-name options. As with
    ThreadPoolExecutor, the program does not end until every task submitted
    has run, shut down or not (an exit hook below). Two places where a
    blocking submit() would be wrong are handled: map() submits as results
    are taken rather than all at once, and a task that submits to its own
    full pool runs the call itself instead of waiting for room that only the
    workers, all possibly waiting the same way, could make.
    """

    def __init__(self, max_workers: int, max_queued: int) -> None:
        if max_workers < 1 or max_queued < 1:
            raise ValueError(
                f"max_workers and max_queued must be at least 1, got {max_workers}, {max_queued}"
            )
        self.max_queued = max_queued
        # (future, fn, args, kwargs) for each task not yet started, at most max_queued
        self.work: BlockingQueue[tuple] = BlockingQueue(max_queued)
        # Daemon threads, so a pool nobody shut down cannot hang the interpreter
        # while it joins ordinary threads; finish_every_pool() runs what is left.
        self.workers = [
            threading.Thread(target=self._work, name=f"BoundedExecutor-{n}", daemon=True)
            for n in range(max_workers)
        ]
        for worker in self.workers:
            worker.start()
        live_pools.add(self)  # once every worker runs: the exit hook joins them all

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule fn(*args, **kwargs) and return its Future; blocks while max_queued tasks wait.

        Called from one of this pool's own workers, it never blocks: if the
        queue is full, the worker runs the call at once and returns its
        finished Future (Java's CallerRunsPolicy). Raises RuntimeError after
        shutdown(), including to a submit() that was blocked when shutdown()
        was called (its task was not scheduled).
        """
        task = (Future(), fn, args, kwargs)
        try:
            if threading.current_thread() not in self.workers:
                self.work.put(task)
            else:
                try:
                    self.work.put_nowait(task)
                except Full:
                    self._run(task)
        except ShutDown:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return task[0]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """fn over the iterables, results in order, with at most a window of calls in flight.

        Executor.map submits every call before it returns: on this pool map()
        itself would block until all but the last max_queued calls had run,
        holding a Future for each, and an endless iterable would never yield.
        This map submits max_workers + max_queued calls now and one more each
        time a result is taken (what Python 3.14 calls `buffersize`); each of
        those submits waits for room as submit() does, which matters only
        when other callers keep the queue full.
        `timeout` counts from this call, as in Executor.map; `chunksize` is
        ignored, as ThreadPoolExecutor ignores it. Leaving the loop early, or
        an exception, cancels the calls not yet started.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)  # stops at the shortest, as Executor.map
        window = len(self.workers) + self.max_queued
        in_flight = deque(self.submit(fn, *args) for args in islice(calls, window))

        def results() -> Iterator[Any]:
            try:
                while in_flight:
                    left = None if deadline is None else deadline - time.monotonic()
                    result = in_flight[0].result(left)
                    in_flight.popleft()
                    in_flight.extend(self.submit(fn, *args) for args in islice(calls, 1))
                    yield result
            finally:
                for future in in_flight:
                    future.cancel()

        return results()

    def _work(self) -> None:
        while True:
            try:
                task = self.work.get()
            except ShutDown:
                return  # shut down and drained
            self._run(task)
            del task  # let a finished task's arguments go now

    @staticmethod
    def _run(task: tuple) -> None:
        future, fn, args, kwargs = task
        if future.set_running_or_notify_cancel():  # False: cancelled while it waited
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - the caller sees it in the Future
                future.set_exception(error)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; the workers finish what is queued, then stop.

        With `cancel_futures=True` the tasks still queued are cancelled instead
        of run. With `wait=True` (the default, and what `with` does) it returns
        once every worker has stopped. With `wait=False` the queued tasks still
        run before the program ends.
        """
        self.work.shutdown()  # from now on submit() raises; blocked submitters too
        if cancel_futures:
            while True:
                try:
                    future, *_ = self.work.get_nowait()
                except (Empty, ShutDown):
                    break
                future.cancel()
        if wait:
            for worker in self.workers:
                worker.join()


# concurrent.futures promises that the program ends only once every submitted
# task has run, even if shutdown() was never called or did not wait.
# ThreadPoolExecutor keeps it with non-daemon threads and a private hook in
# `threading`; here the workers are daemons and this public atexit hook, which
# runs after the interpreter has joined its ordinary threads and before it
# stops the daemons, lets every pool still alive drain its queue.
live_pools: weakref.WeakSet[BoundedExecutor] = weakref.WeakSet()


@atexit.register
def finish_every_pool() -> None:
    for pool in list(live_pools):
        pool.shutdown(wait=True)


# -- measuring one job: peak memory with and without the limit -----------------

DEFAULT_TASKS = 4_000
DEFAULT_PAYLOAD = 64 * 1024  # bytes each task carries: a chunk of a file, say
DEFAULT_WORKERS = 4
DEFAULT_MAX_QUEUED = 64
ROUND_TRIP = 0.002  # seconds each task waits, as for a network round trip
SAMPLE_EVERY = 0.01  # seconds between two readings of the process's RSS
MAX_TASKS = 100_000
MAX_PAYLOAD = 4 * MiB
MAX_HELD = 1024 * MiB  # payload bytes an unbounded executor could end up holding


@dataclass
class JobReport:
    """One job, measured in the process that ran it."""

    executor: str  # "unbounded" (ThreadPoolExecutor) or "bounded" (BoundedExecutor)
    tasks: int
    payload: int
    workers: int
    max_queued: int | None
    seconds: float = 0.0  # from the first submit to the last result
    submitting: float = 0.0  # until the last submit() returned
    baseline_rss: int = 0  # bytes, before the job
    peak_rss: int = 0  # bytes, the most the process ever held (see peak_rss())
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, RSS bytes)

    @property
    def growth(self) -> int:
        """Bytes the job added to the process's peak: what the pile-up cost."""
        return self.peak_rss - self.baseline_rss

    @property
    def limit_allows(self) -> int:
        """Payload bytes a BoundedExecutor may hold at once: a full queue, one
        task per worker, and the one the submitting loop is making."""
        return ((self.max_queued or self.tasks) + self.workers + 1) * self.payload


def send_chunk(chunk: bytes) -> bytes:
    """The work per task, as for uploading a chunk: checksum it, then wait for the far end."""
    checksum = hashlib.sha256(chunk).digest()
    time.sleep(ROUND_TRIP)
    return checksum


def run_job(
    executor: str,
    tasks: int = DEFAULT_TASKS,
    payload: int = DEFAULT_PAYLOAD,
    workers: int = DEFAULT_WORKERS,
    max_queued: int = DEFAULT_MAX_QUEUED,
) -> JobReport:
    """Submit `tasks` chunks of `payload` bytes as fast as they can be made; measure RSS.

    Making a chunk (a memset) takes microseconds and sending it milliseconds,
    so the submitting loop outruns the workers: whatever the executor lets it
    queue, it queues. The loop keeps no Futures (each holds a lock and a
    result): it counts the finished tasks, so the only thing that can pile up
    is what the executor holds.
    """
    report = JobReport(executor, tasks, payload, workers, max_queued)
    pool: Executor
    if executor == "bounded":
        pool = BoundedExecutor(workers, max_queued)
    else:
        pool = ThreadPoolExecutor(workers)
        report.max_queued = None
    process = psutil.Process()
    report.baseline_rss = process.memory_info().rss
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not done.wait(SAMPLE_EVERY):
            report.samples.append((time.monotonic() - started, process.memory_info().rss))

    finished = 0
    counting = threading.Lock()

    def count(future: Future) -> None:
        nonlocal finished
        future.result()  # raises if the task did
        with counting:
            finished += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with pool:  # leaving it waits for every task
        for n in range(tasks):
            pool.submit(send_chunk, bytes([n % 256]) * payload).add_done_callback(count)
        report.submitting = time.monotonic() - started
    report.seconds = time.monotonic() - started
    if finished != tasks:
        raise RuntimeError(f"{finished} of {tasks} tasks finished")
    done.set()
    sampler.join()
    report.peak_rss = peak_rss(report.samples)
    return report


def peak_rss(samples: list[tuple[float, int]]) -> int:
    """The most memory this process has held, in bytes.

    Linux's VmHWM, the kernel's own high-water mark for this process's memory,
    is exact. Not getrusage()'s ru_maxrss: Linux carries that across fork and
    exec, so in a child it starts at its parent's size (a demo parent of 44
    MiB made a flat 26 MiB job read +22 MiB). Elsewhere: the highest sample.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return max([rss for _, rss in samples] + [psutil.Process().memory_info().rss])


def run_job_in_child(executor: str, **options: int) -> JobReport:
    """run_job() in a fresh Python process, so its peak RSS is this job's alone."""
    command = [sys.executable, __file__, "--executor", executor, "--json"]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed: {done.stderr.strip()[-500:]}")
    fields = json.loads(done.stdout.splitlines()[-1])
    fields["samples"] = [tuple(s) for s in fields["samples"]]
    return JobReport(**fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Submit many tasks, each carrying a chunk of bytes, to ThreadPoolExecutor "
        "(unbounded) or BoundedExecutor, faster than the workers can send them; report the "
        "time and the peak memory."
    )
    parser.add_argument("--executor", choices=["unbounded", "bounded"], required=True)
    parser.add_argument("--tasks", type=bounded(int, 1, MAX_TASKS), default=DEFAULT_TASKS)
    parser.add_argument(
        "--payload",
        type=bounded(int, 0, MAX_PAYLOAD),
        default=DEFAULT_PAYLOAD,
        help="bytes per task",
    )
    parser.add_argument("--workers", type=bounded(int, 1, 64), default=DEFAULT_WORKERS)
    parser.add_argument(
        "--max-queued",
        type=bounded(int, 1, MAX_TASKS),
        default=DEFAULT_MAX_QUEUED,
        help="BoundedExecutor's limit (ignored for unbounded)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = parser.parse_args(argv)
    if args.tasks * args.payload > MAX_HELD:
        parser.error(
            f"--tasks x --payload is {args.tasks * args.payload / MiB:,.0f} MiB, which the "
            f"unbounded executor may hold at once; the limit is {MAX_HELD / MiB:,.0f} MiB"
        )

    if not args.json:  # say what runs before it runs: a big job takes a while
        name = "ThreadPoolExecutor" if args.executor == "unbounded" else "BoundedExecutor"
        limit = f"max_queued {args.max_queued}" if args.executor == "bounded" else "no limit"
        print(
            f"{name} ({args.workers} workers, {limit}): {args.tasks:,} tasks of {args.payload:,} B",
            flush=True,
        )
    report = run_job(args.executor, args.tasks, args.payload, args.workers, args.max_queued)
    if args.json:
        print(json.dumps(asdict(report)))
        return 0
    print(f"  submitting took      {report.submitting:.2f} s")
    print(f"  the whole job took   {report.seconds:.2f} s")
    print(f"  peak RSS             {report.peak_rss / MiB:,.1f} MiB")
    print(f"  growth over baseline {report.growth / MiB:,.1f} MiB")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # `with` has let the queued tasks finish; nothing half-done
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)  # the shell's code for "stopped by Ctrl+C"
