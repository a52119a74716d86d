"""Run the same tasks in processes: by hand with `multiprocessing.Process`, then with a pool.

Processes share no memory, so tasks travel to the children and answers travel
back through queues (pickled on the way). Each child is a whole interpreter with
its own GIL, so processes compute in parallel on separate cores, at the price of
starting them and copying data in and out. README.md, "Processes", walks through
this file.

    python Threading/MultiProcessing.py --kind cpu --tasks 16 --workers 2

Everything a child runs is a top-level function and every script keeps its work
under `if __name__ == "__main__":`, so this also works where children are
started fresh ("spawn": macOS, Windows) instead of copied ("fork": Linux).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.process import BaseProcess

import compare_runs
import parent_watch
from workloads import RunFailed, Task, do_task

POLL_INTERVAL = 0.5  # seconds between checks that no child has died
STOP_TIMEOUT = 10.0  # seconds a child may take to exit once the work is done


class WorkerDied(RunFailed):
    """A child process exited before sending back all the answers it owed."""


class TaskFailed(RunFailed):
    """A task raised an exception inside a child process."""


def _process_worker(
    todo: multiprocessing.Queue, done: multiprocessing.Queue, parent_pid: int
) -> None:
    """A child's main loop: take (position, task) until the `None` sentinel, send answers back."""
    parent_watch.exit_with_parent(parent_pid)  # a parent killed with -9 leaves no orphan
    while (item := todo.get()) is not None:
        position, task = item
        try:
            done.put((position, do_task(task), None))
        except Exception as exc:  # send the failure home: the parent decides what to do
            done.put((position, None, f"{type(exc).__name__}: {exc}"))


def run_with_processes(tasks: list[Task], workers: int) -> list[int]:
    """Start `workers` processes fed by a queue; return the answers in task order.

    The parent reads every answer *before* joining the children: a child that has
    put data on a queue cannot exit until it is read, so joining first can hang.
    A child that dies (killed, crashed) raises WorkerDied instead of a hang.
    """
    todo: multiprocessing.Queue = multiprocessing.Queue()
    done: multiprocessing.Queue = multiprocessing.Queue()
    children = [
        multiprocessing.Process(
            target=_process_worker, args=(todo, done, os.getpid()), name=f"worker-{i}"
        )
        for i in range(workers)
    ]
    # Start the children before the first put: put() starts a feeder thread, and
    # copying ("fork") a process that has threads is unsafe.
    for child in children:
        child.start()
    try:
        for position, task in enumerate(tasks):
            todo.put((position, task))
        for _ in children:
            todo.put(None)  # one sentinel per child: each stops after taking one

        results: list[int | None] = [None] * len(tasks)
        for _ in tasks:
            position, answer, error = _next_answer(done, children)
            if error is not None:
                raise TaskFailed(f"task {tasks[position]} failed in a child: {error}")
            results[position] = answer
        for child in children:
            child.join(timeout=STOP_TIMEOUT)
        return results  # type: ignore[return-value]  # every slot was filled above
    finally:
        for child in children:
            if child.is_alive():  # only after a failure: do not leave orphans behind
                child.terminate()
                child.join()
        todo.cancel_join_thread()  # unread tasks must not keep this process from exiting


def _next_answer(
    done: multiprocessing.Queue, children: list[BaseProcess]
) -> tuple[int, int | None, str | None]:
    """Wait for the next answer, checking before each that no child has died.

    Checked before every answer, not only when answers stop coming: while the
    other children keep answering, a dead one would otherwise be noticed only
    once all the work it did not take was done.
    """
    while True:
        _raise_if_one_died(children)
        try:
            return done.get(timeout=POLL_INTERVAL)
        except queue.Empty:
            _raise_if_one_died(children)
            if all(c.exitcode is not None for c in children):
                try:  # a child flushes its answers before it exits: they may be arriving now
                    return done.get(timeout=POLL_INTERVAL)
                except queue.Empty:
                    raise WorkerDied("every child exited, yet answers are missing") from None


def _raise_if_one_died(children: list[BaseProcess]) -> None:
    """WorkerDied if a child exited with an error (killed, crashed); cheap enough to call often."""
    # A child's sentinel becomes readable when it exits: one poll() for them all.
    if multiprocessing.connection.wait([c.sentinel for c in children], timeout=0):
        dead = [c for c in children if c.exitcode not in (None, 0)]
        if dead:
            who = ", ".join(f"{c.name} (exit code {c.exitcode})" for c in dead)
            raise WorkerDied(f"children died before answering every task: {who}")


def run_with_process_pool(tasks: list[Task], workers: int) -> list[int]:
    """The same with `concurrent.futures`: the pool owns the processes and the queues."""
    with ProcessPoolExecutor(
        max_workers=workers,
        initializer=parent_watch.exit_with_parent,  # see parent_watch.py
        initargs=(os.getpid(),),
    ) as pool:
        return list(pool.map(do_task, tasks))  # keeps task order, re-raises errors here


def main(argv: list[str] | None = None) -> int:
    parser = compare_runs.argument_parser(
        "Run CPU-bound or I/O-bound tasks sequentially and in processes; compare wall times.",
        default_kind="cpu",
        workers_are="processes",
        max_workers=compare_runs.MAX_PROCESSES,
    )
    return compare_runs.compare(
        compare_runs.parse_checked(parser, argv),
        {
            "multiprocessing.Process + Queue": run_with_processes,
            "ProcessPoolExecutor": run_with_process_pool,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
