"""Run the same tasks in threads: by hand with `threading.Thread`, then with a pool.

Threads share the process's memory, so work goes in through a queue and results
come back by writing into a shared list. In CPython the GIL lets one thread run
Python code at a time: threads overlap waiting, not computing. README.md, "Threads",
walks through this file.

    python Threading/MultiThreading.py --kind io --tasks 32 --workers 32
"""

from __future__ import annotations

import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import compare_runs
from workloads import Task, do_task


def run_with_threads(tasks: list[Task], workers: int) -> list[int]:
    """Start `workers` threads that take tasks from a queue; return answers in task order.

    Each thread writes only the result slots of the tasks it took, so the shared
    `results` list needs no lock. An exception in a worker is re-raised here,
    after every thread has been joined, instead of vanishing with the thread.
    """
    todo: queue.Queue[tuple[int, Task]] = queue.Queue()
    for position, task in enumerate(tasks):
        todo.put((position, task))
    results: list[int | None] = [None] * len(tasks)
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            try:
                position, task = todo.get_nowait()
            except queue.Empty:
                return  # the queue was filled before start: empty means done
            try:
                results[position] = do_task(task)
            except Exception as exc:  # report it to the caller, keep the other tasks going
                errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]  # every slot is filled when no task failed


def run_with_thread_pool(tasks: list[Task], workers: int) -> list[int]:
    """The same with `concurrent.futures`: the pool owns the threads and the queue."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pool") as pool:
        return list(pool.map(do_task, tasks))  # map keeps task order and re-raises errors


def main(argv: list[str] | None = None) -> int:
    parser = compare_runs.argument_parser(
        "Run CPU-bound or I/O-bound tasks sequentially and in threads; compare wall times.",
        default_kind="io",
        workers_are="threads",
        max_workers=compare_runs.MAX_THREADS,
    )
    return compare_runs.compare(
        compare_runs.parse_checked(parser, argv),
        {"threading.Thread + Queue": run_with_threads, "ThreadPoolExecutor": run_with_thread_pool},
    )


if __name__ == "__main__":
    sys.exit(main())
